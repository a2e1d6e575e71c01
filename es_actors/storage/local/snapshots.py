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
from pathlib import Path
from typing import Any, Iterable

import pyarrow.parquet as pq

from es_actors.codecs.snapshot_rows import (
    BOUNDS_KEY,
    KEY_SEP,
    ROW_GROUP,
    SnapshotRow,
    snapshot_row,
    snapshot_table,
)
from es_actors.storage.local.segments import write_parquet_durably
from es_actors.storage.files import fsync_dir

log = logging.getLogger(__name__)

def snapshot_dir(root: Path, partition: int) -> Path:
    return root / "snapshots" / f"p{partition:04d}"


def write_snapshot_file(directory: Path, rows: Iterable[SnapshotRow]) -> Path | None:
    """Write rows (newest per aggregate wins if repeated) as one new file; None if no rows."""
    table = snapshot_table(rows)
    if table is None:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"snap-{time.time_ns():020d}-{os.urandom(3).hex()}.parquet"
    write_parquet_durably(table, path, row_group_size=ROW_GROUP, write_page_checksum=True)
    return path


class _SnapshotFile:
    """An open snapshot file and the key bounds of its row groups."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = pq.ParquetFile(path, page_checksum_verification=True)
        meta = self.file.schema_arrow.metadata or {}
        self.bounds: list[list[str]] = json.loads(meta.get(BOUNDS_KEY, b"[]"))
        self.firsts = [b[0] for b in self.bounds]

    def find(self, aggregate_type: str, aggregate_id: str) -> SnapshotRow | None:
        key = f"{aggregate_type}{KEY_SEP}{aggregate_id}"
        i = bisect.bisect_right(self.firsts, key) - 1
        if i < 0 or key > self.bounds[i][1]:
            return None
        group = self.file.read_row_group(i)
        ids = group.column("aggregate_id").to_pylist()
        types = group.column("aggregate_type").to_pylist()
        for j, (t, a) in enumerate(zip(types, ids)):
            if a == aggregate_id and t == aggregate_type:
                return snapshot_row(group, j)
        return None

    def rows(self) -> list[SnapshotRow]:
        table = self.file.read()
        return [snapshot_row(table, j) for j in range(table.num_rows)]


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
