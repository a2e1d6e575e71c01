"""Projections for the backfill tests: one per way of combining parts, plus ones that cannot be
combined, that collide, and that fail or kill their worker on a chosen event."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from es_actors.codecs.views import RecordedEvent
from es_actors.examples.bank import AccountOpened, MoneyDeposited, MoneyWithdrawn
from es_actors.examples.bank_projections import Balances, BalancesPy, DailyTotals, upsert_balance_deltas
from es_actors.read.merge import Merge
from es_actors.read.projection import PythonProjection, SqlProjection
from tests.projection_domains import SmallBatchBalances, SmallBatchBalancesPy



# The bank read models in small batches (50 events), so tasks checkpoint and resume within a share.
SmallBalances, SmallBalancesPy = SmallBatchBalances, SmallBatchBalancesPy


class SmallDaily(DailyTotals):
    batch_size = SmallBatchBalances.batch_size


class Ledger(SqlProjection):
    """Every event's running number within its partition: depends on log order, declares no merge."""

    name = "ledger"
    event_types = (AccountOpened, MoneyDeposited, MoneyWithdrawn)
    # no key on position: an upcaster that splits one stored event gives two events at one position
    setup = "CREATE TABLE ledger (partition INTEGER, position BIGINT, event_type VARCHAR, n BIGINT)"
    apply = """INSERT INTO ledger SELECT partition, position, event_type,
        coalesce((SELECT max(n) FROM ledger l WHERE l.partition = b.partition), 0)
          + row_number() OVER (PARTITION BY partition ORDER BY position, event_type)
        FROM batch b"""
    batch_size = 40


class PerTypeClaimsDisjoint(SqlProjection):
    """Counts per event type, wrongly declared keyed by aggregate: partitions' parts collide."""

    name = "per_type"
    event_types = (AccountOpened, MoneyDeposited, MoneyWithdrawn)
    setup = "CREATE TABLE per_type (event_type VARCHAR PRIMARY KEY, n BIGINT)"
    apply = """INSERT INTO per_type SELECT event_type, count(*) FROM batch GROUP BY ALL
        ON CONFLICT (event_type) DO UPDATE SET n = n + excluded.n"""
    merge = Merge.by_aggregate()


class TrapPy(PythonProjection):
    """BalancesPy that, while the trap file exists, fails on (or kills its process at) the
    deposit of 13: what a bad deploy or a lost node does to a backfill mid-run."""

    name = "trap_py"
    event_types = (AccountOpened, MoneyDeposited, MoneyWithdrawn)
    setup = BalancesPy.setup.replace("balances_py", "trap_py")
    merge = Merge.by_aggregate()
    batch_size = 25
    trap = ""  # set by trapped(): a file that arms the trap ("kill" or "fail")

    @classmethod
    def handle(cls, db: Any, events: Sequence[RecordedEvent]) -> None:
        trap = cls.trap
        if trap and any(isinstance(e.event, MoneyDeposited) and e.event.amount == 13 for e in events):
            path = Path(trap)
            if path.exists():
                if path.read_text() == "kill":
                    path.unlink()  # once: the retried task must get past it
                    os._exit(1)
                raise RuntimeError("the trap is set")
        upsert_balance_deltas(db, "trap_py", events)


def trapped(path: Path) -> type[TrapPy]:
    """TrapPy armed by ``path`` (defined here, so Ray ships the class with its trap to the workers)."""
    return type("TrapPy", (TrapPy,), {"trap": str(path), "__module__": __name__ + ".armed"})


class SlowBalances(Balances):
    """Balances in batches of 100, each a little slow: a backfill long enough to lose a node in."""

    batch_size = 100
    apply = [Balances.apply, "SELECT max(md5(range::VARCHAR)) FROM range(600000)"]  # ~0.08 s per batch: a task lasts seconds
