"""Test-only projections and a legacy bank writer for tests/test_projections.py.

A plain module on the path, so Ray workers (the projector actor) can import it. Projections
whose behaviour a test must steer across the process boundary (fail, block) are made by
:func:`flagged_projection`: a class defined in a function is pickled by value, so its
``flag`` (a file path in the test's tmp_path) travels with it to the projector; the test
creates or deletes that file to break or "fix" the handler.
"""

from __future__ import annotations

import os
import time
from typing import Any, ClassVar, Sequence


from es_actors import Aggregate, Command, Event
from es_actors.read.projection import PythonProjection, SqlProjection
from es_actors.codecs.views import RecordedEvent
from es_actors.examples.bank import AccountOpened, MoneyDeposited, MoneyWithdrawn
from es_actors.examples.bank_projections import Balances, BalancesPy
from es_actors.examples.bank_projections import upsert_balance_deltas as fold_into  # the same fold as BalancesPy

BALANCE_COLUMNS = "account VARCHAR PRIMARY KEY, owner VARCHAR, balance BIGINT NOT NULL, events BIGINT NOT NULL, version BIGINT NOT NULL"


class SmallBatchBalances(Balances):
    """The SQL read model, 50 events per transaction: kills land mid-stream."""

    batch_size = 50


class SmallBatchBalancesPy(BalancesPy):
    batch_size = 50


class BalancesV2(Balances):
    """Same read model, new version: opening a store with it rebuilds ``balances`` from the log."""

    version = 2


class BalancesPyV2(BalancesPy):
    version = 2


class FlaggedBalances(PythonProjection):
    """Balances folded in Python, with a switch: while the file ``flag`` exists,

    - mode "fail": a batch holding a deposit of exactly 13 raises;
    - mode "block": every batch waits (at most ``block_s``) until the file is gone.
    """

    event_types = (AccountOpened, MoneyDeposited, MoneyWithdrawn)
    flag: ClassVar[str] = ""
    mode: ClassVar[str] = "fail"
    block_s: ClassVar[float] = 60.0

    @classmethod
    def handle(cls, db: Any, events: Sequence[RecordedEvent]) -> None:
        if cls.mode == "block":
            deadline = time.monotonic() + cls.block_s
            while os.path.exists(cls.flag) and time.monotonic() < deadline:
                time.sleep(0.05)
        elif os.path.exists(cls.flag):
            for e in events:
                if isinstance(e.event, MoneyDeposited) and e.event.amount == 13:
                    raise ValueError(f"poison deposit of 13 on {e.aggregate_id} at position {e.position}")
        fold_into(db, cls.name, events)


def flagged_projection(
    name: str, flag: str, *, mode: str = "fail", on_error: str = "halt", max_attempts: int = 2,
    retry_backoff_s: float = 0.05, batch_size: int = 1_000_000,
) -> type[FlaggedBalances]:
    """A FlaggedBalances named ``name`` (its table too), steered by the file ``flag``."""
    attrs = {
        "name": name, "flag": flag, "mode": mode, "on_error": on_error, "max_attempts": max_attempts,
        "retry_backoff_s": retry_backoff_s, "batch_size": batch_size,
        "setup": f"CREATE TABLE {name} ({BALANCE_COLUMNS})",
    }
    return type(f"Flagged_{name}", (FlaggedBalances,), attrs)  # type: ignore[return-value]


class SameTableAsBalances(PythonProjection):
    """Declares a table named like Balances' one: its ``main`` view would take ``balances`` over."""

    name = "balances_shadow"
    event_types = (AccountOpened,)
    setup = f"CREATE TABLE balances ({BALANCE_COLUMNS})"

    @classmethod
    def handle(cls, db: Any, events: Sequence[RecordedEvent]) -> None:
        fold_into(db, "balances", events)


# -- a v1 writer of the bank domain: stores events the current code reads through upcasters --


class LegacyOpen(Command):
    owner: str
    initial: int


class LegacyDeposit(Command):
    amt: int


class AccountOpenedWithDeposit(Event):  # read today as AccountOpened + MoneyDeposited (a split)
    owner: str
    initial: int


class FundsDeposited(Event):  # read today as MoneyDeposited {amount}
    amt: int


class LegacyBankAccount(Aggregate[int]):
    aggregate_type = "BankAccount"
    commands = (LegacyOpen, LegacyDeposit)
    events = (AccountOpenedWithDeposit, FundsDeposited)

    @classmethod
    def initial_state(cls) -> int:
        return 0

    @classmethod
    def decide(cls, state: int, command: Command) -> Sequence[Event]:
        if isinstance(command, LegacyOpen):
            return [AccountOpenedWithDeposit(owner=command.owner, initial=command.initial)]
        assert isinstance(command, LegacyDeposit)
        return [FundsDeposited(amt=command.amt)]

    @classmethod
    def evolve(cls, state: int, event: Event) -> int:
        return state + 1


# -- projections that fail on one event (a deposit of 13), to see the halt name that event ----


class UnluckySql(SqlProjection):
    name = "unlucky_sql"
    event_types = (MoneyDeposited,)
    max_attempts = 1
    retry_backoff_s = 0.01
    setup = "CREATE TABLE unlucky_sql (account VARCHAR, amount BIGINT)"
    apply = """INSERT INTO unlucky_sql SELECT aggregate_id, CASE WHEN (payload->>'amount')::BIGINT = 13
               THEN error('unlucky amount') ELSE (payload->>'amount')::BIGINT END FROM batch"""


class UnluckyPy(PythonProjection):
    name = "unlucky_py"
    event_types = (MoneyDeposited,)
    max_attempts = 1
    retry_backoff_s = 0.01
    setup = "CREATE TABLE unlucky_py (account VARCHAR, amount BIGINT)"

    @classmethod
    def handle(cls, db: Any, events: Sequence[RecordedEvent]) -> None:
        for e in events:
            if e.event.amount == 13:
                raise ValueError("unlucky amount")
            db.execute("INSERT INTO unlucky_py VALUES (?, ?)", [e.aggregate_id, e.event.amount])
