"""Consistent reads of a partition (sealed segments + durable tail) without owning it.

Any process may read while the owner writes, seals and compacts. A read lists tail files,
resolves the current generation, then reads the tail; if a seal moved rows between those
steps the positions show a gap, and the read starts again. Result: every durable event
once, in position order, never a partial record.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds

from ..errors import StoreCorrupted
from ..records import ARROW_SCHEMA, COL, rows_to_table, table_to_rows
from .layout import StoreLayout
from .segments import Segment, list_segments, resolve_current
from .wal import iter_frames, list_tail_files


def _read_tail_strict(path: Path) -> list[tuple[Any, ...]]:
    """Rows of a tail file's whole frames; FileNotFoundError if it vanished since it was listed:
    a seal moved its rows into a segment we did not list, so the read must start again (its
    rows may be the newest: no gap would show that they are missing)."""
    rows: list[tuple[Any, ...]] = []
    for _end, frame_rows in iter_frames(path.read_bytes()):
        rows.extend(tuple(r) for r in frame_rows)
    return rows


def _read_segments(segments: list[Segment], filter_expr: ds.Expression | None) -> pa.Table:
    if not segments:
        return ARROW_SCHEMA.empty_table()
    dataset = ds.dataset([str(s.path) for s in segments], schema=ARROW_SCHEMA, format="parquet")
    return dataset.to_table(filter=filter_expr)


def _durable_view(layout: StoreLayout, partition: int) -> tuple[list[Segment], list[tuple[Any, ...]]] | None:
    """One attempt at a consistent view: (sealed segments, tail rows after them, gapless), or
    None if a seal or compaction moved files under us (look again)."""
    tails = list_tail_files(layout.tail_dir(partition))
    gen = resolve_current(layout.log_dir(partition))
    try:
        segments = list_segments(gen) if gen is not None else []
        sealed_last = segments[-1].last if segments else 0
        tail_rows: list[tuple[Any, ...]] = []
        for _first, path in tails:
            tail_rows.extend(r for r in _read_tail_strict(path) if r[COL["position"]] > sealed_last)
    except (FileNotFoundError, StoreCorrupted):
        return None
    tail_rows.sort(key=lambda r: r[COL["position"]])
    if any(r[COL["position"]] != sealed_last + 1 + i for i, r in enumerate(tail_rows)):
        return None
    return segments, tail_rows


def read_partition(
    layout: StoreLayout,
    partition: int,
    aggregate: tuple[str, str] | None = None,
    attempts: int = 20,
) -> pa.Table:
    """All durable events of a partition (or of one aggregate in it), in position order."""
    for _ in range(attempts):
        view = _durable_view(layout, partition)
        if view is None:
            time.sleep(0.01)
            continue
        segments, tail_rows = view
        filter_expr = None
        if aggregate is not None:
            filter_expr = (ds.field("aggregate_type") == aggregate[0]) & (ds.field("aggregate_id") == aggregate[1])
            tail_rows = [r for r in tail_rows if (r[COL["aggregate_type"]], r[COL["aggregate_id"]]) == aggregate]
        try:
            sealed = _read_segments(segments, filter_expr)
        except FileNotFoundError:
            time.sleep(0.01)
            continue
        if not tail_rows:
            return sealed
        return pa.concat_tables([sealed, rows_to_table(tail_rows)])
    raise StoreCorrupted(f"partition {partition}: no consistent read after {attempts} attempts")


def read_partition_rows(layout: StoreLayout, partition: int, aggregate: tuple[str, str] | None = None) -> list[tuple[Any, ...]]:
    return table_to_rows(read_partition(layout, partition, aggregate))


def sealed_files(layout: StoreLayout, partitions: int) -> list[Path]:
    """The exact sealed file set right now: pass it to ``read_parquet([...])`` for a stable snapshot."""
    files: list[Path] = []
    for p in range(partitions):
        gen = resolve_current(layout.log_dir(p))
        if gen is not None:
            files.extend(s.path for s in list_segments(gen))
    return files


def log_snapshot(layout: StoreLayout, partitions: int, attempts: int = 20) -> tuple[list[str], pa.Table]:
    """Every durable event as (sealed files, tail rows after them): what the ``events`` relation
    of a query shows. Consistent per partition (same retry rule as :func:`read_partition`)."""
    files: list[str] = []
    tails: list[tuple[Any, ...]] = []
    for p in range(partitions):
        for _ in range(attempts):
            view = _durable_view(layout, p)
            if view is not None:
                files.extend(str(s.path) for s in view[0])
                tails.extend(view[1])
                break
            time.sleep(0.01)
        else:
            raise StoreCorrupted(f"partition {p}: no consistent read after {attempts} attempts")
    return files, rows_to_table(tails)
