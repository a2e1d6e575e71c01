"""What every storage backend provides: the contracts the write and read paths rely on (ADR-014).

A backend stores, per partition, a gapless log of event rows (tuples in
``es_actors.codecs.rows.COLUMNS`` order, ``position`` gapless from 1) and the partition's
snapshots. The protocols below say what the layers above may rely on, independent of how
bytes are kept (local files with append + fsync, or whole objects with put-if-absent):

- :class:`PartitionLog`: the *owned, fenced, durable* log of one partition. Opening it
  recovers (a torn end left by a crash is cut, damage anywhere else is refused with
  ``StoreCorrupted`` and nothing is changed) and takes ownership. *Fenced*: at most one
  owner appends at a time; a second owner is refused (``WriterFenced``) either when it opens
  (a lock) or, where the backend has no locks, the older owner is refused at its next append
  once a newer one took over (an epoch and put-if-absent), so no acknowledged event is lost
  or written twice. *Acknowledged = durable*: when :meth:`PartitionLog.append` returns, the
  rows survive a crash of the process and of the machine; when it raises ``StorageError``
  the batch was not acknowledged and every acknowledged row is intact.
- :class:`PartitionReader`: a consistent view for any process that does not own the
  partition: every durable row once, in position order, never a partial commit, while the
  owner appends, seals and compacts (the consistent-read retry of
  :mod:`es_actors.storage.consistent` lives behind it).
- :class:`PartitionFollower`: reads what follows a position and keeps its place.
- :class:`SnapshotStore`: snapshot rows of a partition (a cache: the log is the truth).
- :class:`BlobStore`: the primitive whole-object operations a backend without append or
  rename is built on (an S3 implementation replaces it), with :class:`Capabilities`.

Only types and protocols live here; backends implement them (``storage.local``,
``storage.objects``), :mod:`es_actors.storage.backends` picks one from a URI, and
:mod:`es_actors.testing.storage_conformance` is the suite every backend must pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol, Sequence, runtime_checkable

import numpy as np
import pyarrow as pa

from es_actors.config import StoreConfig
from es_actors.storage.lost_ranges import LostRanges
from es_actors.codecs.snapshot_rows import SnapshotRow

Row = tuple[Any, ...]


class ObjectIncomplete(Exception):
    """A blob store's ``get`` of an object that is not whole yet (being written, or torn by a crash)."""


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a backend (or its blob store) can do; the conformance suite skips what it cannot, saying why."""

    can_append: bool  # bytes can be added to an existing file/object (a WAL); else one object per commit
    can_rename: bool  # an atomic rename/replace publishes a file; else put-if-absent publishes
    can_fsync: bool  # the client makes bytes durable (fsync); else a completed put is durable
    can_lock: bool  # an OS lock fences a second writer at open; else epochs + put-if-absent fence
    atomic_put: bool  # a put is seen whole and durable or not at all (S3, GCS; the directory store's completion mark)
    injects_write_faults: bool = False  # tests can make writes fail (ENOSPC, EIO) through hooks
    background_sealing: bool = False  # sealing/compaction run on their own thread while appends go on


@dataclass(frozen=True, slots=True)
class Appended:
    """Positions a durable append took: ``first..last`` (inclusive)."""

    first: int
    last: int

    @property
    def count(self) -> int:
        return self.last - self.first + 1


@runtime_checkable
class PartitionLog(Protocol):
    """The owner's handle on one partition's log (see the module docstring for the guarantees)."""

    partition: int

    @property
    def next_position(self) -> int:
        """The position the next appended row must have."""
        ...

    @property
    def failed(self) -> str | None:
        """Why this owner may write nothing more (a failed sync, or fenced), or None."""
        ...

    def append(self, rows: Sequence[Row]) -> Appended:
        """Durably append rows whose positions continue the log (one group commit).

        Raises ``StorageError`` (not acknowledged, log intact), ``WriterFenced`` (another owner
        took over: not acknowledged), ``StoreCorrupted`` (positions do not continue)."""
        ...

    def read_positions(self, first: int, last: int) -> list[Row]:
        """Rows ``first..last`` as the owner sees them (everything acknowledged)."""
        ...

    def seal(self) -> None:
        """Move everything appended so far into sealed, immutable segments (a clean close)."""
        ...

    def compact(self) -> int:
        """Merge runs of small sealed segments; returns how many segments were merged away."""
        ...

    def close(self) -> None:
        """Stop writing and give up ownership; unsealed rows stay durable for the next owner."""
        ...


class OwnedPartitionLog(Protocol):
    """What the partition actor uses of its owned log (both backends): appends, the start-up
    index, hydration by position, and stats. Local disk: :class:`~es_actors.storage.partition_log.PartitionLog`
    itself (the hot path pays no adapter)."""

    partition: int
    lost: LostRanges
    seal_error: str | None

    @property
    def next_position(self) -> int: ...

    @property
    def failed(self) -> str | None: ...

    @property
    def durable_writes(self) -> int: ...

    @property
    def unsealed_count(self) -> int: ...

    @property
    def sealed_segment_count(self) -> int: ...

    def append(self, rows: list[Row]) -> object: ...

    def read_positions(self, first: int, last: int) -> list[Row]: ...

    def read_at(self, positions: "np.ndarray | Sequence[int]", columns: list[str]) -> dict[str, list[Any]]: ...

    def index_columns(self) -> pa.Table: ...

    def seal_all(self) -> None: ...

    def compact(self) -> int: ...

    def close(self) -> None: ...


@runtime_checkable
class PartitionReader(Protocol):
    """A consistent read-only view of one partition, usable while the owner writes."""

    partition: int

    def high_water(self) -> int:
        """The last durable position (0 if none)."""
        ...

    def read_all(self) -> pa.Table:
        """Every durable row, in position order."""
        ...

    def read_range(self, first: int, last: int) -> pa.Table:
        """Durable rows with ``first <= position <= last``, in position order."""
        ...

    def read_aggregate(
        self, aggregate_type: str, aggregate_id: str, first_version: int = 1, last_version: int | None = None,
        limit: int | None = None, backwards: bool = False,
    ) -> pa.Table:
        """Durable rows of one aggregate with versions in range, in version (= position) order, newest
        first if ``backwards``; at most ``limit`` rows (the first ones in that order) unless None."""
        ...

    def sealed_through(self) -> int:
        """The last position sealed now (0 if none). Sealed rows are never cut back; a row read from the
        tail after it may be (a commit whose sync failed), so a reader that acts on one confirms it
        with :meth:`event_ids_at`."""
        ...

    def event_ids_at(self, positions: Iterable[int]) -> dict[int, str]:
        """``event_id`` of the events durable now at these positions; a position missing from the
        answer holds nothing now."""
        ...


@runtime_checkable
class EventBatch(Protocol):
    """Rows ``first..last`` of a partition returned by a follower."""

    partition: int
    first: int
    last: int

    def to_table(self, columns: list[str] | None = None) -> pa.Table: ...


@runtime_checkable
class PartitionFollower(Protocol):
    """Reads what follows a position and keeps its place (projections, subscriptions)."""

    partition: int
    after: int  # the last position returned

    def poll(self, max_rows: int = 1_000_000) -> EventBatch | None:
        """The next contiguous durable rows after :attr:`after`, or None if nothing newer is durable."""
        ...

    def seek(self, after: int) -> None:
        """Continue after ``after`` (e.g. a checkpoint, when a batch was not applied)."""
        ...


@runtime_checkable
class HeadWatch(Protocol):
    """Where one partition's durable log ends, looked at again on each :meth:`refresh` (projection
    status and lag): cheap, it reads no more rows than it must."""

    partition: int

    @property
    def head(self) -> int:
        """The newest durable position seen (0: none)."""
        ...

    def refresh(self) -> int:
        """Look again; the head."""
        ...


@runtime_checkable
class SnapshotStore(Protocol):
    """A partition's snapshot rows: immutable groups, newest first when looked up."""

    def candidates(self, aggregate_type: str, aggregate_id: str) -> list[SnapshotRow]: ...

    def all_rows(self) -> list[SnapshotRow]: ...

    def write(self, rows: Iterable[SnapshotRow]) -> object | None: ...

    def consolidate(self, keep: Callable[[SnapshotRow], bool]) -> None: ...


class OwnerSnapshotStore(SnapshotStore, Protocol):
    """The owner's snapshot store: also says how many groups it holds (it consolidates them)."""

    @property
    def file_count(self) -> int: ...


@runtime_checkable
class BlobStore(Protocol):
    """Whole-object operations only: what an object store offers (no append, rename or overwrite).

    Keys are ``/``-separated relative names. ``put_if_absent`` is the only write; it is the
    fence: of two writers of one key exactly one succeeds."""

    capabilities: Capabilities

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create ``key`` durably with ``data``; False (and nothing written) if it exists."""
        ...

    def get(self, key: str) -> bytes:
        """The object's bytes; ``FileNotFoundError`` if there is none, :class:`ObjectIncomplete` if it
        is not whole yet (a store whose puts are atomic never raises it)."""
        ...

    def exists(self, key: str) -> bool:
        """Whether ``key`` exists (whole or still being written)."""
        ...

    def list(self, prefix: str) -> list[str]:
        """Keys under ``prefix`` (a "directory" ending in ``/``), sorted."""
        ...

    def delete(self, key: str) -> None:
        """Remove ``key`` (no error if already gone)."""
        ...


class StorageBackend(Protocol):
    """One store's storage: opens owned logs, readers, followers and snapshot stores per partition."""

    capabilities: Capabilities

    def open_log(self, partition: int, config: StoreConfig) -> PartitionLog:
        """Recover and take ownership of a partition's log (fencing any other owner)."""
        ...

    def reader(self, partition: int) -> PartitionReader: ...

    def follower(self, partition: int, after: int = 0) -> PartitionFollower: ...

    def head_watch(self, partition: int) -> HeadWatch: ...

    def snapshots(self, partition: int) -> SnapshotStore: ...
