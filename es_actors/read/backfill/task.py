"""One backfill task: its share of the log replayed by the projection runner (the same code as
the live projector: retries, halt, park) into a private in-memory DuckDB database, checkpointed
into the store every ``checkpoint_events`` positions or ``checkpoint_s`` seconds. A task that
finds a checkpoint of its share starts from it, so a killed task redoes at most one interval."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import duckdb

from es_actors.config import StoreConfig
from es_actors.domain import DomainRegistry
from es_actors.errors import EsActorsError
from es_actors.read.backfill.files import DEAD_LETTERS, TaskCheckpoint
from es_actors.read.backfill.plan import TaskSpec
from es_actors.read.backfill.work import BackfillWork
from es_actors.read.progress import PartitionProgress
from es_actors.read.projection import Projection, SqlProjection
from es_actors.read.readmodel import ReadModel
from es_actors.read.readmodel.checkpoints import set_checkpoint
from es_actors.read.readmodel.database import fetch_arrow, transaction
from es_actors.read.runner import ProjectionRunner
from es_actors.storage.layout import StoreLayout

log = logging.getLogger(__name__)
#: Progress callback: (task id, positions done, positions in the share).
Report = Callable[[str, int, int], None]
#: A task that makes no progress for this long while positions remain has lost them.
NO_PROGRESS_S = 120.0
#: The most positions a task applies in one batch. DuckDB 2.0 plans a grouped upsert (``INSERT ...
#: SELECT ... GROUP BY ... ON CONFLICT DO UPDATE``) as MERGE INTO, a hash join of the grouped batch
#: with the table. It estimates the grouped batch at ~0.04 x the batch's rows; while that is below
#: the table's rows it probes by scanning the table and the updates come in row order; above, they
#: come in hash order, and DuckDB's update of rows out of order is slow (duckdb/duckdb#11275): a 1M
#: batch of Balances (25k accounts) then costs 0.6 s instead of 0.12 s. Batches of 500k stay below
#: it for tables of more than ~20k rows (ADR-016) and add ~7 ms each (a transaction, a checkpoint row).
TASK_BATCH = 500_000
#: The default checkpoint interval of a task, in log positions (a killed task redoes at most one).
#: A checkpoint costs ~ the rows of the task's tables (~9 ms for 25k Balances rows) and bounds the
#: task's first batch: at 4M a default share (>= 2M positions) is one batch and one checkpoint, and
#: a redone interval is ~0.6 s of CPU for Balances (ADR-016, session 22). ``checkpoint_s`` still
#: bounds it in time.
CHECKPOINT_EVENTS = 4_000_000
#: The most positions of a task's first batch when it starts from nothing: its tables are empty,
#: so the upsert only inserts (no existing key, no cliff at any size), and each batch saved is a
#: batch's fixed cost and a re-grouping of the keys into the table (~0.02 s for Balances; a 2.55M
#: share in one batch instead of five: -18 % of its CPU, ADR-016). At most ``checkpoint_events`` (a
#: killed task still redoes at most one interval) and, for a Python projection or a SQL projection
#: that declares a smaller one, the projection's ``batch_size``.
FIRST_BATCH = 4_000_000


class BackfillTaskFailed(EsActorsError):
    """A task's projection halted on an event (the message names it)."""


@dataclass
class TaskResult:
    task: str
    events: int  # log positions covered
    applied: int  # events the projection consumed
    parked: int
    seconds: float
    resumed_at: int  # positions already done by an earlier attempt's checkpoint
    checkpoints: int
    node: str = ""  # where it ran (set by the Ray edge)
    cpu_s: float = 0.0  # the task's process CPU time (its share of one CPU: wall time minus waiting)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def projection_tables(cur: duckdb.DuckDBPyConnection, schema: str) -> list[str]:
    """The base tables of a projection's schema, by name."""
    rows = cur.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = ? AND table_type = 'BASE TABLE' ORDER BY 1",
        [schema],
    ).fetchall()
    return [r[0] for r in rows]


def run_task(
    store: str | Path,
    partitions: int,
    registry: DomainRegistry,
    p: type[Projection],
    spec: TaskSpec,
    work: BackfillWork,
    *,
    checkpoint_events: int = CHECKPOINT_EVENTS,
    checkpoint_s: float = 60.0,
    report: Report | None = None,
    worker: str = "",
    threads: int = 1,
) -> TaskResult:
    """Replay the task's share; its final checkpoint holds the part the install combines.
    ``store``: the store's path or URI (the task follows the log through its backend). ``threads``: DuckDB's threads (a task holds one CPU: more would compete with the other tasks)."""
    t0, cpu0 = time.monotonic(), time.process_time()
    previous = work.load_checkpoint(spec.id)
    if previous is not None and previous.final:
        return TaskResult(spec.id, spec.events, previous.applied, previous.parked, 0.0, spec.events, 0)
    layout = StoreLayout.from_uri(store)
    first_batch = min(_first_batch_bound(p), FIRST_BATCH, checkpoint_events)
    p = _task_batches(p)
    rm = ReadModel(work.local_root, registry, [p], database=":memory:", threads=threads)
    try:
        applied0 = seq = 0
        fresh = True  # its tables hold nothing of the share yet
        if previous is not None:
            try:
                _restore(rm, p, work, previous)
                applied0, seq = previous.applied, previous.seq
                fresh = False
            except duckdb.Error as exc:  # a part that does not read (torn, damaged): the share is redone
                log.warning("backfill task %s: checkpoint %s does not load (%s: %s): replaying the share from its start",
                            spec.id, previous.seq, type(exc).__name__, exc)
                rm.close()
                rm = ReadModel(work.local_root, registry, [p], database=":memory:", threads=threads)
                seq = previous.seq
        runner = ProjectionRunner(layout, partitions, registry, [p], StoreConfig(), read_model=rm, bounds=spec.bounds)
        st = runner.states[p.name]
        if fresh and st.partitions:
            _larger_first_batch(st.partitions[min(st.partitions)], first_batch)

        def done() -> int:
            return sum(max(0, min(prog.checkpoint, spec.bounds[i][1]) - spec.bounds[i][0]) for i, prog in st.partitions.items())

        resumed_at = done()
        last_ck_done, last_ck_t = resumed_at, time.monotonic()
        last_progress = time.monotonic()
        checkpoints = 0
        if report:
            report(spec.id, resumed_at, spec.events)
        while not runner.reached(p.name):
            worked = runner.step()
            if st.halted:
                raise BackfillTaskFailed(f"backfill of {p.name} v{p.version}, task {spec.id}: {st.last_error}")
            now = time.monotonic()
            d = done()
            if worked:
                last_progress = now
                if report:
                    report(spec.id, d, spec.events)
            elif now - last_progress > NO_PROGRESS_S:
                where = {i: (prog.checkpoint, spec.bounds[i][1]) for i, prog in st.partitions.items()}
                raise EsActorsError(f"backfill task {spec.id}: no progress for {NO_PROGRESS_S:.0f} s (partition: (reached, target)) {where}")
            else:
                time.sleep(0.02)
            if d - last_ck_done >= checkpoint_events or (d > last_ck_done and now - last_ck_t >= checkpoint_s):
                seq += 1
                _checkpoint(rm, p, work, spec, seq, runner, applied0, final=False, worker=worker)
                last_ck_done, last_ck_t = d, now
                checkpoints += 1
        seq += 1
        ck = _checkpoint(rm, p, work, spec, seq, runner, applied0, final=True, worker=worker)
        if report:
            report(spec.id, spec.events, spec.events)
        return TaskResult(spec.id, spec.events, ck.applied, ck.parked, time.monotonic() - t0, resumed_at, checkpoints + 1, worker,
                          round(time.process_time() - cpu0, 4))
    finally:
        rm.close()


def _first_batch_bound(p: type[Projection]) -> int:
    """The bound the projection puts on a fresh task's first batch. A SQL projection's sealed batch
    is a scan that DuckDB streams (nothing is materialised per event) and ``batch_size`` bounds a
    live batch's transaction time (``projection_stall_s``), which a task does not watch: the kind's
    default does not bound it; a smaller ``batch_size`` the projection declares does. A Python
    projection's batch is its events in memory: its ``batch_size`` always does."""
    if issubclass(p, SqlProjection) and p.batch_size >= SqlProjection.batch_size:
        return FIRST_BATCH
    return p.batch_size


def _task_batches(p: type[Projection]) -> type[Projection]:
    """``p`` with batches of at most :data:`TASK_BATCH` (the same declaration otherwise: batching
    never changes what a projection builds)."""
    if p.batch_size <= TASK_BATCH:
        return p
    return type(p.__name__, (p,), {"batch_size": TASK_BATCH, "__module__": p.__module__, "__doc__": p.__doc__})


class _FirstBatch:
    """A follower whose first poll may take up to ``rows`` positions (then it is the one it wraps)."""

    def __init__(self, follower: Any, rows: int) -> None:
        self._follower, self._rows = follower, rows
        self._first = True

    def poll(self, max_rows: int = 1_000_000) -> Any:
        if self._first:
            self._first = False
            max_rows = max(max_rows, self._rows)
        return self._follower.poll(max_rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._follower, name)


def _larger_first_batch(prog: PartitionProgress, rows: int) -> None:
    """The task's first batch (into its empty tables) may be larger than :data:`TASK_BATCH`."""
    if rows > TASK_BATCH:
        prog.follower = _FirstBatch(prog.follower, rows)


def _checkpoint(
    rm: ReadModel, p: type[Projection], work: BackfillWork, spec: TaskSpec, seq: int, runner: ProjectionRunner,
    applied0: int, final: bool, worker: str,
) -> TaskCheckpoint:
    st = runner.states[p.name]
    cur = rm.con.cursor()
    try:
        tables = {t: fetch_arrow(cur, f'SELECT * FROM "{p.name}"."{t}"') for t in projection_tables(cur, p.name)}
        dead = fetch_arrow(cur, "SELECT * FROM es_actors.dead_letters WHERE projection = ?", [p.name])
    finally:
        cur.close()
    ck = TaskCheckpoint(
        task=spec.id, seq=seq, positions={i: prog.checkpoint for i, prog in st.partitions.items()},
        applied=applied0 + sum(prog.applied for prog in st.partitions.values()), parked=dead.num_rows,
        tables=sorted(tables), final=final, worker=worker,
    )
    work.write_checkpoint(ck, tables, dead)
    return ck


def _restore(rm: ReadModel, p: type[Projection], work: BackfillWork, ck: TaskCheckpoint) -> None:
    """Load a checkpoint's tables, dead letters and positions into the fresh task database."""
    cur = rm.con.cursor()
    try:
        with transaction(cur):
            for t in ck.tables:
                cur.execute(f'INSERT INTO "{p.name}"."{t}" BY NAME SELECT * FROM read_parquet(?)', [str(work.table_file(ck, t))])
            cur.execute("INSERT INTO es_actors.dead_letters BY NAME SELECT * FROM read_parquet(?)", [str(work.table_file(ck, DEAD_LETTERS))])
            for part, pos in ck.positions.items():
                set_checkpoint(cur, p.name, part, pos)
    finally:
        cur.close()


