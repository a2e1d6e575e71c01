"""Consistent reads of a partition (sealed segments + durable tail) without owning it.

Any process may read while the owner writes, seals and compacts. A read lists tail files,
resolves the current generation, then reads the tail; if a seal moved rows between those
steps the positions show a gap, and the read starts again. Result: every durable event
once, in position order, never a partial record.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.dataset as ds

from es_actors.errors import StoreCorrupted
from es_actors.storage.consistent import DEFAULT_ATTEMPTS, Moved, read_consistently
from es_actors.codecs.rows import ARROW_SCHEMA, COL, rows_to_table, table_to_rows
from es_actors.storage.guard import storage_boundary
from es_actors.storage.layout import StoreLayout
from es_actors.storage.lost_ranges import LostRanges
from es_actors.storage.local.segments import Segment, list_segments, resolve_current, verify_segments
from es_actors.storage.local.log_place import log_place, require_held
from es_actors.storage.local.wal import list_tail_files, read_tail_file, read_tail_rows


def read_segments(segments: list[Segment], filter_expr: ds.Expression | None) -> pa.Table:
    """Rows of sealed segments that pass ``filter_expr``, each verified first. FileNotFoundError: a
    compaction collected one (read again)."""
    if not segments:
        return ARROW_SCHEMA.empty_table()
    verify_segments(segments)
    try:
        dataset = ds.dataset([str(s.path) for s in segments], schema=ARROW_SCHEMA, format="parquet")
        return dataset.to_table(filter=filter_expr)
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as exc:
        raise StoreCorrupted(f"sealed segments {[s.path.name for s in segments]} cannot be read: {exc}") from None


def durable_tail_rows(
    layout: StoreLayout, partition: int, tails: list[tuple[int, Path]], after: int, durable: int | None = None
) -> list[tuple[Any, ...]]:
    """Rows of the listed tail files after ``after`` that are durable (up to the writer's mark,
    read before the files were listed). Damage raises StoreCorrupted (never skipped); a
    vanished file raises FileNotFoundError: a seal moved its rows into a segment the caller did
    not list, so it must read again."""
    rows: list[tuple[Any, ...]] = []
    for i, (_first, path) in enumerate(tails):
        if i + 1 < len(tails) and tails[i + 1][0] <= after + 1:
            continue  # wholly at or before ``after``
        rows.extend(r for r in read_tail_rows(path, i == len(tails) - 1, durable) if r[COL["position"]] > after)
    return rows


View = tuple[list[Segment], list[tuple[Any, ...]]]


def _durable_view(layout: StoreLayout, partition: int, lost: LostRanges) -> View:
    """One attempt at a consistent view: (sealed segments, durable tail rows after them).
    Raises :class:`Moved` (a seal or compaction moved files under us, or positions are missing:
    look again); damage raises StoreCorrupted."""
    place = log_place(layout, partition, lost)
    durable, tails, segments, sealed_last = place.durable, place.tails, place.segments, place.sealed_last
    tail_dir = layout.tail_dir(partition)
    tail_rows = durable_tail_rows(layout, partition, tails, sealed_last, durable)  # FileNotFoundError: moved
    tail_rows.sort(key=lambda r: r[COL["position"]])
    if lost.first_gap(partition, sealed_last, (r[COL["position"]] for r in tail_rows)) is not None:
        raise Moved(f"partition {partition}: positions do not continue after {sealed_last} in {tail_dir}")
    last = tail_rows[-1][COL["position"]] if tail_rows else sealed_last
    require_held(layout, partition, lost, durable, tails, last)
    return segments, tail_rows


@storage_boundary("reading a partition")
def read_partition(
    layout: StoreLayout,
    partition: int,
    aggregate: tuple[str, str] | None = None,
    attempts: int = DEFAULT_ATTEMPTS,
) -> pa.Table:
    """All durable events of a partition (or of one aggregate in it), in position order."""
    layout.require_local("local partition readers")
    lost = LostRanges.load(layout.root)

    def read_once() -> pa.Table:
        segments, tail_rows = _durable_view(layout, partition, lost)
        filter_expr = None
        if aggregate is not None:
            filter_expr = (ds.field("aggregate_type") == aggregate[0]) & (ds.field("aggregate_id") == aggregate[1])
            tail_rows = [r for r in tail_rows if (r[COL["aggregate_type"]], r[COL["aggregate_id"]]) == aggregate]
        sealed = read_segments(segments, filter_expr)  # FileNotFoundError: compaction collected one
        if not tail_rows:
            return sealed
        return pa.concat_tables([sealed, rows_to_table(tail_rows)])

    return read_consistently(read_once, f"reading partition {partition}", attempts)


def read_partition_rows(layout: StoreLayout, partition: int, aggregate: tuple[str, str] | None = None) -> list[tuple[Any, ...]]:
    return table_to_rows(read_partition(layout, partition, aggregate))


@storage_boundary("listing sealed files")
def sealed_files(layout: StoreLayout, partitions: int) -> list[Path]:
    """The exact sealed file set right now: pass it to ``read_parquet([...])`` for a stable snapshot."""
    layout.require_local("sealed files")
    files: list[Path] = []
    lost = LostRanges.load(layout.root)
    for p in range(partitions):
        gen = resolve_current(layout.log_dir(p))
        if gen is not None:
            files.extend(s.path for s in list_segments(gen, lost, p))
    return files


@storage_boundary("reading the log")
def log_views(layout: StoreLayout, partitions: int, what: str, attempts: int = DEFAULT_ATTEMPTS) -> list[tuple[list[Segment], pa.Table]]:
    """Per partition, one consistent view now: (sealed segments, durable tail rows after them). The
    segments are not verified here (whoever reads them does). ``what`` names the reader in errors."""
    layout.require_local(what)
    lost = LostRanges.load(layout.root)
    views = []
    for p in range(partitions):
        segments, tail_rows = read_consistently(lambda: _durable_view(layout, p, lost), f"reading partition {p}", attempts)
        views.append((segments, rows_to_table(tail_rows)))
    return views


@storage_boundary("reading the log")
def log_snapshot(layout: StoreLayout, partitions: int, attempts: int = DEFAULT_ATTEMPTS) -> tuple[list[str], pa.Table]:
    """Every durable event as (sealed files, tail rows after them): what the ``events`` relation
    of a query shows. Consistent per partition (same retry rule as :func:`read_partition`)."""
    files: list[str] = []
    tails: list[pa.Table] = []
    for segments, tail in log_views(layout, partitions, "queries", attempts):
        verify_segments(segments)
        files.extend(str(s.path) for s in segments)
        tails.append(tail)
    return files, pa.concat_tables(tails) if tails else ARROW_SCHEMA.empty_table()


@storage_boundary("reading the sealed high-water mark")
def sealed_last_position(layout: StoreLayout, partition: int) -> int:
    """The last position sealed into Parquet now (0 if none). It only grows; sealed rows are
    durable and acknowledged, never cut back."""
    try:
        gen = resolve_current(layout.log_dir(partition))
        segments = list_segments(gen, LostRanges.load(layout.root), partition) if gen is not None else []
    except FileNotFoundError:
        return 0
    return segments[-1].last if segments else 0


@storage_boundary("reading event ids")
def event_ids_at(layout: StoreLayout, partition: int, positions: Iterable[int], attempts: int = DEFAULT_ATTEMPTS) -> dict[int, str]:
    """``event_id`` of the events now at these positions (tail first, then sealed segments).

    A reader can see a tail frame whose fdatasync then fails and which the owner cuts back
    (and later reuses its positions). Reading the positions again after a fold confirms the
    events it used are still the ones there. Positions missing from the answer hold nothing now.
    """
    want = set(positions)
    found: dict[int, str] = {}
    if not want:
        return found
    p_col, id_col = COL["position"], COL["event_id"]
    for _first, path in list_tail_files(layout.tail_dir(partition)):
        rows, _valid, _size = read_tail_file(path)  # a file sealed and removed meanwhile reads as empty
        for r in rows:
            if r[p_col] in want:
                found[r[p_col]] = r[id_col]
    rest = sorted(want - found.keys())
    if not rest:
        return found

    def read_once() -> dict[int, str]:
        gen = resolve_current(layout.log_dir(partition))
        segments = list_segments(gen, LostRanges.load(layout.root), partition) if gen is not None else []
        if not segments:
            return {}
        table = ds.dataset([str(s.path) for s in segments], schema=ARROW_SCHEMA, format="parquet").to_table(
            columns=["position", "event_id"], filter=ds.field("position").isin(rest)
        )  # FileNotFoundError: a compaction swapped the generation under us
        return dict(zip(table.column("position").to_pylist(), table.column("event_id").to_pylist()))

    found.update(read_consistently(read_once, f"partition {partition}: event ids", attempts, give_up=lambda _exc: {}))
    return found


@storage_boundary("reading the durable high-water mark")
def durable_high_water(layout: StoreLayout, partition: int, attempts: int = DEFAULT_ATTEMPTS) -> int:
    """The last durable position a reader can see (0 if none)."""
    lost = LostRanges.load(layout.root)
    segments, tail_rows = read_consistently(
        lambda: _durable_view(layout, partition, lost), f"reading partition {partition}", attempts
    )
    if tail_rows:
        return int(tail_rows[-1][COL["position"]])
    return segments[-1].last if segments else 0
