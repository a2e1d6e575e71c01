"""Position-range reads of one partition: only what overlaps the range is read.

Sealed segments are position ordered and named by their first and last position, so a range
``first..last`` touches only the segments whose names overlap it, and in each of them only the
row groups whose ``position`` statistics overlap it (a compacted segment holds many row
groups). The write-ahead tail is read only when the range reaches past the sealed log, and
only the tail files that hold positions after ``max(first - 1, sealed)``. The same consistency
rule as every read (:mod:`es_actors.storage.local.reader`): a read racing a seal or a
compaction starts again; every durable event in the range once, never a gap.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from es_actors.codecs.rows import ARROW_SCHEMA, COL, rows_to_table
from es_actors.errors import EsActorsError, StoreCorrupted
from es_actors.storage import files
from es_actors.storage.ranges import position_range
from es_actors.storage.consistent import DEFAULT_ATTEMPTS, Moved, read_consistently
from es_actors.storage.guard import storage_boundary
from es_actors.storage.layout import StoreLayout
from es_actors.storage.local.reader import durable_tail_rows
from es_actors.storage.local.log_place import log_place, require_held
from es_actors.storage.local.segments import Segment, verify_segment
from es_actors.storage.local.tail_cursor import TailFileCursor
from es_actors.storage.lost_ranges import LostRanges


def segment_range(seg: Segment, first: int, last: int, columns: list[str] | None = None) -> pa.Table:
    """Rows of one sealed segment with ``first <= position <= last``, reading only the row groups
    whose position statistics overlap the range. FileNotFoundError: a compaction removed it."""
    verify_segment(seg)
    names = columns or ARROW_SCHEMA.names
    try:
        with files.open_input(seg.path) as f:
            parquet = pq.ParquetFile(f)
            meta = parquet.metadata
            pos_col = parquet.schema_arrow.get_field_index("position")  # a flat schema: the leaf column's index too
            if pos_col < 0:
                raise StoreCorrupted(f"sealed segment {seg.path} has no position column")
            groups = [i for i in range(meta.num_row_groups) if _overlaps(meta.row_group(i).column(pos_col), first, last)]
            if not groups:
                return _empty(names)
            wanted = list(dict.fromkeys([*names, "position"]))
            table = parquet.read_row_groups(groups, columns=[n for n in wanted if n in parquet.schema_arrow.names])
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as exc:
        raise StoreCorrupted(f"sealed segment {seg.path} cannot be read: {exc}") from None
    pos = table.column("position")
    if meta.num_rows and (seg.first < first or seg.last > last):
        table = table.filter(pc.and_(pc.greater_equal(pos, first), pc.less_equal(pos, last)))
    return _conform(table, names)


def aggregate_in_segments(segments: list[Segment], aggregate_type: str, aggregate_id: str, first_version: int = 1,
                          last_version: int | None = None, after: int = 0, upto: int | None = None) -> pa.Table:
    """Rows of one aggregate in ``segments`` with versions ``first_version..last_version`` and positions
    ``after < position <= upto``, by a filtered scan (row-group statistics prune what they can): what the
    stream index does not cover, or a run found wrong. Each segment is verified and opened through the
    one opener. FileNotFoundError: a compaction collected one (read again)."""
    if not segments:
        return ARROW_SCHEMA.empty_table()
    where = ((ds.field("aggregate_type") == aggregate_type) & (ds.field("aggregate_id") == aggregate_id)
             & (ds.field("version") >= first_version) & (ds.field("position") > after))
    if last_version is not None:
        where = where & (ds.field("version") <= last_version)
    if upto is not None:
        where = where & (ds.field("position") <= upto)
    fmt = ds.ParquetFileFormat()
    parts = []
    for seg in segments:
        verify_segment(seg)
        f = files.open_input(seg.path)
        try:
            parts.append(fmt.make_fragment(f).to_table(schema=ARROW_SCHEMA, filter=where))
        except FileNotFoundError:
            raise
        except (pa.ArrowException, OSError) as exc:
            raise StoreCorrupted(f"sealed segment {seg.path} cannot be read: {exc}") from None
        finally:
            f.close()
    return pa.concat_tables(parts) if len(parts) > 1 else parts[0]


def _overlaps(column: Any, first: int, last: int) -> bool:
    stats = column.statistics
    if stats is None or not stats.has_min_max:
        return True  # no statistics: read it and filter
    return bool(stats.max >= first and stats.min <= last)


def _empty(names: list[str]) -> pa.Table:
    return pa.schema([ARROW_SCHEMA.field(n) for n in names]).empty_table()


def _conform(table: pa.Table, names: list[str]) -> pa.Table:
    """The columns asked for, in the log's schema (a column an older segment lacks reads as nulls)."""
    schema = pa.schema([ARROW_SCHEMA.field(n) for n in names])
    arrays = [
        table.column(n).cast(schema.field(n).type) if n in table.column_names else pa.nulls(table.num_rows, schema.field(n).type)
        for n in names
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


@storage_boundary("reading a position range")
def read_range(layout: StoreLayout, partition: int, first: int, last: int, attempts: int = DEFAULT_ATTEMPTS) -> pa.Table:
    """Durable events ``first..last`` of a partition, in position order (empty if none)."""
    layout.require_local("local partition readers")
    checked = position_range(first, last)
    if checked is None:
        return ARROW_SCHEMA.empty_table()
    first, last = checked
    lost = LostRanges.load(layout.root)

    def read_once() -> pa.Table:
        place = log_place(layout, partition, lost)
        durable, tails, segments, sealed_last = place.durable, place.tails, place.segments, place.sealed_last
        parts = [segment_range(s, first, last) for s in segments if s.first <= last and s.last >= first]
        if last > sealed_last:
            parts.append(_tail_range(layout, partition, tails, durable, lost, max(first - 1, sealed_last), last))
        if not parts:
            return ARROW_SCHEMA.empty_table()
        return pa.concat_tables(parts) if len(parts) > 1 else parts[0]

    return read_consistently(read_once, f"reading positions {first}..{last} of partition {partition}", attempts)


def _tail_range(
    layout: StoreLayout, partition: int, tails: Any, durable: int | None, lost: LostRanges, after: int, last: int
) -> pa.Table:
    """Durable tail rows in ``after+1..last``; Moved if the tail does not continue ``after``."""
    p_col = COL["position"]
    rows = [r for r in durable_tail_rows(layout, partition, tails, after, durable) if r[p_col] <= last]
    rows.sort(key=lambda r: r[p_col])
    if lost.first_gap(partition, after, (r[p_col] for r in rows)) is not None:
        raise Moved(f"partition {partition}: positions do not continue after {after} in {layout.tail_dir(partition)}")
    require_held(layout, partition, lost, durable, tails, rows[-1][p_col] if rows else after, upto=last)
    return rows_to_table(rows)


def recorded_at_us(layout: StoreLayout, partition: int, position: int, attempts: int = 3) -> int | None:
    """When the event at ``position`` was recorded (epoch µs), sealed or still in the tail; None if no
    durable event is there or it cannot be read now. A best-effort figure (lag in seconds): one row
    group of one segment, or the frames of one tail file from that position on (not decoded before)."""
    p_col, t_col = COL["position"], COL["recorded_at"]

    def read_once() -> int | None:
        place = log_place(layout, partition, LostRanges.load(layout.root))
        if position <= place.sealed_last:
            for s in place.segments:
                if s.first <= position <= s.last:
                    t = segment_range(s, position, position, ["recorded_at"])  # FileNotFoundError: compacted
                    return int(t.column(0).cast("int64")[0].as_py()) if t.num_rows else None
            return None
        holders = [(i, first, path) for i, (first, path) in enumerate(place.tails) if first <= position]
        if not holders:
            return None
        i, first, path = holders[-1]
        newest = i == len(place.tails) - 1
        rows = TailFileCursor(path, first).advance(newest, place.durable, skip_before=position)  # FileNotFoundError: sealed
        return next((int(r[t_col]) for r in rows if r[p_col] == position), None)

    try:
        return read_consistently(read_once, f"partition {partition}: recorded_at of {position}", attempts,
                                 pause_s=lambda attempt: 0.001, give_up=lambda _exc: None)
    except (EsActorsError, OSError, pa.ArrowException, ValueError):
        return None  # damage is reported by the reads that need the events; lag falls back to "now"


__all__ = ["aggregate_in_segments", "read_range", "recorded_at_us", "segment_range"]
