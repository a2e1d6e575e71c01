"""The local-disk backend behind the storage protocols (:mod:`es_actors.storage.api`).

Thin adapters over the modules that implement it (ADR-005, ADR-009): a write-ahead tail of
checksummed frames appended with ``write`` + ``fdatasync`` (``wal``), sealed Parquet
segments published by rename under a ``current`` generation symlink (``segments``), the
owner's recovery, group commit, sealing and compaction (``partition_log``), consistent
readers (``reader``) and followers (``follower``), snapshots (``snapshots``). Fencing is an
exclusive ``flock``: a second owner is refused at open with ``WriterFenced``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import pyarrow as pa

from es_actors.codecs.rows import filter_versions
from es_actors.config import StoreConfig
from es_actors.storage.api import Appended, Capabilities, Row
from es_actors.storage.local.aggregate_read import read_aggregate
from es_actors.storage.local.follower import LogFollower
from es_actors.storage.layout import StoreLayout
from es_actors.storage.local.partition_log import PartitionLog
from es_actors.storage.local.range_reads import read_range
from es_actors.storage.local.reader import durable_high_water, event_ids_at, read_partition, sealed_last_position
from es_actors.storage.local.snapshots import SnapshotStore

LOCAL_CAPABILITIES = Capabilities(
    can_append=True, can_rename=True, can_fsync=True, can_lock=True, atomic_put=False,
    injects_write_faults=True, background_sealing=True,
)


class LocalPartitionLog:
    """:class:`~es_actors.storage.api.PartitionLog` over :class:`PartitionLog` (which the write
    path still uses directly on its hot path: :attr:`owner`)."""

    def __init__(self, layout: StoreLayout, partition: int, config: StoreConfig) -> None:
        self.owner = PartitionLog(layout, partition, config)
        self.partition = partition

    @property
    def next_position(self) -> int:
        return self.owner.next_position

    @property
    def failed(self) -> str | None:
        return self.owner.failed

    def append(self, rows: Sequence[Row]) -> Appended:
        first = self.owner.next_position
        self.owner.append(list(rows))
        return Appended(first, first + len(rows) - 1)

    def read_positions(self, first: int, last: int) -> list[Row]:
        return self.owner.read_positions(first, last)

    def seal(self) -> None:
        self.owner.seal_all()

    def compact(self) -> int:
        return self.owner.compact()

    def close(self) -> None:
        self.owner.close()


class LocalReader:
    """:class:`~es_actors.storage.api.PartitionReader` of one local partition: aggregate reads use the
    stream index and the tail index (:mod:`~es_actors.storage.local.aggregate_read`); position ranges read
    only what overlaps them (:mod:`~es_actors.storage.local.range_reads`)."""

    def __init__(self, layout: StoreLayout, partition: int) -> None:
        self.layout, self.partition = layout, partition

    def high_water(self) -> int:
        return durable_high_water(self.layout, self.partition)

    def read_all(self) -> pa.Table:
        return read_partition(self.layout, self.partition)

    def read_range(self, first: int, last: int) -> pa.Table:
        """Only the segments and row groups overlapping the range, and the tail past the sealed log."""
        return read_range(self.layout, self.partition, first, last)

    def read_aggregate(
        self, aggregate_type: str, aggregate_id: str, first_version: int = 1, last_version: int | None = None,
        limit: int | None = None, backwards: bool = False,
    ) -> pa.Table:
        return read_aggregate(self.layout, self.partition, aggregate_type, aggregate_id, first_version, last_version,
                              limit, backwards)

    def sealed_through(self) -> int:
        """From the current generation's segment names (no file is read)."""
        return sealed_last_position(self.layout, self.partition)

    def event_ids_at(self, positions: Iterable[int]) -> dict[int, str]:
        """The tail files, then only the ``position`` and ``event_id`` columns of the sealed segments."""
        return event_ids_at(self.layout, self.partition, positions)


class LocalHeadWatch:
    """:class:`~es_actors.storage.api.HeadWatch` of a local partition: a follower that returns sealed
    runs as file names (nothing read) and reads each tail file once, from where it stopped."""

    def __init__(self, follower: LogFollower) -> None:
        self.follower = follower
        self.partition = follower.partition

    @property
    def head(self) -> int:
        return self.follower.head

    def refresh(self) -> int:
        while self.follower.poll(10_000_000) is not None:
            pass
        return self.follower.head


class LocalBackend:
    """:class:`~es_actors.storage.api.StorageBackend` of a store directory on a local file system."""

    capabilities = LOCAL_CAPABILITIES

    def __init__(self, root: Path) -> None:
        self.layout = StoreLayout(Path(root))

    def open_log(self, partition: int, config: StoreConfig) -> LocalPartitionLog:
        return LocalPartitionLog(self.layout, partition, config)

    def reader(self, partition: int) -> LocalReader:
        return LocalReader(self.layout, partition)

    def follower(self, partition: int, after: int = 0) -> LogFollower:
        return LogFollower(self.layout, partition, after)

    def head_watch(self, partition: int) -> "LocalHeadWatch":
        return LocalHeadWatch(LogFollower(self.layout, partition, 0))

    def snapshots(self, partition: int) -> SnapshotStore:
        return SnapshotStore(self.layout.root, partition)

    def __repr__(self) -> str:
        return f"LocalBackend({str(self.layout.root)!r})"


__all__ = ["LocalBackend", "LocalPartitionLog", "LocalReader", "LOCAL_CAPABILITIES", "filter_versions"]
