"""Bank-account aggregate classes with a live snapshot policy, for the lifecycle benches.

They live in an importable module (not ``__main__``) so Ray workers load them by reference
(ADR-008: a subclass pickled by value can lose an ``aggregate_type`` equal to its base's).
Same events, same decider as ``es_actors.examples.bank.BankAccount``; only ``snapshot_every`` differs.
"""

from __future__ import annotations

from es_actors.examples.bank import BankAccount

ACTIVATE_SNAPSHOT_EVERY = 1_000
RECOVER_SNAPSHOT_EVERY = 100


class SnapBankAccount(BankAccount):
    """A separate aggregate type (its own id space) with a snapshot every 1,000 events:
    the with-snapshot side of ``activate_10k`` lives beside a plain ``BankAccount``."""

    aggregate_type = "SnapBankAccount"
    snapshot_every = ACTIVATE_SNAPSHOT_EVERY


class BankAccountLivePolicy(BankAccount):
    """The stored type ``BankAccount`` opened with a live snapshot policy (``recover_partition``)."""

    aggregate_type = "BankAccount"
    snapshot_every = RECOVER_SNAPSHOT_EVERY
