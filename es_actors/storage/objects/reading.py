"""Readers and followers of a partition of the whole-object backend (no ownership, no locks).

Each read takes one consistent look (:mod:`.watch`: manifest, tail, owners) and reads only
the segments that hold the positions asked for, and the tail commits only when the range
reaches them; if a seal or compaction moved objects in between, :func:`read_consistently`
looks again. A follower's batch names its segments and reads them when asked for its
table, so following the head costs a look, not a read of the log; a catch-up reads each
segment once (kept while the follower is in it, and in the shared segment cache).
Aggregate reads (with version ranges, limit, backwards) still filter a full view: this
backend has no stream index yet.
"""

from __future__ import annotations

import bisect
import time
from typing import Callable, Iterable

import pyarrow as pa
import pyarrow.compute as pc

from es_actors.codecs.rows import ARROW_SCHEMA, filter_versions, rows_to_table
from es_actors.errors import StoreCorrupted
from es_actors.storage.api import BlobStore
from es_actors.storage.consistent import DEFAULT_ATTEMPTS, read_consistently
from es_actors.storage.guard import storage_boundary
from es_actors.storage.objects.records import Commit, SegmentRef
from es_actors.storage.objects.view import CommitCache, SegmentCache, current_manifest, read_segment
from es_actors.storage.objects.watch import PartitionWatch, View, take_view
from es_actors.storage.ranges import position_range

Fetch = Callable[[SegmentRef], pa.Table]
Parts = tuple[tuple[SegmentRef, ...], tuple[Commit, ...]]


def parts_of(view: View, first: int, last: int) -> Parts:
    """The segments and tail commits of ``view`` that hold positions ``first..last``."""
    segs = view.manifest.segments
    at = bisect.bisect_left([s.last for s in segs], first)  # the first segment ending at or after first
    chosen = []
    while at < len(segs) and segs[at].first <= last:
        chosen.append(segs[at])
        at += 1
    tail = tuple(c for c in view.commits if c.last >= first and c.first <= last)
    return tuple(chosen), tail


def rows_of_parts(fetch: Fetch, parts: Parts, first: int, last: int) -> pa.Table:
    """Positions ``first..last`` (all of them, or StoreCorrupted) from ``parts``, in order."""
    segs, commits = parts
    pieces: list[pa.Table] = []
    for s in segs:
        lo, hi = max(first, s.first), min(last, s.last)
        pieces.append(_checked(fetch(s).slice(lo - s.first, hi - lo + 1), lo, hi, s.key))
    rows = [r for c in commits for r in c.rows[max(first, c.first) - c.first : min(last, c.last) - c.first + 1]]
    if rows:
        lo = max(first, commits[0].first)
        pieces.append(_checked(rows_to_table(rows), lo, lo + len(rows) - 1, "the tail commits"))
    table = pa.concat_tables(pieces) if pieces else ARROW_SCHEMA.empty_table()
    if last >= first and table.num_rows != last - first + 1:
        raise StoreCorrupted(f"positions {first}..{last} were asked for but {table.num_rows} rows hold them: the "
                             "manifest's segments and the tail do not follow each other without a gap")
    return table


def _checked(piece: pa.Table, lo: int, hi: int, where: str) -> pa.Table:
    pos = piece.column("position")
    if piece.num_rows != hi - lo + 1 or pos[0].as_py() != lo or pos[-1].as_py() != hi:
        raise StoreCorrupted(f"{where}: positions {lo}..{hi} are not where the manifest says; nothing was changed")
    return piece


def durable_table(blobs: BlobStore, partition: int, cache: CommitCache, after: int = 0) -> pa.Table:
    """Every visible durable row with position > ``after``, in position order (one consistent look)."""
    return range_table(blobs, partition, cache, after + 1, None)


def range_table(blobs: BlobStore, partition: int, cache: CommitCache, first: int, last: int | None,
                view: Callable[[], View] | None = None) -> pa.Table:
    """Positions ``first..last`` (to the head if None, fewer if the head is before ``last``) of one
    consistent look, reading only what holds them."""

    def read_once() -> pa.Table:
        if view is not None:
            v = view()
        else:
            manifest, _highest = current_manifest(blobs, partition, cache)
            sealed = last is not None and last <= manifest.last_position  # the tail is not needed
            v = View(manifest, (), 0.0) if sealed else take_view(blobs, partition, cache)
        end = v.head if last is None else min(last, v.head)
        if end < first:
            return ARROW_SCHEMA.empty_table()
        return rows_of_parts(lambda s: read_segment(blobs, s, cache), parts_of(v, first, end), first, end)

    return read_consistently(read_once, f"reading partition {partition}")


class ObjectReader:
    """:class:`~es_actors.storage.api.PartitionReader` of one partition."""

    def __init__(self, blobs: BlobStore, partition: int, segments: SegmentCache | None = None) -> None:
        self.blobs, self.partition = blobs, partition
        self._cache = CommitCache(segments)

    @storage_boundary("reading a partition")
    def read_all(self) -> pa.Table:
        return durable_table(self.blobs, self.partition, self._cache)

    @storage_boundary("reading a partition")
    def high_water(self) -> int:
        """The newest durable position (one look; no segment is read)."""
        return read_consistently(lambda: take_view(self.blobs, self.partition, self._cache).head,
                                 f"reading partition {self.partition}")

    @storage_boundary("reading the sealed high-water mark")
    def sealed_through(self) -> int:
        """The current manifest's last position (one LIST and one GET)."""
        return current_manifest(self.blobs, self.partition)[0].last_position

    @storage_boundary("reading event ids")
    def event_ids_at(self, positions: Iterable[int]) -> dict[int, str]:
        """One more consistent look from the lowest position on: whole objects already read come from
        this reader's cache, so it costs the listings and any commit newer than the last read."""
        want = set(positions)
        if not want:
            return {}
        table = durable_table(self.blobs, self.partition, self._cache, min(want) - 1)
        table = table.filter(pc.is_in(table.column("position"), pa.array(sorted(want), pa.int64())))
        return dict(zip(table.column("position").to_pylist(), table.column("event_id").to_pylist()))

    @storage_boundary("reading a partition")
    def read_range(self, first: int, last: int) -> pa.Table:
        checked = position_range(first, last)
        if checked is None:
            return ARROW_SCHEMA.empty_table()
        return range_table(self.blobs, self.partition, self._cache, checked[0], checked[1])

    def read_aggregate(
        self, aggregate_type: str, aggregate_id: str, first_version: int = 1, last_version: int | None = None,
        limit: int | None = None, backwards: bool = False,
    ) -> pa.Table:
        """Still a filtered full view of the partition (whole-object stores have no index yet)."""
        table = self.read_all()
        mask = pc.and_(pc.equal(table.column("aggregate_type"), aggregate_type),
                       pc.equal(table.column("aggregate_id"), aggregate_id))
        table = filter_versions(table.filter(mask), first_version, last_version)
        table = table.sort_by([("version", "descending" if backwards else "ascending")])
        return table if limit is None else table.slice(0, limit)


class TableBatch:
    """Rows ``first..last`` of a partition (an :class:`~es_actors.storage.api.EventBatch`): the
    segments and tail commits that hold them, read when :meth:`to_table` is called."""

    def __init__(self, partition: int, first: int, last: int, parts: Parts, fetch: Fetch,
                 watch: PartitionWatch) -> None:
        self.partition, self.first, self.last = partition, first, last
        self._parts, self._fetch, self._watch = parts, fetch, watch
        self._table: pa.Table | None = None

    @property
    def count(self) -> int:
        return self.last - self.first + 1

    @property
    def from_tail(self) -> bool:
        """Only tail commits hold it (a live batch: small, already in memory), no segment."""
        return not self._parts[0]

    @property
    def table(self) -> pa.Table:
        """The rows (read once, at first use): the read side takes a batch that is not local
        Parquet files as a table."""
        if self._table is None:
            self._table = self.to_table()
        return self._table

    @storage_boundary("reading a batch of events")
    def to_table(self, columns: list[str] | None = None) -> pa.Table:
        if self._table is not None:
            return self._table if columns is None else self._table.select(columns)
        try:
            table = rows_of_parts(self._fetch, self._parts, self.first, self.last)
        except FileNotFoundError:  # compacted and collected (gc_grace_s) since the poll: read them where they are now
            w = self._watch
            table = range_table(w.blobs, w.partition, w.cache, self.first, self.last, lambda: w.view(fresh=True))
            if table.num_rows != self.count:
                raise StoreCorrupted(f"partition {self.partition}: positions {self.first}..{self.last} were durable "
                                     f"and are now in no segment or tail object") from None
        return table if columns is None else table.select(columns)


class ObjectFollower:
    """:class:`~es_actors.storage.api.PartitionFollower`: the rows after ``after``, in runs.

    ``watch`` may be shared with other followers of the partition (:meth:`ObjectBackend.follower`
    does so): then they share one look within its interval and one cache. ``head`` is the newest
    durable position seen."""

    def __init__(self, blobs: BlobStore, partition: int, after: int = 0, watch: PartitionWatch | None = None) -> None:
        self.blobs, self.partition, self.after = blobs, partition, after
        self.head = after
        self._watch = watch if watch is not None else PartitionWatch(blobs, partition)
        self._since = time.monotonic()  # never answer from a look taken before this follower existed
        self._pinned: tuple[str, pa.Table] | None = None  # the segment this follower is in

    def seek(self, after: int) -> None:
        self.after = after

    @storage_boundary("following a partition")
    def poll(self, max_rows: int = 1_000_000, attempts: int = DEFAULT_ATTEMPTS) -> TableBatch | None:
        """The next rows after :attr:`after` (at most ``max_rows``), or None if the current look
        shows nothing newer. Reads no segment: the batch does, when its table is asked for."""
        view = self._watch.view(not_before=self._since)
        if view.head >= self.head:
            self.head = view.head
        if view.head <= self.after:
            return None
        first = self.after + 1
        last = min(view.head, self.after + max(1, max_rows))
        batch = TableBatch(self.partition, first, last, parts_of(view, first, last), self._segment, self._watch)
        self.after = last
        return batch

    def _segment(self, ref: SegmentRef) -> pa.Table:
        pinned = self._pinned
        if pinned is not None and pinned[0] == ref.key:
            return pinned[1]
        table = read_segment(self.blobs, ref, self._watch.cache)
        self._pinned = (ref.key, table)
        return table
