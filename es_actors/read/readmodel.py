"""The DuckDB edge of the read side: one database file of read models, checkpoints and
dead letters, written by the projector and queried read-only (ADR-004).

``<store>/readmodels/readmodels.duckdb`` holds:

- one schema per projection (its tables), and a view per table in ``main``;
- ``es_actors.projections`` (name, version, kind, paused), ``es_actors.checkpoints``
  (projection, partition, position, recorded_at): each batch's rows and its checkpoint
  commit in one transaction, so a redelivered batch is never applied twice;
- ``es_actors.dead_letters``: events parked by projections whose policy is "park".

DuckDB lets one process open the file for writing; the projector actor is that process and
runs queries on their own cursors (concurrent with projection, MVCC). The connection may
only touch files under the store (``allowed_directories``, external access off,
configuration locked); queries are checked on their parse tree before they run and run in a
transaction that is rolled back (es_actors.queries, ADR-010).
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any, Sequence

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from es_actors.domain import DomainRegistry
from es_actors.errors import EsActorsError, QueryFailed, QueryRefused
from es_actors.read.queries import QueryRequest, run_query
from es_actors.read.query_guard import database_functions
from es_actors.read.projection import Projection, PythonProjection, SqlProjection
from es_actors.codecs.rows import ARROW_SCHEMA, COL, event_where, rows_to_table, table_to_rows
from es_actors.codecs.views import RecordedEvent
from es_actors.read.batches import bisect_batch
from es_actors.storage.follower import Batch
from es_actors.domain.upcasting import UnreadableEvent

log = logging.getLogger(__name__)

_SYSTEM_DDL = [
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
]


_NEEDS_UPCAST = "es_actors: rows at older versions need upcasting"


def readmodel_path(root: Path) -> Path:
    return root / "readmodels" / "readmodels.duckdb"


def connect_restricted(database: str, root: Path, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection that can read files under ``root`` only, with its settings locked."""
    con = duckdb.connect(database, read_only=read_only)
    con.execute("SET allowed_directories = ?", [[str(root.resolve()) + "/"]])
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


class ReadModel:
    def __init__(self, root: Path, registry: DomainRegistry, projections: Sequence[type[Projection]]) -> None:
        self.root = root
        self.registry = registry
        self.projections = {p.name: p for p in projections}
        path = readmodel_path(root)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.con = connect_restricted(str(path), root)
        self._ddl_lock = threading.Lock()
        for stmt in _SYSTEM_DDL:
            self.con.execute(stmt)
        self.cursors: dict[str, duckdb.DuckDBPyConnection] = {}
        for p in projections:
            self._ensure(p)
        #: Macros the projections' set-up created: queries may not call them (query_guard).
        self.defined_functions = database_functions(self.con)

    # -- projection set-up ----------------------------------------------------------------

    def _ensure(self, p: type[Projection]) -> None:
        """Create the projection's schema, or rebuild it from zero when its version changed."""
        cur = self.con.cursor()
        row = cur.execute("SELECT version FROM es_actors.projections WHERE name = ?", [p.name]).fetchone()
        if row is not None and row[0] != p.version:
            log.warning("projection %s: version %s in the read model, %s in code: rebuilding from the log", p.name, row[0], p.version)
            self._drop(cur, p.name)
            row = None
        if row is None:
            cur.execute("BEGIN")
            try:
                cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{p.name}"')
                cur.execute(f"SET search_path = '{p.name}'")
                for stmt in p.setup_statements():
                    cur.execute(stmt)
                cur.execute(
                    "INSERT INTO es_actors.projections VALUES (?, ?, ?, false, now())", [p.name, p.version, p.kind]
                )
                for (table,) in cur.execute(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = ?", [p.name]
                ).fetchall():
                    other = self._other_owner(cur, p.name, table)
                    if other is not None:  # its view would silently replace the other's (and be dropped with it)
                        raise EsActorsError(
                            f"table {table!r} is also a table of projection {other!r}: the view main.{table} "
                            "can show only one of them; name the tables differently"
                        )
                    cur.execute(f'CREATE OR REPLACE VIEW main."{table}" AS SELECT * FROM "{p.name}"."{table}"')
                cur.execute("COMMIT")
            except Exception as exc:
                cur.execute("ROLLBACK")
                raise EsActorsError(f"projection {p.name!r}: setup failed: {exc}") from None
        cur.execute(f"SET search_path = '{p.name}'")
        self.cursors[p.name] = cur

    @staticmethod
    def _other_owner(cur: duckdb.DuckDBPyConnection, name: str, table: str) -> str | None:
        """Another registered projection that has a table named ``table`` (and so the main view), if any."""
        row = cur.execute(
            "SELECT table_schema FROM information_schema.tables WHERE table_name = ? AND table_schema <> ? "
            "AND table_schema IN (SELECT name FROM es_actors.projections WHERE name <> ?) LIMIT 1",
            [table, name, name],
        ).fetchone()
        return row[0] if row else None

    def _drop(self, cur: duckdb.DuckDBPyConnection, name: str) -> None:
        cur.execute("BEGIN")
        for (table,) in cur.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = ?", [name]
        ).fetchall():
            if self._other_owner(cur, name, table) is None:  # never drop another projection's view
                cur.execute(f'DROP VIEW IF EXISTS main."{table}"')
        cur.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        for t in ("projections", "checkpoints", "dead_letters"):
            col = "name" if t == "projections" else "projection"
            cur.execute(f"DELETE FROM es_actors.{t} WHERE {col} = ?", [name])
        cur.execute("COMMIT")

    def checkpoints(self, name: str) -> dict[int, int]:
        cur = self.con.cursor()
        rows = cur.execute("SELECT partition, position FROM es_actors.checkpoints WHERE projection = ?", [name]).fetchall()
        return {int(p): int(pos) for p, pos in rows}

    def is_paused(self, name: str) -> bool:
        row = self.con.cursor().execute("SELECT paused FROM es_actors.projections WHERE name = ?", [name]).fetchone()
        return bool(row and row[0])

    def set_paused(self, name: str, paused: bool) -> None:
        self.con.cursor().execute("UPDATE es_actors.projections SET paused = ? WHERE name = ?", [paused, name])

    # -- applying batches -----------------------------------------------------------------

    def apply(self, p: type[Projection], batch: Batch) -> int:
        """Apply a batch and move the checkpoint, in one transaction. Returns events processed."""
        cur = self.cursors[p.name]
        for fast in (True, False):
            cur.execute("BEGIN")
            try:
                n = self._apply_in_txn(cur, p, batch, fast)
                self._set_checkpoint(cur, p.name, batch.partition, batch.last, batch)
                cur.execute("COMMIT")
                return n
            except duckdb.Error as exc:
                cur.execute("ROLLBACK")
                if fast and _NEEDS_UPCAST in str(exc):
                    continue  # older versions in this range: take the upcasting path
                raise
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        raise AssertionError("unreachable")

    def locate_failure(self, p: type[Projection], batch: Batch) -> str | None:
        """Name the event a failing batch fails on, for the projection's error: the first event
        whose inclusion makes a prefix of the batch fail, found by bisection, each trial in a
        transaction that is rolled back (log2(n) + 2 trials; run only before halting). None if
        the batch no longer fails."""
        cur = self.cursors[p.name]

        def trial(first: int, last: int) -> BaseException | None:
            cur.execute("BEGIN")
            try:
                self._apply_in_txn(cur, p, bisect_batch(batch, first, last))
                return None
            except Exception as exc:
                return exc
            finally:
                cur.execute("ROLLBACK")

        error = trial(batch.first, batch.last)
        if error is None:
            return None
        lo, hi = batch.first, batch.last  # invariant: the prefix first..hi fails, with ``error``
        while lo < hi:
            mid = (lo + hi) // 2
            e = trial(batch.first, mid)
            if e is None:
                lo = mid + 1
            else:
                hi, error = mid, e
        rows = bisect_batch(batch, hi, hi).to_table().to_pylist()
        if not rows:
            return None
        r = rows[0]
        alone = hi == batch.first or trial(hi, hi) is not None
        where = event_where(r["partition"], r["position"], r["aggregate_type"], r["aggregate_id"], r["version"])
        how = "" if alone else f" (with the events before it from position {batch.first})"
        return f"event {r['event_type']} at {where}{how}: {type(error).__name__}: {error}"

    def apply_many(self, p: type[Projection], batches: Sequence[Batch]) -> int:
        """Several partitions' tail batches as one relation and one transaction, each partition's
        checkpoint with them (the live case: fewer commits, lower lag)."""
        cur = self.cursors[p.name]
        merged = Batch(-1, 0, 0, table=pa.concat_tables([b.table for b in batches if b.table is not None]))
        cur.execute("BEGIN")
        try:
            n = self._apply_in_txn(cur, p, merged)
            for b in batches:
                self._set_checkpoint(cur, p.name, b.partition, b.last, b)
            cur.execute("COMMIT")
            return n
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    def park(self, p: type[Projection], batch: Batch, error: str, attempts: int) -> None:
        """Move a one-event batch to the dead letters and the checkpoint past it, in one transaction."""
        cur = self.cursors[p.name]
        table = batch.to_table()
        cur.execute("BEGIN")
        try:
            for r in table_to_rows(table):
                cur.execute(
                    "INSERT OR REPLACE INTO es_actors.dead_letters VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, now(), ?)",
                    [p.name, r[COL["partition"]], r[COL["position"]], r[COL["aggregate_type"]], r[COL["aggregate_id"]],
                     r[COL["version"]], r[COL["event_type"]], r[COL["schema_version"]], r[COL["payload"]], error, attempts,
                     json.dumps(list(r))],
                )
            self._set_checkpoint(cur, p.name, batch.partition, batch.last, batch)
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    def _set_checkpoint(self, cur: duckdb.DuckDBPyConnection, name: str, partition: int, position: int, batch: Batch) -> None:
        cur.execute(
            "INSERT INTO es_actors.checkpoints VALUES (?, ?, ?, NULL, now()) "
            "ON CONFLICT (projection, partition) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at",
            [name, partition, position],
        )

    def _apply_in_txn(self, cur: duckdb.DuckDBPyConnection, p: type[Projection], batch: Batch, fast: bool = False) -> int:
        consumed = p.event_type_names()
        if issubclass(p, SqlProjection):
            n = self._register_batch(cur, p, batch, consumed, fast)
            if n:
                for stmt in p.apply_statements():
                    cur.execute(stmt)
            return n
        assert issubclass(p, PythonProjection)
        table = self._relevant_rows(batch.to_table(), consumed)
        events = RecordedEvent.from_table(table, self.registry, set(consumed))
        if events:
            p.handle(cur, events)
        return len(events)

    def _relevant_stored_types(self, consumed: Sequence[str]) -> list[str]:
        """Stored types that can read as a consumed type: the types themselves and any type with upcasters."""
        return sorted(set(consumed) | {t for t, _v in self.registry.decoder.upcasters})

    def _relevant_rows(self, table: pa.Table, consumed: Sequence[str]) -> pa.Table:
        return table.filter(pc.is_in(table.column("event_type"), pa.array(self._relevant_stored_types(consumed))))

    def _register_batch(
        self, cur: duckdb.DuckDBPyConnection, p: type[Projection], batch: Batch, consumed: Sequence[str], fast: bool
    ) -> int:
        """Make ``batch`` a relation of current-version events of the consumed types.

        Sealed events are scanned by DuckDB in place (only the columns the SQL uses). The
        fast path assumes every relevant row is at its current version and guards that
        inside the scan (a row that is not raises, and the batch is redone); the slow path
        upcasts older rows first, vectorised where an upcaster has a SQL form.
        """
        current = {t: c.schema_version for t, c in self.registry.events.items()}
        relevant = self._relevant_stored_types(consumed)
        if batch.table is not None:
            table = self._relevant_rows(batch.table, consumed)
            table = upcast_table(cur, table, self.registry)
            table = table.filter(pc.is_in(table.column("event_type"), pa.array(list(consumed))))
            cur.register("_es_batch", table)
            cur.execute("CREATE OR REPLACE TEMP VIEW batch AS SELECT * FROM _es_batch")
            return table.num_rows
        files = "[" + ", ".join(_sql_str(f) for f in batch.files) + "]"
        scan = f"read_parquet({files}) WHERE position BETWEEN {batch.first} AND {batch.last}"
        if fast:
            current_pred = " OR ".join(
                f"(event_type = {_sql_str(t)} AND schema_version = {current[t]})" for t in consumed if t in current
            ) or "false"
            guard = (
                f"CASE WHEN {current_pred} THEN true WHEN event_type IN ({_sql_list(relevant)}) "
                f"THEN error('{_NEEDS_UPCAST}') ELSE false END"
            )
            cur.execute(f"CREATE OR REPLACE TEMP VIEW batch AS SELECT * FROM {scan} AND ({guard})")
            return batch.count
        stored = cur.execute(
            f"SELECT event_type, schema_version, count(*) FROM {scan} AND event_type IN ({_sql_list(relevant)}) GROUP BY ALL"
        ).fetchall()
        old = [(t, v) for t, v, _n in stored if current.get(t) != v]
        n_current = sum(n for t, v, n in stored if current.get(t) == v and t in consumed)
        current_pred = " OR ".join(
            f"(event_type = {_sql_str(t)} AND schema_version = {current[t]})" for t in consumed if t in current
        ) or "false"
        view = f"SELECT * FROM {scan} AND ({current_pred})"
        n = n_current
        if old:
            old_pred = " OR ".join(f"(event_type = {_sql_str(t)} AND schema_version = {v})" for t, v in old)
            old_rows = _fetch_arrow(cur, f"SELECT * FROM {scan} AND ({old_pred})")
            up = upcast_table(cur, old_rows.cast(ARROW_SCHEMA), self.registry)
            up = up.filter(pc.is_in(up.column("event_type"), pa.array(list(consumed))))
            cur.register("_es_upcast", up)
            view = f"{view} UNION ALL BY NAME SELECT * FROM _es_upcast"
            n += up.num_rows
        cur.execute(f"CREATE OR REPLACE TEMP VIEW batch AS {view}")
        return n

    # -- dead letters -----------------------------------------------------------------------

    def dead_letters(self, name: str | None = None) -> pa.Table:
        cur = self.con.cursor()
        sql = "SELECT * FROM es_actors.dead_letters"
        params: list[Any] = []
        if name is not None:
            sql += " WHERE projection = ?"
            params.append(name)
        return _fetch_arrow(cur, sql + " ORDER BY projection, partition, position", params or None)

    def retry_dead_letters(self, p: type[Projection]) -> dict[str, int]:
        """Apply each parked event again (in position order); a success leaves the dead letters."""
        cur = self.cursors[p.name]
        rows = cur.execute(
            "SELECT partition, position FROM es_actors.dead_letters WHERE projection = ? ORDER BY partition, position",
            [p.name],
        ).fetchall()
        ok = failed = 0
        for partition, position in rows:
            (stored,) = cur.execute(
                "SELECT stored_row FROM es_actors.dead_letters WHERE projection = ? AND partition = ? AND position = ?",
                [p.name, partition, position],
            ).fetchone()
            table = rows_to_table([tuple(json.loads(stored))])
            batch = Batch(int(partition), int(position), int(position), table=table)
            cur.execute("BEGIN")
            try:
                self._apply_in_txn(cur, p, batch)
                cur.execute(
                    "DELETE FROM es_actors.dead_letters WHERE projection = ? AND partition = ? AND position = ?",
                    [p.name, partition, position],
                )
                cur.execute("COMMIT")
                ok += 1
            except Exception as exc:
                cur.execute("ROLLBACK")
                cur.execute(
                    "UPDATE es_actors.dead_letters SET error = ?, attempts = attempts + 1 "
                    "WHERE projection = ? AND partition = ? AND position = ?",
                    [f"{type(exc).__name__}: {exc}", p.name, partition, position],
                )
                failed += 1
        return {"retried": ok + failed, "applied": ok, "still_parked": failed}

    # -- queries ------------------------------------------------------------------------------

    def query(self, req: QueryRequest, events_files: list[str], events_tail: pa.Table) -> pa.Table:
        """A read-only query on its own cursor (concurrent with projection), see es_actors.queries."""
        cur = self.con.cursor()
        try:
            return run_query(cur, req, events_files, events_tail, self.defined_functions)
        finally:
            cur.close()

    def close(self) -> None:
        for c in self.cursors.values():
            try:
                c.close()
            except Exception:
                pass
        self.con.close()


def upcast_table(cur: duckdb.DuckDBPyConnection, table: pa.Table, registry: DomainRegistry) -> pa.Table:
    """Rows at older versions, brought to current ones; SQL upcasters run vectorised in DuckDB,
    the others row by row through the Python chain. Order by (partition, position) is kept."""
    decoder = registry.decoder
    current = {t: c.schema_version for t, c in registry.events.items()}
    for _step in range(decoder.MAX_STEPS):
        if table.num_rows == 0:
            return table
        is_current = _is_current_mask(table, current)
        if pc.all(is_current).as_py():
            return table
        parts = [table.filter(is_current)]
        old = table.filter(pc.invert(is_current))
        pairs = old.group_by(["event_type", "schema_version"]).aggregate([]).to_pylist()
        for pair in pairs:
            t, v = pair["event_type"], pair["schema_version"]
            group = old.filter(pc.and_(pc.equal(old.column("event_type"), t), pc.equal(old.column("schema_version"), v)))
            up = decoder.upcasters.get((t, v))
            if up is not None and up.sql:
                cur.register("stored", group)
                try:
                    out = _fetch_arrow(cur, up.sql)
                except duckdb.Error as exc:
                    r = group.slice(0, 1).to_pylist()[0]
                    raise UnreadableEvent(
                        f"stored event {t} v{v} at partition {r['partition']} position {r['position']}: "
                        f"SQL upcaster failed: {exc}"
                    ) from None
                finally:
                    cur.unregister("stored")
                parts.append(out.select(ARROW_SCHEMA.names).cast(ARROW_SCHEMA))
            else:
                parts.append(_python_upcast(group, registry))
        table = pa.concat_tables(parts).sort_by([("partition", "ascending"), ("position", "ascending")])
    raise UnreadableEvent("upcaster chain does not end (a cycle?)")


def _is_current_mask(table: pa.Table, current: dict[str, int]) -> pa.ChunkedArray:
    types = table.column("event_type")
    versions = table.column("schema_version")
    mask = pa.chunked_array([pa.array([False] * table.num_rows)]) if table.num_rows else pa.chunked_array([], pa.bool_())
    for t, v in current.items():
        mask = pc.or_(mask, pc.and_(pc.equal(types, t), pc.equal(versions, v)))
    return mask


def _python_upcast(group: pa.Table, registry: DomainRegistry) -> pa.Table:
    out: list[tuple[Any, ...]] = []
    for r in table_to_rows(group):
        for e in registry.decode(r[COL["event_type"]], r[COL["schema_version"]], r[COL["payload"]], event_where(*r[:5])):
            row = list(r)
            row[COL["event_type"]], row[COL["schema_version"]], row[COL["payload"]] = (
                e.event_type, e.schema_version, e.model_dump_json(),
            )
            out.append(tuple(row))
    return rows_to_table(out)


def _fetch_arrow(cur: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> pa.Table:
    """A query's result as Arrow without the DB-API path's extra copy."""
    return cur.sql(sql, params=params).to_arrow_table()


def _sql_str(s: str) -> str:
    return "'" + str(s).replace("'", "''") + "'"


def _sql_list(items: Sequence[str]) -> str:
    return ", ".join(_sql_str(i) for i in items) or "NULL"


__all__ = ["ReadModel", "QueryRefused", "QueryFailed", "run_query", "connect_restricted", "readmodel_path"]


def committed_status(layout: Any, partitions: int) -> list[dict[str, Any]]:
    """Projection status from the read-model file when no projector runs: the committed
    checkpoints against each partition's durable head (status "stopped")."""
    from es_actors.storage.follower import LogFollower

    path = readmodel_path(layout.root)
    if not path.exists():
        return []
    try:
        con = connect_restricted(str(path), layout.root, read_only=True)
    except duckdb.Error as exc:
        raise EsActorsError(
            f"{path} is held by a running projector that this process cannot reach (join its Ray cluster): {exc}"
        ) from None
    try:
        heads = []
        for p in range(partitions):
            f = LogFollower(layout, p, 0)
            while f.poll(10_000_000) is not None:
                pass
            heads.append(f.head)
        projections = con.execute("SELECT name, version, kind, paused FROM es_actors.projections ORDER BY name").fetchall()
        cps = {(n, p): pos for n, p, pos in con.execute("SELECT projection, partition, position FROM es_actors.checkpoints").fetchall()}
        parked = dict(con.execute("SELECT projection, count(*) FROM es_actors.dead_letters GROUP BY ALL").fetchall())
    finally:
        con.close()
    rows = []
    for name, version, kind, paused in projections:
        for p in range(partitions):
            cp = cps.get((name, p), 0)
            rows.append({
                "projection": name, "version": version, "kind": kind, "partition": p, "checkpoint": cp,
                "head": heads[p], "lag_events": max(0, heads[p] - cp), "lag_seconds": None,
                "status": "paused" if paused else "stopped", "last_error": None, "events_per_s": 0.0,
                "applied": None, "dead_letters": parked.get(name, 0),
            })
    return rows
