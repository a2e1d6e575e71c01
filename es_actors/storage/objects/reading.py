"""Readers and followers of a partition of the whole-object backend (no ownership, no locks).

Each read takes one :func:`~.view.look` (manifest, tail, owners) and reads the manifest's
segments; if a seal or compaction moved objects in between, :func:`read_consistently`
looks again. Range and aggregate reads (with version ranges, limit, backwards) still filter a
full view: this backend has no stream index yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import pyarrow as pa
import pyarrow.compute as pc

from es_actors.codecs.rows import ARROW_SCHEMA, filter_versions, rows_to_table
from es_actors.storage.ranges import position_range
from es_actors.storage.api import BlobStore
from es_actors.storage.consistent import DEFAULT_ATTEMPTS, read_consistently
from es_actors.storage.guard import storage_boundary
from es_actors.storage.objects.view import CommitCache, adopted_commits, current_manifest, look, read_segment, rows_after


def durable_table(blobs: BlobStore, partition: int, cache: CommitCache, after: int = 0) -> pa.Table:
    """Every visible durable row with position > ``after``, in position order (one consistent look)."""

    def read_once() -> pa.Table:
        listing = look(blobs, partition, cache)
        commits = adopted_commits(listing, partition)
        parts = [read_segment(blobs, s, cache) for s in listing.manifest.segments if s.last > after]
        tail = [r for r in rows_after(commits) if r[1] > after]
        if tail:
            parts.append(rows_to_table(tail))
        table = pa.concat_tables(parts) if parts else ARROW_SCHEMA.empty_table()
        if after:
            table = table.filter(pc.greater(table.column("position"), after))
        return table

    return read_consistently(read_once, f"reading partition {partition}")


class ObjectReader:
    """:class:`~es_actors.storage.api.PartitionReader` of one partition."""

    def __init__(self, blobs: BlobStore, partition: int) -> None:
        self.blobs, self.partition = blobs, partition
        self._cache = CommitCache()

    @storage_boundary("reading a partition")
    def read_all(self) -> pa.Table:
        return durable_table(self.blobs, self.partition, self._cache)

    def high_water(self) -> int:
        table = self.read_all()
        return int(table.column("position")[-1].as_py()) if table.num_rows else 0

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

    def read_range(self, first: int, last: int) -> pa.Table:
        checked = position_range(first, last)
        if checked is None:
            return ARROW_SCHEMA.empty_table()
        first, last = checked
        table = durable_table(self.blobs, self.partition, self._cache, first - 1)
        return table.filter(pc.less_equal(table.column("position"), last))

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


@dataclass
class TableBatch:
    """Rows ``first..last`` of a partition as a table (an :class:`~es_actors.storage.api.EventBatch`)."""

    partition: int
    first: int
    last: int
    table: pa.Table

    def to_table(self, columns: list[str] | None = None) -> pa.Table:
        return self.table if columns is None else self.table.select(columns)


class ObjectFollower:
    """:class:`~es_actors.storage.api.PartitionFollower`: the rows after ``after``, in runs."""

    def __init__(self, blobs: BlobStore, partition: int, after: int = 0) -> None:
        self.blobs, self.partition, self.after = blobs, partition, after
        self._cache = CommitCache()

    def seek(self, after: int) -> None:
        self.after = after

    @storage_boundary("following a partition")
    def poll(self, max_rows: int = 1_000_000, attempts: int = DEFAULT_ATTEMPTS) -> TableBatch | None:
        table = durable_table(self.blobs, self.partition, self._cache, self.after)
        if table.num_rows == 0:
            return None
        table = table.slice(0, max_rows)
        first, last = self.after + 1, int(table.column("position")[-1].as_py())
        self.after = last
        return TableBatch(self.partition, first, last, table)
