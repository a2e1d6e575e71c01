"""Read models of the bank example: account balances, once as SQL and once as Python.

Both consume the same events (upcast to current versions) and must agree row for row.
"""

from __future__ import annotations

from typing import Any, Sequence

import pyarrow as pa

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

    @classmethod
    def handle(cls, db: Any, events: Sequence[RecordedEvent]) -> None:
        upsert_balance_deltas(db, "balances_py", events)


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
