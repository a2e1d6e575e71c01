"""Snapshot files of one partition: immutable Parquet, sorted by aggregate, found by key.

Layout: ``<store>/snapshots/pNNNN/snap-<time_ns>-<rand>.parquet``, one row per aggregate:
(aggregate_type, aggregate_id, version, position, fingerprint, encoding, state, taken_at,
event_id). ``position`` and ``event_id`` name the event at ``version``: a snapshot is only
used if the log still has that very event there (a log replaced or restored from a backup
may hold another event of the same version at the same position), its fingerprint matches
the code running now, and its version is not ahead of the log. Anything else is ignored
(full replay) and replaced. Pages carry CRC checksums, verified on read: a damaged file
fails to read (and is ignored) instead of yielding a subtly different state.

Rows are sorted by (aggregate_type, aggregate_id) in small row groups; the first and last
key of each row group is kept in the file's metadata, so finding one aggregate reads one
row group. Files are written whole (temp name, fsync, rename) and never edited; the owner
merges them when they pile up. Plain DuckDB can read them (``state`` is JSON when the
state type allows).
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from es_actors.storage.segments import write_parquet_durably
from es_actors.storage.files import fsync_dir

log = logging.getLogger(__name__)

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
_ROW_GROUP = 1024
_BOUNDS_KEY = b"es_actors.row_group_bounds"
_SEP = "\x1f"


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


def snapshot_dir(root: Path, partition: int) -> Path:
    return root / "snapshots" / f"p{partition:04d}"


def write_snapshot_file(directory: Path, rows: Iterable[SnapshotRow]) -> Path | None:
    """Write rows (newest per aggregate wins if repeated) as one new file; None if no rows."""
    table = snapshot_table(rows)
    if table is None:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"snap-{time.time_ns():020d}-{os.urandom(3).hex()}.parquet"
    write_parquet_durably(table, path, row_group_size=_ROW_GROUP, write_page_checksum=True)
    return path


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
        [_key(ordered[i]), _key(ordered[min(i + _ROW_GROUP, len(ordered)) - 1])]
        for i in range(0, len(ordered), _ROW_GROUP)
    ]
    return table.replace_schema_metadata({_BOUNDS_KEY: json.dumps(bounds).encode()})


def snapshot_rows(table: pa.Table) -> list[SnapshotRow]:
    """Every row of a snapshot table."""
    return [_row(table, j) for j in range(table.num_rows)]


def _key(r: SnapshotRow) -> str:
    return f"{r.aggregate_type}{_SEP}{r.aggregate_id}"


class _SnapshotFile:
    """An open snapshot file and the key bounds of its row groups."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = pq.ParquetFile(path, page_checksum_verification=True)
        meta = self.file.schema_arrow.metadata or {}
        self.bounds: list[list[str]] = json.loads(meta.get(_BOUNDS_KEY, b"[]"))
        self.firsts = [b[0] for b in self.bounds]

    def find(self, aggregate_type: str, aggregate_id: str) -> SnapshotRow | None:
        key = f"{aggregate_type}{_SEP}{aggregate_id}"
        i = bisect.bisect_right(self.firsts, key) - 1
        if i < 0 or key > self.bounds[i][1]:
            return None
        group = self.file.read_row_group(i)
        ids = group.column("aggregate_id").to_pylist()
        types = group.column("aggregate_type").to_pylist()
        for j, (t, a) in enumerate(zip(types, ids)):
            if a == aggregate_id and t == aggregate_type:
                return _row(group, j)
        return None

    def rows(self) -> list[SnapshotRow]:
        table = self.file.read()
        return [_row(table, j) for j in range(table.num_rows)]


def _row(table: pa.Table, j: int) -> SnapshotRow:
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


class SnapshotStore:
    """The owner's view of a partition's snapshot files (others, e.g. the snapshot job, may add files)."""

    def __init__(self, root: Path, partition: int) -> None:
        self.dir = snapshot_dir(root, partition)
        self._files: dict[str, _SnapshotFile] = {}
        self._listed_mtime: int | None = None
        self._listed_at = 0.0

    def _refresh(self) -> list[_SnapshotFile]:
        try:
            mtime = self.dir.stat().st_mtime_ns
        except FileNotFoundError:
            self._files.clear()
            self._listed_mtime = None
            return []
        # Directory mtimes are coarse: a file renamed in within the tick of the last listing
        # leaves mtime unchanged, so also look again once the listing is a second old.
        if mtime != self._listed_mtime or time.monotonic() - self._listed_at > 1.0:
            self._listed_at = time.monotonic()
            names = sorted(n for n in os.listdir(self.dir) if n.startswith("snap-") and n.endswith(".parquet"))
            fresh: dict[str, _SnapshotFile] = {}
            for n in names:
                f = self._files.get(n)
                if f is None:
                    try:
                        f = _SnapshotFile(self.dir / n)
                    except Exception as exc:  # a damaged snapshot is never fatal: the log is the truth
                        log.warning("ignoring unreadable snapshot file %s: %s", self.dir / n, exc)
                        continue
                fresh[n] = f
            self._files = fresh
            self._listed_mtime = mtime
        return list(self._files.values())

    @property
    def file_count(self) -> int:
        return len(self._refresh())

    def candidates(self, aggregate_type: str, aggregate_id: str) -> list[SnapshotRow]:
        """Every stored snapshot of one aggregate, newest file first."""
        out = []
        for f in reversed(self._refresh()):
            try:
                row = f.find(aggregate_type, aggregate_id)
            except Exception as exc:
                log.warning("ignoring unreadable snapshot file %s: %s", f.path, exc)
                continue
            if row is not None:
                out.append(row)
        return out

    def all_rows(self) -> list[SnapshotRow]:
        """Every row of every file (oldest file first)."""
        out: list[SnapshotRow] = []
        for f in self._refresh():
            try:
                out.extend(f.rows())
            except Exception as exc:
                log.warning("ignoring unreadable snapshot file %s: %s", f.path, exc)
        return out

    def write(self, rows: Iterable[SnapshotRow]) -> Path | None:
        path = write_snapshot_file(self.dir, rows)
        self._listed_mtime = None
        return path

    def consolidate(self, keep: Any) -> None:
        """Merge all files into one: for each aggregate the newest row ``keep(row)`` accepts."""
        files = self._refresh()
        if len(files) < 2:
            return
        rows: list[SnapshotRow] = []
        for f in files:
            try:
                file_rows = f.rows()
            except Exception as exc:  # damaged: its rows are lost (the log is the truth), the file goes too
                log.warning("dropping unreadable snapshot file %s: %s", f.path, exc)
                continue
            rows.extend(r for r in file_rows if keep(r))
        self.write(rows)
        for f in files:
            f.path.unlink(missing_ok=True)
        fsync_dir(self.dir)
        self._listed_mtime = None
