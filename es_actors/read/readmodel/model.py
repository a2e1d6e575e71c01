"""The read model: one DuckDB file of projections' tables, checkpoints and dead letters,
written by the projection runner and queried read-only (ADR-004).

It owns the transactions: a batch's rows and its checkpoint commit together (so a batch
delivered again after a crash is never applied twice), and a parked event leaves with its
checkpoint. How a batch becomes rows is the handler's of the projection's kind
(es_actors.read.readmodel.kinds).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import duckdb
import pyarrow as pa

from es_actors.codecs.rows import event_where
from es_actors.domain import DomainRegistry
from es_actors.read.batches import bisect_batch
from es_actors.read.projection import Projection
from es_actors.read.events_relation import EventsSource
from es_actors.read.queries import QueryRequest, run_query
from es_actors.read.query_guard import database_functions
from es_actors.read.readmodel import checkpoints, dead_letters
from es_actors.read.readmodel.current import runs_as
from es_actors.read.readmodel.database import SYSTEM_DDL, CommitGate, connect_restricted, readmodel_path, transaction
from es_actors.read.readmodel.kinds import ProjectionHandler, handler_class
from es_actors.read.readmodel.schemas import open_projection
from es_actors.storage.local.follower import Batch

T = TypeVar("T")


class ReadModel:
    """The read-model file, open for writing, with one cursor and one handler per projection."""

    def __init__(
        self, root: Path, registry: DomainRegistry, projections: Sequence[type[Projection]], database: str | None = None,
        threads: int | None = None,
    ) -> None:
        """``database``: the store's read-model file unless given (``":memory:"`` for a backfill
        task's private database); ``threads``: DuckDB's worker threads (default: DuckDB's)."""
        self.root = root
        self.registry = registry
        self.projections: dict[str, type[Projection]] = {}
        self.handlers: dict[str, ProjectionHandler] = {}
        for p in projections:  # an unknown kind is refused before the file is touched
            self._handler(p)
        self.handlers.clear()  # keyed again by the name each runs as, below
        if database is None:
            path = readmodel_path(root)
            path.parent.mkdir(parents=True, exist_ok=True)
            database = str(path)
        self.con = connect_restricted(database, root, threads=threads)
        for stmt in SYSTEM_DDL:
            self.con.execute(stmt)
        self.cursors: dict[str, duckdb.DuckDBPyConnection] = {}
        self._left_open: list[duckdb.DuckDBPyConnection] = []  # cursors of removed projections still in a handler
        #: Declared name -> the class it runs as: the build of its version after a cutover to it (ADR-018).
        self.runs_as = {p.name: runs_as(self.con, p) for p in projections}
        projections = [self.runs_as[p.name] for p in projections]
        #: Per projection: asked at each batch's commit (the runner's pause check); none: commit.
        self.commit_gates: dict[str, CommitGate] = {}
        for p in projections:
            self._handler(p)
            self.cursors[p.name] = open_projection(self.con, p)
            self.projections[p.name] = p
        #: Macros the projections' set-up created: queries may not call them (query_guard). Looked
        #: up at the first query (~15 ms: a backfill task's private database never has one).
        self._defined_functions: frozenset[str] | None = None

    def _handler(self, p: type[Projection]) -> ProjectionHandler:
        self.handlers[p.name] = handler = handler_class(p)(self.registry)
        handler.check(p)
        return handler

    def add(self, p: type[Projection]) -> None:
        """Open one more projection (set up if new), e.g. a version a backfill built beside."""
        self._handler(p)
        self.cursors[p.name] = open_projection(self.con, p)
        self.projections[p.name] = p
        self._defined_functions = None  # its set-up may have created macros: looked up again

    def remove(self, name: str, close: bool = True) -> None:
        """Close a projection's cursor (its tables stay in the file). ``close`` False: a batch
        still uses it (a hung handler's, refused at its commit); it is closed with the file."""
        cur = self.cursors.pop(name, None)
        self.handlers.pop(name, None)
        self.commit_gates.pop(name, None)
        self.projections.pop(name, None)
        if cur is not None:
            if close:
                cur.close()
            else:
                self._left_open.append(cur)

    # -- checkpoints and pause ----------------------------------------------------------------

    def checkpoints(self, name: str) -> dict[int, int]:
        return checkpoints.load_checkpoints(self.con, name)

    def is_paused(self, name: str) -> bool:
        return checkpoints.is_paused(self.con, name)

    def set_paused(self, name: str, paused: bool) -> None:
        checkpoints.set_paused(self.con, name, paused)

    # -- applying batches -----------------------------------------------------------------

    def apply(self, p: type[Projection], batch: Batch) -> int:
        """Apply a batch and move the checkpoint, in one transaction. Returns events processed."""
        cur, handler = self.cursors[p.name], self.handlers[p.name]
        try:
            return self._apply_and_checkpoint(cur, handler, p, batch, optimistic=True)
        except duckdb.TransactionException:
            raise  # a conflict (retried by _retrying_conflicts), not the optimistic path's guard
        except duckdb.Error:
            if not handler.needs_full_path(cur, p, batch):
                raise  # the projection's own failure
        return self._apply_and_checkpoint(cur, handler, p, batch, optimistic=False)

    def _apply_and_checkpoint(
        self, cur: duckdb.DuckDBPyConnection, handler: ProjectionHandler, p: type[Projection], batch: Batch, optimistic: bool
    ) -> int:
        gate = self.commit_gates.get(p.name)  # taken once: a retry after removal still asks it

        def attempt() -> int:
            with transaction(cur, gate):
                n = handler.apply(cur, p, batch, optimistic)
                checkpoints.set_checkpoint(cur, p.name, batch.partition, batch.last)
            return n

        return _retrying_conflicts(attempt)

    def apply_many(self, p: type[Projection], batches: Sequence[Batch]) -> int:
        """Several partitions' tail batches as one relation and one transaction, each partition's
        checkpoint with them (the live case: fewer commits, lower lag)."""
        cur = self.cursors[p.name]
        merged = Batch(-1, 0, 0, table=pa.concat_tables([b.table for b in batches if b.table is not None]))

        gate, handler = self.commit_gates.get(p.name), self.handlers[p.name]

        def attempt() -> int:
            with transaction(cur, gate):
                n = handler.apply(cur, p, merged)
                for b in batches:
                    checkpoints.set_checkpoint(cur, p.name, b.partition, b.last)
            return n

        return _retrying_conflicts(attempt)

    def locate_failure(self, p: type[Projection], batch: Batch) -> str | None:
        """Name the event a failing batch fails on, for the projection's error: the first event
        whose inclusion makes a prefix of the batch fail, found by bisection, each trial in a
        transaction that is rolled back (log2(n) + 2 trials; run only before halting). None if
        the batch no longer fails."""
        cur, handler = self.cursors[p.name], self.handlers[p.name]

        def trial(first: int, last: int) -> BaseException | None:
            cur.execute("BEGIN")
            try:
                handler.apply(cur, p, bisect_batch(batch, first, last))
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

    # -- dead letters -----------------------------------------------------------------------

    def park(self, p: type[Projection], batch: Batch, error: str, attempts: int) -> None:
        """Move a one-event batch to the dead letters and the checkpoint past it, in one transaction."""
        cur = self.cursors[p.name]
        table = batch.to_table()

        gate = self.commit_gates.get(p.name)

        def attempt() -> None:
            with transaction(cur, gate):
                dead_letters.insert_dead_letters(cur, p.name, table, error, attempts)
                checkpoints.set_checkpoint(cur, p.name, batch.partition, batch.last)

        _retrying_conflicts(attempt)

    def dead_letters(self, name: str | None = None) -> pa.Table:
        return dead_letters.list_dead_letters(self.con, name)

    def retry_dead_letters(self, p: type[Projection]) -> dict[str, int]:
        """Apply each parked event again (in position order); a success leaves the dead letters."""
        cur, handler = self.cursors[p.name], self.handlers[p.name]
        ok = failed = 0
        for batch in dead_letters.parked_batches(cur, p.name):
            try:
                with transaction(cur):
                    handler.apply(cur, p, batch)
                    dead_letters.delete_dead_letter(cur, p.name, batch.partition, batch.first)
                ok += 1
            except Exception as exc:
                dead_letters.record_failed_retry(cur, p.name, batch.partition, batch.first, f"{type(exc).__name__}: {exc}")
                failed += 1
        return {"retried": ok + failed, "applied": ok, "still_parked": failed}

    # -- queries ------------------------------------------------------------------------------

    def query(self, req: QueryRequest, events: EventsSource) -> pa.Table:
        """A read-only query on its own cursor (concurrent with projection), see es_actors.read.queries."""
        cur = self.con.cursor()
        try:
            if self._defined_functions is None:
                self._defined_functions = database_functions(cur)
            return run_query(cur, req, events, self._defined_functions)
        finally:
            cur.close()

    def close(self) -> None:
        for c in [*self.cursors.values(), *self._left_open]:
            try:
                c.close()
            except Exception:
                pass  # closing anyway: the connection's close below releases the file
        self.con.close()


#: Attempts of a batch's transaction that DuckDB refuses as a conflict with another
#: projection's concurrent transaction (each projection writes its own tables and its own
#: checkpoint rows, so none was seen in a stress; ADR-017). The whole transaction is redone:
#: rows and checkpoint commit together, so a redo never applies an event twice.
CONFLICT_ATTEMPTS = 5


def _retrying_conflicts(attempt: Callable[[], T]) -> T:
    for i in range(CONFLICT_ATTEMPTS):
        try:
            return attempt()
        except duckdb.TransactionException:
            if i + 1 == CONFLICT_ATTEMPTS:
                raise
            time.sleep(0.01 * (i + 1))
    raise AssertionError("unreachable")
