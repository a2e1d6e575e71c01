"""One aggregate's durable rows from a local partition without scanning it (ADR-015).

Inside one consistent-read attempt: the current generation's segments and the durable mark, then

- positions ``1..covered``: the stream index (``StreamIndex(layout, p).view(segments, lost)``,
  runs clustered by aggregate, ADR-015);
- sealed positions after ``covered``: those segments only, with a filter on the aggregate and
  ``position > covered`` (row-group statistics prune by position);
- unsealed positions: the writer's key files (:mod:`~es_actors.storage.local.tail_key_index`: only
  the frames that hold the aggregate are read) when they check out against the durable mark; else
  this process's :class:`~es_actors.storage.local.tail_cursor.TailIndex`, which parses every frame
  appended since its last read.

The three parts are disjoint by position, so every row comes once; the answer is sorted by version.
Writable and read-only stores use this same Ray-free path.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from es_actors.codecs.rows import COL, INT64_MAX, rows_to_table, table_to_rows
from es_actors.storage.consistent import DEFAULT_ATTEMPTS, Moved, read_consistently
from es_actors.storage.guard import storage_boundary
from es_actors.storage.layout import StoreLayout
from es_actors.storage.local.stream_index import StreamIndex
from es_actors.storage.local.stream_index.reading import ascending_versions
from es_actors.storage.local.log_place import LogPlace, log_place, lost_ranges, require_held
from es_actors.storage.local.range_reads import aggregate_in_segments
from es_actors.storage.local.segments import Segment
from es_actors.storage.local.tail_cursor import resolved_root, tail_index
from es_actors.storage.local.tail_key_index import tail_key_index
from es_actors.storage.lost_ranges import LostRanges


Row = tuple[Any, ...]
_POS, _VER = COL["position"], COL["version"]
def _sealed_after(segments: list[Segment], covered: int, aggregate: tuple[str, str], first_version: int,
                  last_version: int | None) -> pa.Table | None:
    """Rows of one aggregate in the segments after ``covered``; None if there are none (the index
    covers the sealed log: no filter is built, which costs more than a whole indexed read)."""
    after = [seg for seg in segments if seg.last > covered]
    if not after:
        return None
    return aggregate_in_segments(after, aggregate[0], aggregate[1], first_version, last_version, after=covered)


def _tail_part(layout: StoreLayout, partition: int, lost: LostRanges, place: LogPlace,
               aggregate: tuple[str, str]) -> list[tuple[Any, ...]]:
    """The aggregate's unsealed durable rows: from the writer's key files when they check out (only
    the frames holding the aggregate are read, each decoded once per process), else from this
    process's tail index (every frame added since its last read is parsed)."""
    tails, sealed_last, durable = place.tails, place.sealed_last, place.durable
    if place.keys is not None and not lost.of(partition):
        keys = tail_key_index(resolved_root(layout.root), partition)
        with keys.lock:
            found = keys.aggregate_rows(tails, sealed_last, durable, place.keys, aggregate)
        if found is not None:
            require_held(layout, partition, lost, durable, tails, max(durable or 0, sealed_last))
            return found
    index = tail_index(layout.root, partition)
    with index.lock:
        index.advance(tails, sealed_last, durable)  # FileNotFoundError: a seal moved a file
        first, last, count = index.span()  # every held row is unsealed: position > sealed_last
        rows = index.aggregate(aggregate[0], aggregate[1], sealed_last)
        if count and (first != sealed_last + 1 or count != last - sealed_last):  # gapless, but for recorded losses
            if not lost or lost.first_gap(partition, sealed_last, (r[_POS] for r in index.rows_after(sealed_last))):
                raise Moved(f"partition {partition}: positions do not continue after {sealed_last} in the tail")
    require_held(layout, partition, lost, durable, tails, max(last, sealed_last))
    return rows


_indexes: dict[tuple[str, int], StreamIndex] = {}


def _stream_index(layout: StoreLayout, partition: int) -> StreamIndex:
    """This process's :class:`StreamIndex` of a partition (it holds paths only: built once, not per read)."""
    key = (str(layout.root), partition)
    index = _indexes.get(key)
    if index is None:
        if len(_indexes) > 4096:
            _indexes.clear()
        index = _indexes[key] = StreamIndex(layout, partition)
    return index


def _cut(rows: list[Row], limit: int | None, backwards: bool) -> list[Row]:
    """The rows in version order (newest first if ``backwards``), at most ``limit``. The parts arrive
    in position order, which for one aggregate is version order: sorting is the rare exception.
    Plain tuples, not Arrow: a read returns a handful of rows, where each pyarrow call (concat,
    take, cast) costs more than the Python work it saves."""
    if not ascending_versions(rows):
        rows.sort(key=lambda r: r[_VER])
    if backwards:
        rows.reverse()
    return rows if limit is None else rows[:limit]


def read_aggregate(
    layout: StoreLayout,
    partition: int,
    aggregate_type: str,
    aggregate_id: str,
    first_version: int = 1,
    last_version: int | None = None,
    limit: int | None = None,
    backwards: bool = False,
    attempts: int = DEFAULT_ATTEMPTS,
) -> pa.Table:
    """:func:`read_aggregate_rows` as an Arrow table (the storage interface's reader)."""
    return rows_to_table(read_aggregate_rows(layout, partition, aggregate_type, aggregate_id, first_version,
                                             last_version, limit, backwards, attempts))


@storage_boundary("reading an aggregate")
def read_aggregate_rows(
    layout: StoreLayout,
    partition: int,
    aggregate_type: str,
    aggregate_id: str,
    first_version: int = 1,
    last_version: int | None = None,
    limit: int | None = None,
    backwards: bool = False,
    attempts: int = DEFAULT_ATTEMPTS,
) -> list[Row]:
    """Durable rows (tuples in ``COLUMNS`` order, as ``table_to_rows`` gives them) of one aggregate
    with ``first_version <= version <= last_version``, sorted by version (newest first if
    ``backwards``), at most ``limit`` of them. Costs the aggregate's rows
    in the index, the segments sealed since the index's coverage and the tail frames new since
    this process last read the tail; never the whole partition."""
    layout.require_local("local partition readers")
    lost = lost_ranges(layout.root)
    aggregate = (aggregate_type, aggregate_id)
    index = _stream_index(layout, partition)
    gapless = not lost.of(partition)  # no recorded loss: an aggregate's versions are 1..N without holes
    if limit is not None and gapless and not backwards:  # the versions the limit allows (int64, like the column)
        upto = min(first_version + limit - 1, INT64_MAX)
        last_version = upto if last_version is None else min(last_version, upto)

    def read_once() -> list[Row]:
        place = log_place(layout, partition, lost, cached=True)
        segments, sealed_last = place.segments, place.sealed_last
        tail = [r for r in _tail_part(layout, partition, lost, place, aggregate)
                if r[_VER] >= first_version and (last_version is None or r[_VER] <= last_version)]
        if backwards and limit is not None and len(tail) >= limit:
            return _cut(tail, limit, backwards)  # the newest are all unsealed
        view = index.view(segments, lost)  # FileNotFoundError: a run merged away under us
        covered = min(view.covered, sealed_last)
        sealed = _sealed_after(segments, covered, aggregate, first_version, last_version)
        found = (table_to_rows(sealed) if sealed is not None and sealed.num_rows else []) + tail
        got = len(found)
        if covered and not (backwards and limit is not None and got >= limit):
            lo, hi = first_version, last_version
            if backwards and got:  # the index holds only versions older than those found after it
                oldest = min(r[_VER] for r in found)
                hi = oldest - 1 if hi is None else min(hi, oldest - 1)
                if limit is not None and gapless:  # versions 1..oldest-1 all exist: take just the newest of them
                    lo = max(lo, hi - (limit - got) + 1)
            if hi is None or hi >= lo:
                found = view.aggregate_rows(aggregate_type, aggregate_id, lo, hi) + found  # rows checked there
        return _cut(found, limit, backwards)

    return read_consistently(read_once, f"reading {aggregate_type}/{aggregate_id} in partition {partition}", attempts)
