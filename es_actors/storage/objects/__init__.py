"""The whole-object storage backend: a partition's log on put-if-absent, get, list and delete only.

No append, no rename, no overwrite: the operations every object store offers (S3 with
``If-None-Match: *``, GCS with ``ifGenerationMatch=0``). :class:`DirectoryBlobStore` provides
them on a local directory; an S3 client implementing :class:`~es_actors.storage.api.BlobStore`
replaces it. Design (ADR-014): one object per group commit in numbered tail slots, owners
fenced by epochs and put-if-absent, sealed segments published by numbered manifests
(:mod:`.log`); readers apply one set of visibility rules (:mod:`.view`).
"""

from __future__ import annotations

import threading
from pathlib import Path

from es_actors.config import StoreConfig
from es_actors.storage.api import BlobStore, Capabilities
from es_actors.storage.objects.blobs import DirectoryBlobStore
from es_actors.storage.objects.heads import ObjectHeadWatch
from es_actors.storage.objects.log import ObjectPartitionLog
from es_actors.storage.objects.reading import ObjectFollower, ObjectReader
from es_actors.storage.objects.snapshots import ObjectSnapshotStore
from es_actors.storage.objects.view import SegmentCache
from es_actors.storage.objects.watch import PartitionWatch


class ObjectBackend:
    """:class:`~es_actors.storage.api.StorageBackend` over a :class:`BlobStore`.

    Its followers of one partition share a :class:`PartitionWatch`: one look at the partition
    at most every ``poll_s`` seconds (0: at every poll; ``StoreConfig.object_poll_s`` through
    :func:`~es_actors.storage.backends.open_backend`), and its readers and followers one
    bounded cache of segments. Keep one backend object per process part that follows a store
    (a projection runner) so its followers share."""

    def __init__(self, blobs: BlobStore, poll_s: float = 0.0) -> None:
        self.blobs = blobs
        self.capabilities: Capabilities = blobs.capabilities
        self.poll_s = poll_s
        self.segments = SegmentCache()
        self._watches: dict[int, PartitionWatch] = {}
        self._lock = threading.Lock()

    @classmethod
    def on_directory(cls, root: Path, poll_s: float = 0.0) -> "ObjectBackend":
        return cls(DirectoryBlobStore(root), poll_s)

    def watch(self, partition: int) -> PartitionWatch:
        """The partition's watch its followers share."""
        with self._lock:
            w = self._watches.get(partition)
            if w is None:
                w = self._watches[partition] = PartitionWatch(self.blobs, partition, self.poll_s, self.segments)
            return w

    def open_log(self, partition: int, config: StoreConfig) -> ObjectPartitionLog:
        return ObjectPartitionLog(self.blobs, partition, config)

    def reader(self, partition: int) -> ObjectReader:
        return ObjectReader(self.blobs, partition, self.segments)

    def follower(self, partition: int, after: int = 0) -> ObjectFollower:
        return ObjectFollower(self.blobs, partition, after, self.watch(partition))

    def head_watch(self, partition: int) -> ObjectHeadWatch:
        return ObjectHeadWatch(self.watch(partition))

    def snapshots(self, partition: int) -> ObjectSnapshotStore:
        return ObjectSnapshotStore(self.blobs, partition)


__all__ = ["ObjectBackend", "DirectoryBlobStore", "ObjectPartitionLog", "ObjectReader", "ObjectFollower",
           "ObjectSnapshotStore", "PartitionWatch"]
