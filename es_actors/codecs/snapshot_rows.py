"""The snapshot row as stored: its Arrow schema, and the table a group of snapshots is written
as (sorted by aggregate, with each row group's first and last key in the file's metadata, so
finding one aggregate reads one row group). Shared by every storage backend and by the
partition's snapshot policy."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Iterable

import pyarrow as pa

SNAPSHOT_SCHEMA = pa.schema(
    [
        pa.field("aggregate_type", pa.string(), nullable=False),
        pa.field("aggregate_id", pa.string(), nullable=False),
        pa.field("version", pa.int64(), nullable=False),
        pa.field("position", pa.int64(), nullable=False),
        pa.field("fingerprint", pa.string(), nullable=False),
        pa.field("encoding", pa.string(), nullable=False),
        pa.field("state", pa.binary(), nullable=False),
        pa.field("taken_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("event_id", pa.string(), nullable=False),
    ]
)
ROW_GROUP = 1024
BOUNDS_KEY = b"es_actors.row_group_bounds"
KEY_SEP = "\x1f"


@dataclass(frozen=True, slots=True)
class SnapshotRow:
    aggregate_type: str
    aggregate_id: str
    version: int
    position: int
    fingerprint: str
    encoding: str
    state: bytes
    event_id: str = ""  # id of the event at ``position`` ("" from older writers: checked by position only)


def snapshot_table(rows: Iterable[SnapshotRow]) -> pa.Table | None:
    """One snapshot group as a table sorted by aggregate with its row-group key bounds (None if empty);
    newest row per aggregate wins if repeated."""
    latest: dict[tuple[str, str], SnapshotRow] = {}
    for r in rows:
        k = (r.aggregate_type, r.aggregate_id)
        if k not in latest or latest[k].version <= r.version:
            latest[k] = r
    if not latest:
        return None
    ordered = [latest[k] for k in sorted(latest)]
    now = time.time_ns() // 1000
    table = pa.Table.from_arrays(
        [
            pa.array([r.aggregate_type for r in ordered], pa.string()),
            pa.array([r.aggregate_id for r in ordered], pa.string()),
            pa.array([r.version for r in ordered], pa.int64()),
            pa.array([r.position for r in ordered], pa.int64()),
            pa.array([r.fingerprint for r in ordered], pa.string()),
            pa.array([r.encoding for r in ordered], pa.string()),
            pa.array([r.state for r in ordered], pa.binary()),
            pa.array([now] * len(ordered), pa.timestamp("us", tz="UTC")),
            pa.array([r.event_id for r in ordered], pa.string()),
        ],
        schema=SNAPSHOT_SCHEMA,
    )
    bounds = [
        [snapshot_key(ordered[i]), snapshot_key(ordered[min(i + ROW_GROUP, len(ordered)) - 1])]
        for i in range(0, len(ordered), ROW_GROUP)
    ]
    return table.replace_schema_metadata({BOUNDS_KEY: json.dumps(bounds).encode()})


def snapshot_rows(table: pa.Table) -> list[SnapshotRow]:
    """Every row of a snapshot table."""
    return [snapshot_row(table, j) for j in range(table.num_rows)]


def snapshot_key(r: SnapshotRow) -> str:
    return f"{r.aggregate_type}{KEY_SEP}{r.aggregate_id}"


def snapshot_row(table: pa.Table, j: int) -> SnapshotRow:
    return SnapshotRow(
        table.column("aggregate_type")[j].as_py(),
        table.column("aggregate_id")[j].as_py(),
        table.column("version")[j].as_py(),
        table.column("position")[j].as_py(),
        table.column("fingerprint")[j].as_py(),
        table.column("encoding")[j].as_py(),
        table.column("state")[j].as_py(),
        table.column("event_id")[j].as_py() if "event_id" in table.column_names else "",
    )
