"""What the projection runner knows of each projection and partition, and the status rows
(checkpoint, head, lag, rate, status) it reports from that.

Kept apart from the loop so status stays one pure function of the runner's state and a
clock: the same rows feed ``Store.projection_status()`` and the projector's metrics.
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from dataclasses import dataclass, field
from typing import Any, Callable


from es_actors.read.projection import Projection
from es_actors.storage.layout import StoreLayout
from es_actors.storage.api import PartitionFollower, StorageBackend
from es_actors.storage.backends import open_backend, recorded_at

#: Every status a (projection, partition) can show, from best to worst.
STATUSES = ("running", "backfilling", "paused", "retrying", "halted", "stalled")
_ORDER = {s: i for i, s in enumerate(STATUSES)}


@dataclass
class PartitionProgress:
    """One projection's position in one partition's log."""

    follower: PartitionFollower
    checkpoint: int
    last_progress: float
    head: int = 0
    applied: int = 0
    rate: float = 0.0  # events/s, smoothed
    rate_mark: tuple[float, int] = (0.0, 0)
    lag_since_us: int | None = None  # recorded_at of the first unapplied event, when known


@dataclass
class ProjectionState:
    """One projection as the runner drives it: per-partition progress, pause/halt, retries."""

    projection: type[Projection]
    partitions: dict[int, PartitionProgress]
    paused: bool = False
    halted: bool = False
    attempts: int = 0
    next_retry_at: float = 0.0
    last_error: str | None = None
    parked: int = 0
    #: Held while a batch (or a dead-letter retry) is applied on the projection's cursor:
    #: two threads never use the cursor at once.
    lock: threading.Lock = field(default_factory=threading.Lock)
    waiters: int = 0  # calls waiting for ``lock``: the loop lets them have it between batches
    #: Caught up by a parallel backfill into its own tables (ADR-016): the loop leaves it alone.
    backfilling: bool = False
    #: Held around a batch's COMMIT and around pause's mark: a batch commits only if no pause
    #: came since it started (``generation`` unchanged), so pause need not wait for a hung handler.
    gate: threading.Lock = field(default_factory=threading.Lock)
    generation: int = 0
    batch_generation: int = 0  # ``generation`` when the batch in flight started
    batch_since_us: int | None = None  # wall clock (µs) when the batch in flight started; None: none is
    #: The projection's own loop thread (ProjectionRunner.run), its wake-up, and why it died.
    thread: threading.Thread | None = None
    wake: threading.Event = field(default_factory=threading.Event)
    removed: bool = False
    loop_error: str | None = None


def batch_since(st: ProjectionState) -> str:
    """When the batch in flight of ``st`` started (UTC, ISO), for the messages that name a stall."""
    us = st.batch_since_us
    if us is None:
        return "a moment ago"
    return datetime.fromtimestamp(us / 1e6, tz=timezone.utc).isoformat(timespec="seconds")


class RecordedAt:
    """(partition, position) -> when the event there was recorded (µs), read from the log once:
    projections at the same checkpoint share it, and a position's event does not change. An
    unknown answer (None) is not kept."""

    def __init__(self, layout: StoreLayout, size: int = 4096, backend: StorageBackend | None = None) -> None:
        """``backend``: the runner's, so its reads share the followers' segment cache."""
        self.layout, self.size = layout, size
        self._backend = backend if backend is not None else open_backend(layout.uri)
        self._known: dict[tuple[int, int], int] = {}

    def __call__(self, partition: int, position: int) -> int | None:
        found = self._known.get((partition, position))
        if found is None:
            found = recorded_at(self.layout, self._backend, partition, position)
            if found is not None:
                if len(self._known) >= self.size:
                    self._known.clear()
                self._known[(partition, position)] = found
        return found


def worst_status(statuses: list[str]) -> str:
    """The status that says most about a projection: the worst of its partitions'."""
    return max(statuses, key=_ORDER.__getitem__, default="?")


def status_rows(
    states: dict[str, ProjectionState],
    now_mono: float,
    now_us: int,
    stall_s: float,
    loop_down: bool,
    loop_error: str | None,
    recorded_at: Callable[[int, int], int | None],
) -> list[dict[str, Any]]:
    """One row per (projection, partition): where it is, how far behind, and its status."""
    rows = []
    for name, st in states.items():
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
                    prog.lag_since_us = recorded_at(part, prog.checkpoint + 1) or now_us
                lag_s = max(0.0, (now_us - prog.lag_since_us) / 1e6)
            if st.paused:
                status = "paused"
            elif st.halted:
                status = "halted"
            elif loop_down or st.loop_error:  # its loop died (its error shown) or was stopped
                status = "stalled"
            elif st.backfilling:  # parallel tasks catch it up; its checkpoint moves when they are done
                status = "backfilling"
            elif st.attempts and now_mono < st.next_retry_at + 1.0:
                status = "retrying"
            elif lag > 0 and now_mono - max(q.last_progress for q in st.partitions.values()) > stall_s:
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
                    "last_error": loop_error or st.loop_error or st.last_error, "events_per_s": round(prog.rate, 1),
                    "applied": prog.applied, "dead_letters": st.parked,
                }
            )
    return rows
