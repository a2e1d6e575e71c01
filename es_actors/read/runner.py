"""The projection runner: follows every partition's log into the read models, free of Ray.

One runner owns the read-model DuckDB file of a store (ADR-004). :meth:`ProjectionRunner.step`
polls each (projection, partition) from its checkpoint and applies batches (rows and
checkpoint in one transaction); :meth:`run` gives each projection its own thread that does
its rounds until :meth:`stop`, on its own cursor (ADR-017): a hung or slow handler stalls
only its projection. Heads are followed apart from the loops (:meth:`refresh_heads`), so
status, lag and "stalled" stay true while a loop is stuck in a handler. Resume, waits and
dead-letter retries may be called from other threads: each takes the projection's cursor
between two batches, waiting at most ``CURSOR_WAIT_S`` (then :class:`ProjectionStalled` names
the projection stuck in its handler). Pause, remove and close do not wait for a hung handler:
they mark the projection, and a batch in flight is rolled back at its commit instead (the
commit gate).

Failures: a batch that fails is retried with exponential backoff (``max_attempts``); then
the projection halts (status "halted", its error shown) or, with ``on_error="park"``, the
batch is bisected down to the failing events, which move to the dead-letter table while
the rest is applied. Either way other projections carry on.

The projector actor (es_actors.read.projector_actor) only hosts a runner; time and sleeping
come from a :class:`Clock`, so the whole of this runs in a test without Ray.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Sequence

from es_actors.config import StoreConfig
from es_actors.domain import DomainRegistry
from es_actors.errors import EsActorsError, ProjectionHalted, ProjectionStalled, ProjectionTimeout
from es_actors.read.batches import BoundedFollower, apply_isolating
from es_actors.read.projection_loops import Clock, ProjectionLoops, SystemClock
from es_actors.read.progress import PartitionProgress, ProjectionState, RecordedAt, status_rows, worst_status
from es_actors.read.progress import batch_since as _since
from es_actors.read.projection import Projection
from es_actors.read.readmodel import BatchWithdrawn, ReadModel
from es_actors.storage.backends import open_backend
from es_actors.storage.local.follower import Batch
from es_actors.storage.layout import StoreLayout

log = logging.getLogger(__name__)

#: How long pause waits for a batch in flight to end before it returns anyway (that batch is
#: then rolled back at its commit, whenever its handler returns).
PAUSE_WAIT_S = 1.0
#: How long a call from another thread waits for a projection's cursor (its batch in flight to
#: end) before it refuses with ProjectionStalled: a hung handler never blocks a caller for long.
CURSOR_WAIT_S = 5.0
#: How long close waits for the loops; a loop still in a handler then is left (a daemon thread)
#: and its batch never commits.
CLOSE_WAIT_S = 3.0


class ProjectionRunner:
    """Applies each projection's batches from every partition, with retry, park, pause and status."""

    def __init__(
        self,
        layout: StoreLayout,
        partitions: int,
        registry: DomainRegistry,
        projections: Sequence[type[Projection]],
        config: StoreConfig,
        clock: Clock | None = None,
        recorded_at: Callable[[int, int], int | None] | None = None,
        read_model: ReadModel | None = None,
        bounds: Mapping[int, tuple[int, int]] | None = None,
    ) -> None:
        """``read_model`` defaults to the store's read-model file. ``bounds`` (partition -> (after,
        until)) limits the runner to those partitions' positions after..until: a backfill task."""
        self.layout = layout
        self.partitions = partitions
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.read_model = (
            read_model if read_model is not None else ReadModel(layout.read_model_root, registry, projections)
        )
        #: The store's log on its backend (local disk or object storage): one object, so followers of one
        #: partition can share what they read (ADR-019).
        self.backend = open_backend(layout.uri, config)
        #: (partition, position) -> recorded_at in µs, for lag in seconds.
        self._recorded_at = recorded_at or RecordedAt(layout, backend=self.backend)
        self.bounds = dict(bounds) if bounds is not None else None
        self.states: dict[str, ProjectionState] = {}
        for p in projections:
            self._add_state(getattr(self.read_model, "runs_as", {}).get(p.name, p))  # after a cutover: the build (ADR-018)
        self._heads = [self.backend.head_watch(i) for i in range(partitions)]
        self._cond = threading.Condition()
        self._loops = ProjectionLoops(self._step_one, config.projector_poll_s)

    def _add_state(self, p: type[Projection]) -> None:
        cps = self.read_model.checkpoints(p.name)
        now = self.clock.monotonic()
        progress: dict[int, PartitionProgress] = {}
        for i in range(self.partitions) if self.bounds is None else sorted(self.bounds):
            if self.bounds is None:
                start = cps.get(i, 0)
                follower: Any = self.backend.follower(i, start)
            else:
                after, until = self.bounds[i]
                start = cps.get(i, after)
                follower = BoundedFollower(self.backend.follower(i, start), until)
            progress[i] = PartitionProgress(follower, start, last_progress=now)
        st = self.states[p.name] = ProjectionState(
            p, progress, paused=self.read_model.is_paused(p.name), parked=self.read_model.dead_letters(p.name).num_rows,
        )
        self.read_model.commit_gates[p.name] = lambda: self._commit_gate(st)

    def add_projection(self, p: type[Projection]) -> None:
        """Run one more projection (already registered in the read model, e.g. a version a backfill
        built): it follows from its committed checkpoints."""
        self.read_model.add(p)
        with self._cond:
            self._add_state(p)
            self._cond.notify_all()
        self._loops.added(self.states[p.name])

    def remove_projection(self, name: str, wait_s: float = PAUSE_WAIT_S) -> None:
        """Stop running a projection (if it runs); its tables stay. It does not wait for a hung
        handler: a batch still in flight after ``wait_s`` never commits (the commit gate), and
        its thread ends when the handler returns."""
        st = self.states.get(name)
        if st is None:
            return
        self._withdraw(st)  # its loop takes no new batch, the one in flight does not commit
        with self._cond:
            self.states.pop(name, None)
        if st.lock.acquire(timeout=wait_s):
            try:
                self.read_model.remove(name)
            finally:
                st.lock.release()
            self._loops.join([st.thread], timeout_s=wait_s)
        else:  # its cursor stays open for the handler that still uses it (closed with the file)
            self.read_model.remove(name, close=False)
            log.warning("projection %s removed while a batch was in its handler (since %s): it will not commit",
                        name, _since(st))

    def _withdraw(self, st: ProjectionState) -> None:
        """No batch of it commits from here on (the one in flight is rolled back at its commit)."""
        with st.gate:
            st.removed = True
            st.generation += 1
        self._wake(st)

    def set_backfilling(self, name: str, on: bool) -> None:
        """Leave a projection to a parallel catch-up (the loop takes no batch of it), or take it back."""
        st = self._state(name)
        st.backfilling = on
        if not on:
            now = self.clock.monotonic()
            for prog in st.partitions.values():
                prog.last_progress = now
        self._wake(st)

    @contextmanager
    def exclusive(self, name: str, timeout_s: float | None = None) -> Iterator[ProjectionState]:
        """The projection's cursor, once no batch of it is in flight (e.g. to install a catch-up);
        with ``timeout_s``, :class:`ProjectionStalled` if a batch stays in its handler longer."""
        st = self._state(name)
        with self._exclusive(st, timeout_s):
            yield st

    def advance_to(self, name: str, positions: Mapping[int, int], applied: Mapping[int, int] | None = None) -> None:
        """After a parallel catch-up committed the projection's checkpoints (and applied events,
        per partition): follow on from them."""
        st = self._state(name)
        for part, pos in positions.items():
            prog = st.partitions.get(part)
            if prog is not None and pos > prog.checkpoint:
                prog.follower.seek(pos)
                self._advanced(prog, pos, (applied or {}).get(part, 0))

    def reached(self, name: str) -> bool:
        """Whether a bounded runner's projection has reached the end of every partition's bounds."""
        if self.bounds is None:
            return False
        return all(
            max(prog.checkpoint, prog.follower.after) >= self.bounds[i][1] for i, prog in self._state(name).partitions.items()
        )

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        """Start each projection's loop thread (one more per :meth:`add_projection`) and return
        at :meth:`stop` (:meth:`close` joins the threads)."""
        self._loops.run(lambda: list(self.states.values()))

    def step(self) -> bool:
        """One pass over every projection that may run now, on the caller's thread (tests and
        backfill tasks drive a runner so); True if any batch was taken."""
        worked = False
        for st in list(self.states.values()):
            worked |= self._step_one(st)
        return worked

    def _step_one(self, st: ProjectionState) -> bool:
        if st.paused or st.halted or st.backfilling or st.removed or self.clock.monotonic() < st.next_retry_at:
            return False
        if st.waiters:
            return False  # a call waits for this projection's cursor: let it have it
        with st.lock:
            if st.paused or st.halted or st.waiters or st.removed:
                return False  # paused meanwhile
            st.batch_generation = st.generation
            st.batch_since_us = self.clock.wall_us()
            try:
                return self._round(st)
            except BatchWithdrawn:  # paused while in flight: rolled back; from the checkpoint after resume
                for prog in st.partitions.values():
                    prog.follower.seek(prog.checkpoint)
                return True
            finally:
                st.batch_since_us = None

    @contextmanager
    def _commit_gate(self, st: ProjectionState) -> Iterator[bool]:
        """Around a batch's COMMIT: whether it may (no pause since the batch started)."""
        with st.gate:
            yield not st.paused and not st.removed and st.generation == st.batch_generation

    def stop(self) -> None:
        self._loops.stop(list(self.states.values()))
        self._notify()

    def _round(self, st: ProjectionState) -> bool:
        """One pass over a projection's partitions. Batches from the write-ahead tail (the live
        case: small, frequent) commit together in one transaction, each partition's checkpoint
        with them; sealed batches (catch-up: large) commit one by one. Any failure falls back
        to one batch at a time, where retry, halt and park apply."""
        polled: list[tuple[PartitionProgress, Any]] = []  # local Batch or an object store's TableBatch
        for prog in st.partitions.values():
            batch = prog.follower.poll(st.projection.batch_size)
            if batch is None:
                if prog.checkpoint >= prog.head:
                    prog.last_progress = self.clock.monotonic()
                continue
            polled.append((prog, batch))
        if not polled:
            return False
        live = [(prog, b) for prog, b in polled if b.from_tail]
        if len(live) > 1:
            try:
                n = self.read_model.apply_many(st.projection, [b for _prog, b in live])
            except BatchWithdrawn:
                raise
            except Exception:
                pass  # one at a time below, with the full failure handling
            else:
                for i, (prog, b) in enumerate(live):
                    self._advanced(prog, b.last, n if i == 0 else 0)
                self._recovered(st)
                polled = [(prog, b) for prog, b in polled if not b.from_tail]
        for prog, batch in polled:
            if not self._apply(st, prog, batch):
                for other, _b in polled:  # leave the rest for the retry
                    other.follower.seek(other.checkpoint)
                break
        return True

    def _recovered(self, st: ProjectionState) -> None:
        """A batch went in: the projection is well again, whatever failed before (a retry, a
        resumed halt, a parallel catch-up that fell back, a parked event)."""
        st.attempts, st.last_error = 0, None

    def _apply(self, st: ProjectionState, prog: PartitionProgress, batch: Batch) -> bool:
        p = st.projection
        try:
            n = self.read_model.apply(p, batch)
        except BatchWithdrawn:
            raise
        except Exception as exc:
            prog.follower.seek(prog.checkpoint)
            st.attempts += 1
            st.last_error = f"partition {batch.partition} positions {batch.first}..{batch.last}: {type(exc).__name__}: {exc}"
            log.warning("projection %s: %s (attempt %d of %d)", p.name, st.last_error, st.attempts, p.max_attempts)
            if st.attempts < p.max_attempts:
                st.next_retry_at = self.clock.monotonic() + p.retry_backoff_s * 2 ** (st.attempts - 1)
                return False
            if p.on_error == "halt":
                named = self.read_model.locate_failure(p, batch)  # name the event in the error the halt shows
                if named is not None:
                    st.last_error = f"partition {batch.partition} positions {batch.first}..{batch.last}: {named}"
                    log.warning("projection %s halts: %s", p.name, st.last_error)
                st.halted = True
                self._notify()  # waits on it fail now
                return False
            self._isolate(st, prog, batch)
            self._recovered(st)  # the rest went in; the parked events keep their error as dead letters
            return True
        self._advanced(prog, batch.last, n)
        self._recovered(st)
        return True

    def _isolate(self, st: ProjectionState, prog: PartitionProgress, batch: Batch) -> None:
        """Apply what can be applied of a failing batch; park the events that fail alone."""
        p = st.projection

        def park(sub: Batch, error: str) -> None:
            self.read_model.park(p, sub, error, p.max_attempts)
            st.parked += 1

        apply_isolating(
            batch, lambda sub: self.read_model.apply(p, sub), park, lambda last, n: self._advanced(prog, last, n),
            p.max_attempts, p.retry_backoff_s, self.clock.sleep, keep=(BatchWithdrawn,),
        )
        prog.follower.seek(prog.checkpoint)

    def _advanced(self, prog: PartitionProgress, position: int, applied: int) -> None:
        with self._cond:
            prog.checkpoint = position
            prog.applied += applied
            prog.last_progress = self.clock.monotonic()
            prog.lag_since_us = None
            self._cond.notify_all()

    @contextmanager
    def _exclusive(self, st: ProjectionState, timeout_s: float | None = None) -> Iterator[None]:
        """The projection's cursor, taken from the loop between two batches (refused after
        ``timeout_s`` if given: the projection is stuck in its handler)."""
        with self._cond:
            st.waiters += 1
        try:
            if not st.lock.acquire(timeout=-1 if timeout_s is None else timeout_s):
                raise ProjectionStalled(
                    f"{st.projection.name} is stalled in its handler since {_since(st)} (waited {timeout_s:g} s "
                    "for its batch in flight to end); pause it or fix its handler, then try again"
                )
            try:
                yield
            finally:
                st.lock.release()
        finally:
            with self._cond:
                st.waiters -= 1
            self._wake(st)

    def _wake(self, st: ProjectionState) -> None:
        """Wake the projection's loop (it has work, or a call left its cursor) and the waits."""
        st.wake.set()
        self._notify()

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # -- heads, lag, status -------------------------------------------------------------------

    def refresh_heads(self) -> None:
        """Follow each partition's durable head (apart from the loop: a stuck handler does not
        hide lag)."""
        for i, watch in enumerate(self._heads):
            head = watch.refresh()
            for st in list(self.states.values()):
                prog = st.partitions.get(i)
                if prog is not None:
                    prog.head = max(prog.head, head)

    def status(self) -> list[dict[str, Any]]:
        """One row per (projection, partition): checkpoint, head, lag, rate, status, error."""
        return status_rows(
            self.states, self.clock.monotonic(), self.clock.wall_us(), self.config.projection_stall_s,
            loop_down=self._loops.error is not None or self._loops.exited, loop_error=self._loops.error,
            recorded_at=self._recorded_at,
        )

    def status_of(self, name: str) -> str:
        return worst_status([r["status"] for r in self.status() if r["projection"] == name])

    # -- calls from other threads ------------------------------------------------------------

    def projections(self) -> dict[str, int]:
        """Name -> version of the projections this runner runs."""
        return {name: st.projection.version for name, st in self.states.items()}

    def wait_for(self, name: str, positions: dict[int, int], timeout_s: float) -> dict[int, int]:
        """Block until the projection's checkpoints reach ``positions`` (read-your-writes)."""
        st = self._state(name)
        deadline = self.clock.monotonic() + timeout_s
        with self._cond:
            while True:
                behind = {p: pos for p, pos in positions.items() if st.partitions[p].checkpoint < pos}
                if not behind:
                    return {p: st.partitions[p].checkpoint for p in positions}
                if st.halted:
                    raise ProjectionHalted(f"projection {name!r} is halted: {st.last_error}")
                left = deadline - self.clock.monotonic()
                if left <= 0:
                    have = {p: st.partitions[p].checkpoint for p in behind}
                    raise ProjectionTimeout(
                        f"projection {name!r} did not reach {behind} within {timeout_s} s (it is at {have}; "
                        f"status {self.status_of(name)})"
                    )
                self._cond.wait(min(left, 0.5))

    def pause(self, name: str, wait_s: float = PAUSE_WAIT_S) -> None:
        """From its return the projection's read model and checkpoint stay as they are until
        resume (also after a restart). It returns promptly even when the projection's handler
        hangs: a batch still in flight is rolled back at its commit (the commit gate), after
        pause waited up to ``wait_s`` for it to end."""
        st = self._state(name)
        with st.gate:  # no batch of it commits from here on...
            st.paused = True
            st.generation += 1
        self.read_model.set_paused(name, True)
        if st.lock.acquire(timeout=wait_s):  # ...and the one in flight, if any, has most likely ended
            st.lock.release()

    def resume(self, name: str) -> None:
        """Resume a paused projection, or retry a halted one from its checkpoint."""
        st = self._state(name)
        self.read_model.set_paused(name, False)
        with st.gate:
            st.paused, st.halted, st.attempts, st.next_retry_at = False, False, 0, 0.0
        for prog in st.partitions.values():
            prog.last_progress = self.clock.monotonic()
        self._wake(st)

    def dead_letters(self, name: str | None = None) -> Any:
        return self.read_model.dead_letters(name)

    def retry_dead_letters(self, name: str) -> dict[str, int]:
        """Apply each parked event of the projection again; a success leaves the dead letters."""
        st = self._state(name)
        with self._exclusive(st, CURSOR_WAIT_S):  # the loop applies batches on the same cursor
            out = self.read_model.retry_dead_letters(st.projection)
            st.parked = self.read_model.dead_letters(name).num_rows
        return out

    def close(self, timeout_s: float = CLOSE_WAIT_S, loop: threading.Thread | None = None) -> None:
        """Stop the loops (joining the thread of :meth:`run`, if given, and each projection's,
        within ``timeout_s`` in all) and close the read model. A loop still in a handler then is
        not waited for: its batch never commits (the commit gate), its thread is a daemon."""
        states = list(self.states.values())
        self.stop()
        self._loops.join([loop] + [st.thread for st in states], timeout_s)
        for st in states:
            if st.thread is not None and st.thread.is_alive():
                log.warning("projection %s: closed while a batch was in its handler (since %s); it will not commit",
                            st.projection.name, _since(st))
                self._withdraw(st)
        self.read_model.close()

    def _state(self, name: str) -> ProjectionState:
        st = self.states.get(name) or next(  # a declared name that runs as its version's build (ADR-018)
            (s for s in self.states.values() if getattr(s.projection, "declared_as", None) == name), None)
        if st is None:
            raise EsActorsError(f"no projection {name!r}; known: {sorted(self.states)}")
        return st
