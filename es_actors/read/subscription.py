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

Rows are read a sealed segment's worth at a time and decoded into events a slice of
``decode_rows`` at a time (:class:`~es_actors.codecs.event_batch.EventBatch`): an event that
cannot be read raises :class:`~es_actors.domain.upcasting.UnreadableEvent`, naming it, when
iteration reaches its slice (the events before the slice have been delivered; none is skipped).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Iterator, Sequence

from es_actors.domain import DomainRegistry
from es_actors.errors import EsActorsError
from es_actors.codecs.event_batch import EventBatch
from es_actors.codecs.views import RecordedEvent
from es_actors.storage.backends import open_backend
from es_actors.storage.layout import StoreLayout


WINDOW_ROWS = 5_000  # rows of a read turned into Python values at a time (as fast per row as all at once)


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
        batch_rows: int = 50_000,
        decode_rows: int = 100,
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
        self.batch_rows = batch_rows  # rows read at a time: a sealed segment's worth (a segment is read once)
        # Rows decoded at a time: a slice's objects (~3 tracked per event) stay under the cyclic GC's
        # first threshold (700), so a consumer that drops events as it goes triggers no collection
        # at all (1,000 rows: full collections took ~40% of a catch-up's CPU time).
        self.decode_rows = decode_rows
        self._pending: dict[int, tuple[EventBatch, int, int]] = {}  # partition -> (batch, next row, its last position)
        self.checkpoint: dict[int, int] = {p: int(checkpoint.get(p, 0)) for p in range(partitions)}
        backend = open_backend(layout.uri)
        self._followers = {p: backend.follower(p, self.checkpoint[p]) for p in range(partitions)}
        self._closed = False

    def close(self) -> None:
        """Stop iterating (the next ``next()`` ends the loop)."""
        self._closed = True

    def __iter__(self) -> Iterator[RecordedEvent]:
        return self._merged() if self.order == "merged" else self._by_partition()

    def _poll(self, p: int) -> tuple[list[RecordedEvent], int, bool] | None:
        """The next slice of partition ``p``'s log as events (upcast, filtered), the last position
        it covers, and whether each of its events has a position of its own (no row split)."""
        pending = self._pending.pop(p, None)
        if pending is None:
            batch = self._followers[p].poll(self.batch_rows)
            if batch is None:
                return None
            table = batch.to_table()
            pending = (EventBatch(table, self.registry, self.event_types, WINDOW_ROWS), 0, batch.last)
        rows, start, last = pending
        stop = min(start + self.decode_rows, rows.num_rows)
        events, simple = rows.events(start, stop)
        if stop < rows.num_rows:  # the rest later; this slice ends at its last row
            self._pending[p] = (rows, stop, last)
            last = rows.position(stop - 1)
        return events, last, simple

    def _by_partition(self) -> Iterator[RecordedEvent]:
        checkpoint = self.checkpoint
        while not self._closed:
            got = False
            for p in self._followers:
                while True:  # a read of the partition (a sealed segment's worth) in slices, then the next partition
                    polled = self._poll(p)
                    if polled is None:
                        break
                    got = True
                    events, last, simple = polled
                    for i in range(len(events)):
                        e = events[i]
                        events[i] = None  # type: ignore[call-overload]  # held by the consumer only: it dies young
                        checkpoint[p] = e[1] if simple else _handled(e, events[i + 1] if i + 1 < len(events) else None)
                        yield e
                        if self._closed:
                            return
                    checkpoint[p] = last  # filtered events at the end count as handled
                    if p not in self._pending:
                        break
            if not got:
                if not self.follow:
                    return
                time.sleep(self.poll_s)

    def _merged(self) -> Iterator[RecordedEvent]:
        buffers: dict[int, deque[RecordedEvent]] = {p: deque() for p in self._followers}
        lasts: dict[int, int] = {}  # last position polled per partition (covers filtered events)
        exhausted: set[int] = set()
        while not self._closed:
            for p, buf in buffers.items():
                if not buf:
                    polled = self._poll(p)
                    while polled is not None and not polled[0]:  # only filtered events: move on
                        self.checkpoint[p] = polled[1]
                        polled = self._poll(p)
                    if polled is not None:
                        buf.extend(polled[0])
                        lasts[p] = polled[1]
                        exhausted.discard(p)
                    else:
                        exhausted.add(p)
            heads = [(b[0].recorded_at_us, p, b[0].position) for p, b in buffers.items() if b]
            if not heads:
                if not self.follow:
                    return
                time.sleep(self.poll_s)
                continue
            now_us = time.time_ns() // 1000
            all_have = len(heads) == len(buffers)
            t, p, _pos = min(heads)
            if not (all_have or (not self.follow) or t < now_us - self.merge_grace_us):
                time.sleep(self.poll_s)
                continue
            e = buffers[p].popleft()
            self.checkpoint[p] = _handled(e, buffers[p][0] if buffers[p] else None)
            yield e
            if self._closed:
                return
            if not buffers[p] and p in lasts:
                self.checkpoint[p] = lasts[p]


def _handled(e: RecordedEvent, following: RecordedEvent | None) -> int:
    """The checkpoint once ``e`` is handled. A stored row an upcaster splits reads as several
    events at one position: the checkpoint passes the row only with its last event, so a
    consumer that saves it after an earlier one gets the whole row again on resume (at least
    once) instead of losing the rest of it."""
    if following is not None and following.position == e.position:
        return e.position - 1
    return e.position
