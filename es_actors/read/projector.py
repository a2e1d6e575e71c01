"""The projector: one Ray actor per store that tails every partition into the read models.

It owns the read-model DuckDB file (ADR-004). A loop thread polls each (projection,
partition) from its checkpoint and applies batches (rows + checkpoint in one transaction).
A watch thread follows each partition's head on its own, so status, lag and "stalled"
stay true even when the loop is stuck in a handler. Ray calls (queries, waits, status,
pause/resume) run on other threads of the actor (``max_concurrency``), concurrently with
projection: DuckDB gives each query its own cursor and snapshot.

Failures: a batch that fails is retried with exponential backoff (``max_attempts``); then
the projection halts (status "halted", its error shown) or, with ``on_error="park"``, the
batch is bisected down to the failing events, which move to the dead-letter table while
the rest is applied. Either way other projections carry on.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import ray
from ray.util import metrics

from es_actors.config import StoreConfig
from es_actors.domain import Aggregate, DomainRegistry
from es_actors.errors import EsActorsError, ProjectionHalted, ProjectionTimeout
from es_actors.read.projection import Projection
from es_actors.read.queries import query_request
from es_actors.read.readmodel import ReadModel, bisect_batch
from es_actors.storage.follower import Batch, LogFollower
from es_actors.storage.layout import StoreDescriptor, StoreLayout
from es_actors.runtime.cluster import actor_get, plain_text
from es_actors.runtime.naming import NAMESPACE, projector_name
from es_actors.storage.reader import log_snapshot, recorded_at_us

log = logging.getLogger(__name__)

STATUSES = ("running", "paused", "retrying", "halted", "stalled")


@dataclass
class PartitionProgress:
    follower: LogFollower
    checkpoint: int
    head: int = 0
    last_progress: float = field(default_factory=time.monotonic)
    applied: int = 0
    rate: float = 0.0  # events/s, smoothed
    rate_mark: tuple[float, int] = (0.0, 0)
    lag_since_us: int | None = None  # recorded_at of the first unapplied event, when known


@dataclass
class ProjectionState:
    projection: type[Projection]
    partitions: dict[int, PartitionProgress]
    paused: bool = False
    halted: bool = False
    attempts: int = 0
    next_retry_at: float = 0.0
    last_error: str | None = None
    parked: int = 0
    #: Held while a batch (or a dead-letter retry) is applied on the projection's cursor:
    #: pause waits for it, and two threads never use the cursor at once.
    lock: threading.Lock = field(default_factory=threading.Lock)
    waiters: int = 0  # Ray calls waiting for ``lock``: the loop lets them have it between batches


class _ProjectionMetrics:
    def __init__(self) -> None:
        tags = ("projection", "partition")
        self.checkpoint = metrics.Gauge("es_actors_projection_checkpoint", "Last applied log position.", tag_keys=tags)
        self.head = metrics.Gauge("es_actors_projection_head", "Newest durable log position seen.", tag_keys=tags)
        self.lag_events = metrics.Gauge("es_actors_projection_lag_events", "Events not yet applied.", tag_keys=tags)
        self.lag_seconds = metrics.Gauge(
            "es_actors_projection_lag_seconds", "Age of the oldest event not yet applied.", tag_keys=tags
        )
        self.rate = metrics.Gauge("es_actors_projection_events_per_s", "Events applied per second.", tag_keys=tags)
        self.status = metrics.Gauge(
            "es_actors_projection_status", "1 for the projection's current status.", tag_keys=("projection", "status")
        )

    def publish(self, rows: list[dict[str, Any]]) -> None:
        worst: dict[str, str] = {}
        for r in rows:
            tags = {"projection": r["projection"], "partition": str(r["partition"])}
            self.checkpoint.set(r["checkpoint"], tags)
            self.head.set(r["head"], tags)
            self.lag_events.set(r["lag_events"], tags)
            self.lag_seconds.set(r["lag_seconds"], tags)
            self.rate.set(r["events_per_s"], tags)
            order = {s: i for i, s in enumerate(STATUSES)}
            if order[r["status"]] >= order.get(worst.get(r["projection"], "running"), 0):
                worst[r["projection"]] = r["status"]
        for name, status in worst.items():
            for s in STATUSES:
                self.status.set(1.0 if s == status else 0.0, {"projection": name, "status": s})


@ray.remote(max_restarts=-1, max_task_retries=0, num_cpus=0, max_concurrency=16)
class ProjectorActor:
    def __init__(
        self,
        root: str,
        partitions: int,
        aggregates: Sequence[type[Aggregate[Any]]],
        projections: Sequence[type[Projection]],
        config: StoreConfig,
    ) -> None:
        self.layout = StoreLayout(Path(root))
        self.partitions = partitions
        self.config = config
        self.registry = DomainRegistry(aggregates)
        self.rm = ReadModel(self.layout.root, self.registry, projections)
        self.states: dict[str, ProjectionState] = {}
        for p in projections:
            cps = self.rm.checkpoints(p.name)
            self.states[p.name] = ProjectionState(
                p,
                {i: PartitionProgress(LogFollower(self.layout, i, cps.get(i, 0)), cps.get(i, 0)) for i in range(partitions)},
                paused=self.rm.is_paused(p.name),
            )
            self.states[p.name].parked = self.rm.dead_letters(p.name).num_rows
        self._heads = [LogFollower(self.layout, i, 0) for i in range(partitions)]
        self._cond = threading.Condition()
        self._stop = False
        self._loop_error: str | None = None
        self._metrics = _ProjectionMetrics()
        from es_actors.runtime.process import tune_gc_for_a_long_lived_heap

        # Decoding a batch allocates one object per event and keeps them all alive until the
        # batch commits: with CPython's default thresholds the collector re-scanned that growing
        # heap for about half of a Python projection's time (py-spy, project_python_1m).
        tune_gc_for_a_long_lived_heap()
        self._loop = threading.Thread(target=self._run, name="projector-loop", daemon=True)
        self._watch = threading.Thread(target=self._watch_heads, name="projector-watch", daemon=True)
        self._loop.start()
        self._watch.start()

    # -- the loop ---------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop:
                worked = False
                for st in list(self.states.values()):
                    if st.paused or st.halted or time.monotonic() < st.next_retry_at:
                        continue
                    if st.waiters:
                        continue  # a call waits for this projection's cursor: let it have it
                    with st.lock:
                        if st.paused or st.halted or st.waiters:
                            continue  # paused meanwhile
                        worked |= self._round(st)
                if not worked:
                    with self._cond:
                        self._cond.wait(self.config.projector_poll_s)
        except BaseException as exc:  # a bug here must show as stalled, not vanish
            self._loop_error = f"projector loop stopped: {type(exc).__name__}: {exc}"
            log.exception("projector loop stopped")

    def _round(self, st: ProjectionState) -> bool:
        """One pass over a projection's partitions. Batches from the write-ahead tail (the live
        case: small, frequent) commit together in one transaction, each partition's checkpoint
        with them; sealed batches (catch-up: large) commit one by one. Any failure falls back
        to one batch at a time, where retry, halt and park apply."""
        polled: list[tuple[PartitionProgress, Batch]] = []
        for prog in st.partitions.values():
            batch = prog.follower.poll(st.projection.batch_size)
            if batch is None:
                if prog.checkpoint >= prog.head:
                    prog.last_progress = time.monotonic()
                continue
            polled.append((prog, batch))
        if not polled:
            return False
        live = [(prog, b) for prog, b in polled if b.table is not None]
        if len(live) > 1:
            try:
                n = self.rm.apply_many(st.projection, [b for _prog, b in live])
            except Exception:
                pass  # one at a time below, with the full failure handling
            else:
                for i, (prog, b) in enumerate(live):
                    self._advanced(st, prog, b.last, n if i == 0 else 0)
                self._recovered(st)
                polled = [(prog, b) for prog, b in polled if b.table is None]
        for prog, batch in polled:
            if not self._apply(st, prog, batch):
                for other, _b in polled:  # leave the rest for the retry
                    other.follower.seek(other.checkpoint)
                break
        return True

    def _recovered(self, st: ProjectionState) -> None:
        if st.attempts:
            st.attempts, st.last_error = 0, None

    def _apply(self, st: ProjectionState, prog: PartitionProgress, batch: Batch) -> bool:
        p = st.projection
        try:
            n = self.rm.apply(p, batch)
        except Exception as exc:
            prog.follower.seek(prog.checkpoint)
            st.attempts += 1
            st.last_error = f"partition {batch.partition} positions {batch.first}..{batch.last}: {type(exc).__name__}: {exc}"
            log.warning("projection %s: %s (attempt %d of %d)", p.name, st.last_error, st.attempts, p.max_attempts)
            if st.attempts < p.max_attempts:
                st.next_retry_at = time.monotonic() + p.retry_backoff_s * 2 ** (st.attempts - 1)
                return False
            if p.on_error == "halt":
                named = self.rm.locate_failure(p, batch)  # name the event in the error the halt shows
                if named is not None:
                    st.last_error = f"partition {batch.partition} positions {batch.first}..{batch.last}: {named}"
                    log.warning("projection %s halts: %s", p.name, st.last_error)
                st.halted = True
                self._notify()
                return False
            self._isolate(st, prog, batch)
            st.attempts = 0
            return True
        self._advanced(st, prog, batch.last, n)
        self._recovered(st)
        return True

    def _isolate(self, st: ProjectionState, prog: PartitionProgress, batch: Batch) -> None:
        """Apply what can be applied of a failing batch; park the events that fail alone."""
        p = st.projection
        stack = [(batch.first, batch.last)]
        while stack:
            first, last = stack.pop()
            sub = bisect_batch(batch, first, last)
            error = None
            for attempt in range(p.max_attempts if first == last else 1):
                try:
                    n = self.rm.apply(p, sub)
                    self._advanced(st, prog, last, n)
                    error = None
                    break
                except Exception as exc:
                    error = f"{type(exc).__name__}: {exc}"
                    if first == last and attempt + 1 < p.max_attempts:
                        time.sleep(min(p.retry_backoff_s * 2**attempt, 2.0))
            if error is None:
                continue
            if first == last:
                self.rm.park(p, sub, error, p.max_attempts)
                st.parked += 1
                self._advanced(st, prog, last, 0)
                continue
            mid = (first + last) // 2
            stack.append((mid + 1, last))  # the stack is LIFO: the first half goes first
            stack.append((first, mid))
        prog.follower.seek(prog.checkpoint)

    def _advanced(self, st: ProjectionState, prog: PartitionProgress, position: int, applied: int) -> None:
        with self._cond:
            prog.checkpoint = position
            prog.applied += applied
            prog.last_progress = time.monotonic()
            prog.lag_since_us = None
            self._cond.notify_all()

    @contextmanager
    def _exclusive(self, st: ProjectionState) -> Iterator[None]:
        """The projection's cursor, taken from the loop between two batches."""
        with self._cond:
            st.waiters += 1
        try:
            with st.lock:
                yield
        finally:
            with self._cond:
                st.waiters -= 1
            self._notify()

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # -- heads, lag, status -------------------------------------------------------------------

    def _watch_heads(self) -> None:
        while not self._stop:
            try:
                for i, f in enumerate(self._heads):
                    while (b := f.poll(10_000_000)) is not None:
                        pass
                    for st in self.states.values():
                        st.partitions[i].head = max(st.partitions[i].head, f.head)
                self._metrics.publish(self.status())
            except Exception:
                log.exception("projector watch failed")
            time.sleep(1.0)

    def _recorded_at_us(self, partition: int, position: int) -> int | None:
        """When the event at a position was recorded (for lag in seconds), if still sealed."""
        return recorded_at_us(self.layout, partition, position)

    def status(self) -> list[dict[str, Any]]:
        now_mono, now_us = time.monotonic(), time.time_ns() // 1000
        rows = []
        for name, st in self.states.items():
            for part, prog in st.partitions.items():
                head = max(prog.head, prog.checkpoint)
                lag = head - prog.checkpoint
                elapsed = now_mono - prog.rate_mark[0]
                if elapsed >= 1.0:
                    prog.rate = (prog.applied - prog.rate_mark[1]) / elapsed if prog.rate_mark[0] else 0.0
                    prog.rate_mark = (now_mono, prog.applied)
                lag_s = 0.0
                if lag > 0:
                    if prog.lag_since_us is None:
                        prog.lag_since_us = self._recorded_at_us(part, prog.checkpoint + 1) or now_us
                    lag_s = max(0.0, (now_us - prog.lag_since_us) / 1e6)
                if st.paused:
                    status = "paused"
                elif st.halted:
                    status = "halted"
                elif self._loop_error is not None or not self._loop.is_alive():
                    status = "stalled"
                elif st.attempts and now_mono < st.next_retry_at + 1.0:
                    status = "retrying"
                elif lag > 0 and now_mono - max(q.last_progress for q in st.partitions.values()) > self.config.projection_stall_s:
                    # behind, and the projection as a whole made no progress (a partition waiting
                    # its turn behind another's long batch is not stalled)
                    status = "stalled"
                else:
                    status = "running"
                rows.append(
                    {
                        "projection": name, "version": st.projection.version, "kind": st.projection.kind,
                        "partition": part, "checkpoint": prog.checkpoint, "head": head, "lag_events": lag,
                        "lag_seconds": round(lag_s, 3), "status": status,
                        "last_error": self._loop_error or st.last_error, "events_per_s": round(prog.rate, 1),
                        "applied": prog.applied, "dead_letters": st.parked,
                    }
                )
        return rows

    # -- Ray calls ------------------------------------------------------------------------------

    def ping(self) -> bool:
        return True

    def projections(self) -> dict[str, int]:
        """Name -> version of the projections this projector runs."""
        return {name: st.projection.version for name, st in self.states.items()}

    def wait_for(self, name: str, positions: dict[int, int], timeout_s: float) -> dict[int, int]:
        """Block until the projection's checkpoints reach ``positions`` (read-your-writes)."""
        st = self._state(name)
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                behind = {p: pos for p, pos in positions.items() if st.partitions[p].checkpoint < pos}
                if not behind:
                    return {p: st.partitions[p].checkpoint for p in positions}
                if st.halted:
                    raise ProjectionHalted(f"projection {name!r} is halted: {st.last_error}")
                left = deadline - time.monotonic()
                if left <= 0:
                    have = {p: st.partitions[p].checkpoint for p in behind}
                    raise ProjectionTimeout(
                        f"projection {name!r} did not reach {behind} within {timeout_s} s (it is at {have}; "
                        f"status {self._status_of(name)})"
                    )
                self._cond.wait(min(left, 0.5))

    def pause(self, name: str) -> None:
        """Returns once no batch of the projection is in flight: its read model and checkpoint
        then stay as they are until resume."""
        st = self._state(name)
        st.paused = True  # the loop takes no new batch...
        with self._exclusive(st):  # ...and the one being applied, if any, has committed (or rolled back)
            self.rm.set_paused(name, True)

    def resume(self, name: str) -> None:
        """Resume a paused projection, or retry a halted one from its checkpoint."""
        st = self._state(name)
        self.rm.set_paused(name, False)
        st.paused, st.halted, st.attempts, st.next_retry_at = False, False, 0, 0.0
        for prog in st.partitions.values():
            prog.last_progress = time.monotonic()
        self._notify()

    def dead_letters(self, name: str | None = None) -> Any:
        return self.rm.dead_letters(name)

    def retry_dead_letters(self, name: str) -> dict[str, int]:
        st = self._state(name)
        with self._exclusive(st):  # the loop applies batches on the same cursor
            out = self.rm.retry_dead_letters(st.projection)
            st.parked = self.rm.dead_letters(name).num_rows
        return out

    def query(self, sql: str, timeout_s: float | None = None, params: Any = None) -> Any:
        """A read-only query (checked before it runs, cancelled at its timeout: ``None`` is this
        projector's ``query_timeout_s``; result capped), on its own cursor."""
        req = query_request(sql, params, timeout_s, self.config)
        files, tail = log_snapshot(self.layout, self.partitions)
        return self.rm.query(req, files, tail)

    def close(self) -> None:
        self._stop = True
        self._notify()
        self._loop.join(timeout=30)
        self.rm.close()

    def _state(self, name: str) -> ProjectionState:
        st = self.states.get(name)
        if st is None:
            raise EsActorsError(f"no projection {name!r}; known: {sorted(self.states)}")
        return st

    def _status_of(self, name: str) -> str:
        order = {s: i for i, s in enumerate(STATUSES)}
        return max((r["status"] for r in self.status() if r["projection"] == name), key=order.__getitem__, default="?")


def start_projector(
    layout: StoreLayout,
    descriptor: StoreDescriptor,
    aggregates: Sequence[type[Aggregate[Any]]],
    projections: Sequence[Any],
    config: StoreConfig,
) -> Any:
    """The store's projector actor (joined if another client started it)."""
    def create() -> Any:
        return ProjectorActor.options(
            name=projector_name(layout, descriptor), namespace=NAMESPACE, get_if_exists=True
        ).remote(str(layout.root), descriptor.partitions, list(aggregates), list(projections), config)

    actor = create()
    deadline = time.monotonic() + config.retry_deadline_s
    while True:
        try:
            running = actor_get(actor.projections.remote())
            wanted = {p.name: p.version for p in projections}
            if running != wanted:  # joined a projector started with other projections: say so
                raise EsActorsError(
                    f"a projector already runs for {layout.root} with projections {running}; this open asks for "
                    f"{wanted}. Close the store that started it (or open this one without projections to use it)."
                )
            return actor
        except EsActorsError as exc:
            if "already runs" not in str(exc):
                ray.kill(actor, no_restart=True)
            raise
        except ray.exceptions.ActorUnavailableError:  # joined while it restarts after a crash
            if time.monotonic() >= deadline:
                raise EsActorsError("the projector did not come back in time") from None
            time.sleep(0.1)
        except ray.exceptions.ActorDiedError as exc:
            if "ray.kill" not in str(exc) or time.monotonic() >= deadline:
                ray.kill(actor, no_restart=True)
                raise EsActorsError(f"the projector did not start: {plain_text(str(exc))}") from None
            time.sleep(0.1)  # the store was closed a moment ago: its projector's name is being released
            actor = create()
        except ray.exceptions.RayActorError as exc:
            # An actor whose constructor failed keeps its name until killed: without this, every
            # later open of the store (fixed projections too) would join it and fail the same way.
            ray.kill(actor, no_restart=True)
            raise EsActorsError(f"the projector did not start: {plain_text(str(exc))}") from None
