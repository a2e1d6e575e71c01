"""Snapshot groups of the whole-object backend: one Parquet object per group, never changed.

Keys ``pNNNN/snaps/<time_ns>-<random>.parquet``; newest first by name. A group that cannot
be read (still being written, torn, damaged) is ignored like a damaged local snapshot
file: snapshots are a cache, the log is the truth.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from es_actors.storage.api import BlobStore, ObjectIncomplete
from es_actors.storage.objects.records import partition_prefix
from es_actors.storage.objects.view import parquet_bytes
from es_actors.codecs.snapshot_rows import SnapshotRow, snapshot_rows, snapshot_table

log = logging.getLogger(__name__)


class ObjectSnapshotStore:
    """:class:`~es_actors.storage.api.SnapshotStore` on a :class:`BlobStore`."""

    def __init__(self, blobs: BlobStore, partition: int) -> None:
        self.blobs = blobs
        self.prefix = partition_prefix(partition) + "snaps/"
        self._groups: dict[str, list[SnapshotRow]] = {}

    def _load(self) -> list[tuple[str, list[SnapshotRow]]]:
        out = []
        for key in self.blobs.list(self.prefix):
            rows = self._groups.get(key)
            if rows is None:
                try:
                    rows = snapshot_rows(pq.read_table(pa.BufferReader(self.blobs.get(key))))
                except (OSError, ObjectIncomplete, pa.ArrowException) as exc:
                    log.warning("ignoring unreadable snapshot object %s: %s", key, exc)
                    continue
                self._groups[key] = rows
            out.append((key, rows))
        return out

    @property
    def file_count(self) -> int:
        return len(self.blobs.list(self.prefix))

    def candidates(self, aggregate_type: str, aggregate_id: str) -> list[SnapshotRow]:
        return [r for _k, rows in reversed(self._load()) for r in rows
                if r.aggregate_id == aggregate_id and r.aggregate_type == aggregate_type]

    def all_rows(self) -> list[SnapshotRow]:
        return [r for _k, rows in self._load() for r in rows]

    def write(self, rows: Iterable[SnapshotRow]) -> str | None:
        table = snapshot_table(rows)
        if table is None:
            return None
        key = f"{self.prefix}{time.time_ns():020d}-{os.urandom(3).hex()}.parquet"
        self.blobs.put_if_absent(key, parquet_bytes(table))
        return key

    def consolidate(self, keep: Callable[[SnapshotRow], bool]) -> None:
        groups = self._load()
        if len(groups) < 2:
            return
        self.write([r for _k, rows in groups for r in rows if keep(r)])
        for key, _rows in groups:
            self.blobs.delete(key)
            self._groups.pop(key, None)
