"""The DuckDB plumbing every part of the read model shares: where the file is, how it is
opened (restricted to the store's files), the system tables, transactions, SQL literals."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Sequence

import duckdb
import pyarrow as pa

from es_actors.errors import EsActorsError

#: The system schema: registered projections, checkpoints, dead letters (ADR-004).
SYSTEM_DDL = [
    "CREATE SCHEMA IF NOT EXISTS es_actors",
    """CREATE TABLE IF NOT EXISTS es_actors.projections (
        name VARCHAR PRIMARY KEY, version INTEGER NOT NULL, kind VARCHAR NOT NULL,
        paused BOOLEAN NOT NULL DEFAULT false, created_at TIMESTAMPTZ NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS es_actors.checkpoints (
        projection VARCHAR NOT NULL, partition INTEGER NOT NULL, position BIGINT NOT NULL,
        recorded_at TIMESTAMPTZ, updated_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (projection, partition))""",
    """CREATE TABLE IF NOT EXISTS es_actors.dead_letters (
        projection VARCHAR NOT NULL, partition INTEGER NOT NULL, position BIGINT NOT NULL,
        aggregate_type VARCHAR, aggregate_id VARCHAR, version BIGINT, event_type VARCHAR,
        schema_version INTEGER, payload VARCHAR, error VARCHAR NOT NULL, attempts INTEGER NOT NULL,
        parked_at TIMESTAMPTZ NOT NULL, stored_row VARCHAR NOT NULL, PRIMARY KEY (projection, partition, position))""",
    # Versions a backfill built beside the live one (es_actors.read.backfill.install): the projector
    # that restarts finds their declarations here and keeps them following the log.
    """CREATE TABLE IF NOT EXISTS es_actors.builds (
        instance VARCHAR PRIMARY KEY, projection VARCHAR NOT NULL, version INTEGER NOT NULL,
        definition BLOB, built_from VARCHAR NOT NULL, installed_at TIMESTAMPTZ NOT NULL)""",
    # The current version of a projection whose views in ``main`` were switched by a cutover or a
    # rollback (es_actors.read.versions, ADR-018); no row: the schema named after it is current.
    """CREATE TABLE IF NOT EXISTS es_actors.current (
        projection VARCHAR PRIMARY KEY, instance VARCHAR NOT NULL, version INTEGER NOT NULL,
        switched_at TIMESTAMPTZ NOT NULL)""",
    # The operations log: a row when an operation starts, one with its outcome (same ``op``).
    """CREATE TABLE IF NOT EXISTS es_actors.operations (
        id BIGINT PRIMARY KEY, op BIGINT NOT NULL, recorded_at TIMESTAMPTZ NOT NULL, operation VARCHAR NOT NULL,
        projection VARCHAR NOT NULL, from_instance VARCHAR, to_instance VARCHAR, principal VARCHAR NOT NULL,
        reason VARCHAR NOT NULL, forced BOOLEAN NOT NULL, outcome VARCHAR NOT NULL, detail VARCHAR)""",
]


def readmodel_path(root: Path) -> Path:
    """The store's read-model file."""
    return root / "readmodels" / "readmodels.duckdb"


def connect_restricted(
    database: str, root: Path, read_only: bool = False, threads: int | None = None
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection that can read files under ``root`` only, with its settings locked
    (``threads``: DuckDB's worker threads, e.g. 1 in a task that holds one CPU; default: DuckDB's)."""
    con = duckdb.connect(database, read_only=read_only, config={"threads": threads} if threads else {})
    con.execute("SET allowed_directories = ?", [[str(root.resolve()) + "/"]])
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def open_error(path: Path, exc: BaseException) -> EsActorsError:
    """Why the read-model file did not open for writing: held by another process (DuckDB's
    lock), not a DuckDB database (corrupt, or another file), or DuckDB's own error."""
    text = str(exc)
    if "lock" in text.lower():
        return EsActorsError(
            f"{path} is held by a running projector this process cannot reach (join its Ray cluster, e.g. --address): {text}")
    if "not a valid DuckDB database" in text:
        return EsActorsError(f"{path} is not a DuckDB database file (corrupt?): {text}")
    return EsActorsError(f"{path}: the read model could not be opened: {type(exc).__name__}: {text}")


#: Held around a COMMIT; yields whether the transaction may commit (False: it rolls back).
CommitGate = Callable[[], ContextManager[bool]]


class BatchWithdrawn(EsActorsError):
    """A batch's transaction was rolled back at its commit: its projection was paused (or
    removed) while the batch was in flight. Nothing of it went in; it is applied again later."""


@contextmanager
def transaction(cur: duckdb.DuckDBPyConnection, gate: CommitGate | None = None) -> Iterator[None]:
    """BEGIN ... COMMIT on ``cur``, rolled back on any error (which goes on), or when ``gate``
    says no at the commit (:class:`BatchWithdrawn`)."""
    cur.execute("BEGIN")
    try:
        yield
    except BaseException:
        cur.execute("ROLLBACK")
        raise
    if gate is None:
        cur.execute("COMMIT")
        return
    with gate() as may_commit:
        if may_commit:
            cur.execute("COMMIT")
            return
    cur.execute("ROLLBACK")
    raise BatchWithdrawn("the projection was paused while this batch was in flight")


def fetch_arrow(cur: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> pa.Table:
    """A query's result as Arrow without the DB-API path's extra copy."""
    return cur.sql(sql, params=params).to_arrow_table()


def sql_str(s: str) -> str:
    """A SQL string literal."""
    return "'" + str(s).replace("'", "''") + "'"


def sql_list(items: Sequence[str]) -> str:
    """String literals for ``IN (...)`` (``NULL`` when empty: matches nothing)."""
    return ", ".join(sql_str(i) for i in items) or "NULL"
