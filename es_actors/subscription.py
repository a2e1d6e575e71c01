"""Catch-up subscriptions: read the log from a checkpoint, then keep following it.

For integrations outside DuckDB (publishing to a broker, feeding another service). The
consumer owns its checkpoint, one position per partition::

    sub = store.subscribe(checkpoint=load(), order="merged")
    for event in sub:                 # RecordedEvent, upcast to current types
        publish(event)
        save(sub.checkpoint)          # {partition: last position handled}

Delivery is at least once: after a crash, events after the saved checkpoint come again.
``order="partition"`` gives each partition's events in log order (partitions interleaved
batch by batch); ``order="merged"`` gives one stream ordered by (recorded_at, partition,
position). While following, an event is released in merged order once every partition has
a later one or it is older than ``merge_grace_s``: a partition that commits later than that
after a quiet spell can appear slightly out of recorded_at order (never out of its own
order, never twice, never skipped).
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from typing import Any, Iterator, Sequence

from .domain import DomainRegistry
from .errors import EsActorsError
from .records import COL, RecordedEvent, table_to_rows
from .storage.follower import LogFollower
from .storage.layout import StoreLayout


class Subscription:
    def __init__(
        self,
        layout: StoreLayout,
        partitions: int,
        registry: DomainRegistry,
        checkpoint: dict[int, int],
        *,
        order: str = "partition",
        follow: bool = True,
        event_types: Sequence[str] | None = None,
        poll_s: float = 0.05,
        merge_grace_s: float = 0.5,
        batch_rows: int = 10_000,
    ) -> None:
        if order not in ("partition", "merged"):
            raise EsActorsError(f"order must be 'partition' or 'merged', not {order!r}")
        unknown = set(checkpoint) - set(range(partitions))
        if unknown:
            raise EsActorsError(f"checkpoint names partitions {sorted(unknown)}; the store has 0..{partitions - 1}")
        self.registry = registry
        self.order = order
        self.follow = follow
        self.event_types = set(event_types) if event_types else None
        self.poll_s = poll_s
        self.merge_grace_us = int(merge_grace_s * 1e6)
        self.batch_rows = batch_rows
        self.checkpoint: dict[int, int] = {p: int(checkpoint.get(p, 0)) for p in range(partitions)}
        self._followers = {p: LogFollower(layout, p, self.checkpoint[p]) for p in range(partitions)}
        self._closed = False

    def close(self) -> None:
        """Stop iterating (the next ``next()`` ends the loop)."""
        self._closed = True

    def __iter__(self) -> Iterator[RecordedEvent]:
        return self._merged() if self.order == "merged" else self._by_partition()

    def _poll_rows(self, p: int) -> list[tuple[Any, ...]]:
        batch = self._followers[p].poll(self.batch_rows)
        return [] if batch is None else table_to_rows(batch.to_table())

    def _events(self, row: tuple[Any, ...]) -> list[RecordedEvent]:
        events = RecordedEvent.from_row(row, self.registry)
        if self.event_types is not None:
            events = [e for e in events if e.event_type in self.event_types]
        return events

    def _by_partition(self) -> Iterator[RecordedEvent]:
        while not self._closed:
            got = False
            for p in self._followers:
                for row in self._poll_rows(p):
                    got = True
                    for e in self._events(row):
                        self.checkpoint[p] = row[COL["position"]]
                        yield e
                        if self._closed:
                            return
                    self.checkpoint[p] = row[COL["position"]]
            if not got:
                if not self.follow:
                    return
                time.sleep(self.poll_s)

    def _merged(self) -> Iterator[RecordedEvent]:
        buffers: dict[int, deque[tuple[Any, ...]]] = {p: deque() for p in self._followers}
        heap: list[tuple[int, int, int]] = []  # (recorded_at, partition, position) of each buffer's head
        exhausted: set[int] = set()
        while not self._closed:
            for p, buf in buffers.items():
                if not buf:
                    rows = self._poll_rows(p)
                    if rows:
                        buf.extend(rows)
                        r = buf[0]
                        heapq.heappush(heap, (r[COL["recorded_at"]], p, r[COL["position"]]))
                        exhausted.discard(p)
                    else:
                        exhausted.add(p)
            if not heap:
                if not self.follow:
                    return
                time.sleep(self.poll_s)
                continue
            released = False
            now_us = time.time_ns() // 1000
            while heap:
                t, p, _pos = heap[0]
                all_have = all(buffers[q] for q in buffers)
                if not (all_have or (not self.follow and exhausted >= {q for q in buffers if not buffers[q]})
                        or t < now_us - self.merge_grace_us):
                    break
                heapq.heappop(heap)
                row = buffers[p].popleft()
                for e in self._events(row):
                    self.checkpoint[p] = row[COL["position"]]
                    yield e
                    if self._closed:
                        return
                self.checkpoint[p] = row[COL["position"]]
                released = True
                if buffers[p]:
                    r = buffers[p][0]
                    heapq.heappush(heap, (r[COL["recorded_at"]], p, r[COL["position"]]))
                else:
                    break  # refill this partition before deciding the next event
            if not released and self.follow:
                time.sleep(self.poll_s)
