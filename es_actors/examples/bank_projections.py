"""Read models of the bank example: account balances, once as SQL and once as Python.

Both consume the same events (upcast to current versions) and must agree row for row.
"""

from __future__ import annotations

from typing import Any, Sequence

import pyarrow as pa

from es_actors.read.merge import Merge
from es_actors.read.projection import PythonProjection, SqlProjection
from es_actors.codecs.views import RecordedEvent

from es_actors.examples.bank import AccountOpened, MoneyDeposited, MoneyWithdrawn


class Balances(SqlProjection):
    """One row per account; each batch is folded by one vectorised upsert."""

    name = "balances"
    version = 1
    event_types = (AccountOpened, MoneyDeposited, MoneyWithdrawn)
    setup = """CREATE TABLE balances (
        account VARCHAR PRIMARY KEY, owner VARCHAR, balance BIGINT NOT NULL, events BIGINT NOT NULL,
        version BIGINT NOT NULL)"""
    apply = """
        INSERT INTO balances
        SELECT aggregate_id,
               max(CASE WHEN event_type = 'AccountOpened' THEN payload->>'owner' END),
               sum(CASE event_type WHEN 'MoneyDeposited' THEN (payload->>'amount')::BIGINT
                                   WHEN 'MoneyWithdrawn' THEN -(payload->>'amount')::BIGINT ELSE 0 END),
               count(*), max(version)
        FROM batch GROUP BY aggregate_id
        ON CONFLICT (account) DO UPDATE SET
            owner = coalesce(excluded.owner, owner),
            balance = balance + excluded.balance,
            events = events + excluded.events,
            version = greatest(version, excluded.version)"""
    # A part built from any share of the log folds in the same way a batch does: backfills may
    # split partitions by ranges of positions.
    merge = Merge.combining(balances="""
        INSERT INTO balances SELECT * FROM part
        ON CONFLICT (account) DO UPDATE SET
            owner = coalesce(excluded.owner, owner), balance = balance + excluded.balance,
            events = events + excluded.events, version = greatest(version, excluded.version)""")


class BalancesPy(PythonProjection):
    """The same read model from typed events: fold in Python, write the batch's deltas at once."""

    name = "balances_py"
    version = 1
    event_types = (AccountOpened, MoneyDeposited, MoneyWithdrawn)
    # Its own table name: each table gets a view of that name in ``main`` (``FROM balances_py``),
    # and two projections cannot both have a table named ``balances``.
    setup = """CREATE TABLE balances_py (
        account VARCHAR PRIMARY KEY, owner VARCHAR, balance BIGINT NOT NULL, events BIGINT NOT NULL,
        version BIGINT NOT NULL)"""
    merge = Merge.by_aggregate()  # one row per account: partitions build disjoint rows

    @classmethod
    def handle(cls, db: Any, events: Sequence[RecordedEvent]) -> None:
        upsert_balance_deltas(db, "balances_py", events)


class DailyTotals(SqlProjection):
    """Money in and out per day, across all accounts and partitions (a backfill combines the
    totals its workers built from different shares of the log)."""

    name = "daily_totals"
    version = 1
    event_types = (MoneyDeposited, MoneyWithdrawn)
    setup = """CREATE TABLE daily_totals (
        day DATE PRIMARY KEY, deposited BIGINT NOT NULL, withdrawn BIGINT NOT NULL, events BIGINT NOT NULL)"""
    apply = """
        INSERT INTO daily_totals
        SELECT CAST(timezone('UTC', recorded_at) AS DATE),  -- the UTC day, whatever the session's time zone
               sum(CASE WHEN event_type = 'MoneyDeposited' THEN (payload->>'amount')::BIGINT ELSE 0 END),
               sum(CASE WHEN event_type = 'MoneyWithdrawn' THEN (payload->>'amount')::BIGINT ELSE 0 END),
               count(*)
        FROM batch GROUP BY ALL
        ON CONFLICT (day) DO UPDATE SET
            deposited = deposited + excluded.deposited, withdrawn = withdrawn + excluded.withdrawn,
            events = events + excluded.events"""
    merge = Merge.combining(daily_totals="""
        INSERT INTO daily_totals SELECT * FROM part
        ON CONFLICT (day) DO UPDATE SET
            deposited = deposited + excluded.deposited, withdrawn = withdrawn + excluded.withdrawn,
            events = events + excluded.events""")


def upsert_balance_deltas(db: Any, table: str, events: Sequence[RecordedEvent]) -> None:
    """Fold a batch into per-account deltas in Python, then upsert them into ``table`` at once."""
    delta: dict[str, list[Any]] = {}  # account -> [owner, balance delta, events, max version]
    for e in events:
        d = delta.setdefault(e.aggregate_id, [None, 0, 0, 0])
        match e.event:
            case AccountOpened(owner=owner):
                d[0] = owner
            case MoneyDeposited(amount=amount):
                d[1] += amount
            case MoneyWithdrawn(amount=amount):
                d[1] -= amount
        d[2] += 1
        d[3] = max(d[3], e.version)
    accounts = list(delta)
    db.register(
        "deltas",
        pa.table({
            "account": accounts,
            "owner": pa.array([delta[a][0] for a in accounts], pa.string()),
            "balance": pa.array([delta[a][1] for a in accounts], pa.int64()),
            "events": pa.array([delta[a][2] for a in accounts], pa.int64()),
            "version": pa.array([delta[a][3] for a in accounts], pa.int64()),
        }),
    )
    db.execute(f"""
        INSERT INTO {table} SELECT * FROM deltas
        ON CONFLICT (account) DO UPDATE SET
            owner = coalesce(excluded.owner, owner), balance = balance + excluded.balance,
            events = events + excluded.events, version = greatest(version, excluded.version)""")
    db.unregister("deltas")
