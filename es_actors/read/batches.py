"""Slicing a follower's batch by position: how a failing batch is bisected to the events
that fail (to park them, or to name the one a halted projection fails on)."""

from __future__ import annotations

from typing import Any, Callable

import pyarrow.compute as pc

from es_actors.storage.api import PartitionFollower
from es_actors.storage.local.follower import Batch


def bisect_batch(batch: Any, first: int, last: int) -> Batch:
    """Positions first..last of a batch (same source: rows, or sealed local files)."""
    if batch.table is not None:
        pos = batch.table.column("position")
        t = batch.table.filter(pc.and_(pc.greater_equal(pos, first), pc.less_equal(pos, last)))
        return Batch(batch.partition, first, last, table=t)
    return Batch(batch.partition, first, last, files=list(batch.files))


def apply_isolating(
    batch: Batch, apply: Callable[[Batch], int], park: Callable[[Batch, str], None], advanced: Callable[[int, int], None],
    attempts: int, backoff_s: float, sleep: Callable[[float], None], keep: tuple[type[BaseException], ...] = (),
) -> None:
    """Apply what can be applied of a failing batch, halves first; an event that fails alone
    (``attempts`` times, with backoff) is parked. ``advanced(last, applied)`` after each part
    that went in; exceptions of the types in ``keep`` go on (they are not the batch's failure)."""
    stack = [(batch.first, batch.last)]
    while stack:
        first, last = stack.pop()
        sub = bisect_batch(batch, first, last)
        error = None
        for attempt in range(attempts if first == last else 1):
            try:
                advanced(last, apply(sub))
                error = None
                break
            except keep:
                raise
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                if first == last and attempt + 1 < attempts:
                    sleep(min(backoff_s * 2**attempt, 2.0))
        if error is None:
            continue
        if first == last:
            park(sub, error)
            advanced(last, 0)
            continue
        mid = (first + last) // 2
        stack.append((mid + 1, last))  # the stack is LIFO: the first half goes first
        stack.append((first, mid))


class BoundedFollower:
    """A follower that stops at ``until``: a backfill task's share of one partition's log.

    Batches are cut at ``until``; after it, :meth:`poll` returns None as at the end of the log.
    ``head`` is ``until`` (what the task must reach), so the runner's lag counts the task's rest.
    """

    def __init__(self, follower: PartitionFollower, until: int) -> None:
        self.follower = follower
        self.until = until
        self.head = until

    @property
    def partition(self) -> int:
        return self.follower.partition

    @property
    def after(self) -> int:
        return self.follower.after

    def seek(self, after: int) -> None:
        self.follower.seek(after)

    def poll(self, max_rows: int = 1_000_000) -> Any:
        """The follower's next batch cut at ``until`` (a local :class:`Batch` or an object store's batch)."""
        left = self.until - self.follower.after
        if left <= 0:
            return None
        batch = self.follower.poll(min(max_rows, left))
        if batch is None or batch.last <= self.until:
            return batch
        self.follower.seek(self.until)
        return bisect_batch(batch, batch.first, self.until)
