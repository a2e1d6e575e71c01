"""The stored event row: its columns and its Arrow schema (client views: :mod:`es_actors.codecs.views`).

Users query these columns directly (DuckDB, Polars, Spark), so names and types are a
public contract. ``position`` (not ``offset``, a reserved word in DuckDB) is gapless per
partition; ``version`` is gapless per aggregate.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

# Row layout (tuples, in this order) used in the write-ahead tail and in memory.
COLUMNS: tuple[str, ...] = (
    "partition",
    "position",
    "aggregate_type",
    "aggregate_id",
    "version",
    "event_type",
    "schema_version",
    "event_id",
    "command_id",
    "command_digest",
    "correlation_id",
    "causation_id",
    "principal",
    "recorded_at",
    "payload",
    "metadata",
)
COL = {name: i for i, name in enumerate(COLUMNS)}
INT64_MAX = 2**63 - 1  # positions and versions are int64 columns: the largest either can be

ARROW_SCHEMA = pa.schema(
    [
        pa.field("partition", pa.int32(), nullable=False),
        pa.field("position", pa.int64(), nullable=False),
        pa.field("aggregate_type", pa.string(), nullable=False),
        pa.field("aggregate_id", pa.string(), nullable=False),
        pa.field("version", pa.int64(), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("schema_version", pa.int32(), nullable=False),
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("command_id", pa.string(), nullable=False),
        pa.field("command_digest", pa.string(), nullable=False),
        pa.field("correlation_id", pa.string()),
        pa.field("causation_id", pa.string()),
        pa.field("principal", pa.string()),
        pa.field("recorded_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("payload", pa.string(), nullable=False),
        pa.field("metadata", pa.string(), nullable=False),
    ]
)

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_AT_TYPE = ARROW_SCHEMA.field("recorded_at").type  # timestamp[us, UTC]: int64 microseconds underneath


def event_where(partition: int, position: int, aggregate_type: str, aggregate_id: str, version: int) -> str:
    """How errors name a stored event."""
    return f"partition {partition} position {position} ({aggregate_type}/{aggregate_id} version {version})"


def micros_to_datetime(us: int) -> datetime:
    return datetime.fromtimestamp(us // 1_000_000, tz=timezone.utc).replace(microsecond=us % 1_000_000)


def rows_to_table(rows: list[tuple[Any, ...]]) -> pa.Table:
    """Rows (tuples in ``COLUMNS`` order, recorded_at in epoch microseconds) to an Arrow table."""
    cols: list[Any] = list(zip(*rows)) if rows else [[] for _ in COLUMNS]
    return pa.Table.from_arrays(
        [pa.array(c, type=f.type) for c, f in zip(cols, ARROW_SCHEMA)], schema=ARROW_SCHEMA
    )


def table_to_rows(table: pa.Table | pa.RecordBatch) -> list[tuple[Any, ...]]:
    """Inverse of :func:`rows_to_table` (a table or a record batch), recorded_at back to epoch
    microseconds. Column by column, with recorded_at reinterpreted (not cast) when it is already
    microseconds: reads of a few rows call this per read, where a compute cast and a select cost
    more than the conversion."""
    if not table.num_rows:
        return []
    cols: list[list[Any]] = []
    for name in COLUMNS:
        c = table.column(name)
        if name == "recorded_at":
            if c.type != _AT_TYPE:
                c = c.cast(pa.int64())
            elif isinstance(c, pa.ChunkedArray):
                c = pa.chunked_array([ch.view(pa.int64()) for ch in c.chunks], pa.int64())
            else:
                c = c.view(pa.int64())
        cols.append(c.to_pylist())
    return list(zip(*cols))


def filter_versions(table: pa.Table, first_version: int, last_version: int | None) -> pa.Table:
    """Rows with ``first_version <= version <= last_version`` (no upper bound if None)."""
    ver = table.column("version")
    keep = pc.greater_equal(ver, first_version)
    if last_version is not None:
        keep = pc.and_(keep, pc.less_equal(ver, last_version))
    return table.filter(keep)
