"""The whole-object storage backend: a partition's log on put-if-absent, get, list and delete only.

No append, no rename, no overwrite: the operations every object store offers (S3 with
``If-None-Match: *``, GCS with ``ifGenerationMatch=0``). :class:`DirectoryBlobStore` provides
them on a local directory; an S3 client implementing :class:`~es_actors.storage.api.BlobStore`
replaces it. Design (ADR-014): one object per group commit in numbered tail slots, owners
fenced by epochs and put-if-absent, sealed segments published by numbered manifests
(:mod:`.log`); readers apply one set of visibility rules (:mod:`.view`).
"""

from __future__ import annotations

from pathlib import Path

from es_actors.config import StoreConfig
from es_actors.storage.api import BlobStore, Capabilities
from es_actors.storage.objects.blobs import DirectoryBlobStore
from es_actors.storage.objects.heads import ObjectHeadWatch
from es_actors.storage.objects.log import ObjectPartitionLog
from es_actors.storage.objects.reading import ObjectFollower, ObjectReader
from es_actors.storage.objects.snapshots import ObjectSnapshotStore


class ObjectBackend:
    """:class:`~es_actors.storage.api.StorageBackend` over a :class:`BlobStore`."""

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs
        self.capabilities: Capabilities = blobs.capabilities

    @classmethod
    def on_directory(cls, root: Path) -> "ObjectBackend":
        return cls(DirectoryBlobStore(root))

    def open_log(self, partition: int, config: StoreConfig) -> ObjectPartitionLog:
        return ObjectPartitionLog(self.blobs, partition, config)

    def reader(self, partition: int) -> ObjectReader:
        return ObjectReader(self.blobs, partition)

    def follower(self, partition: int, after: int = 0) -> ObjectFollower:
        return ObjectFollower(self.blobs, partition, after)

    def head_watch(self, partition: int) -> ObjectHeadWatch:
        return ObjectHeadWatch(self.blobs, partition)

    def snapshots(self, partition: int) -> ObjectSnapshotStore:
        return ObjectSnapshotStore(self.blobs, partition)


__all__ = ["ObjectBackend", "DirectoryBlobStore", "ObjectPartitionLog", "ObjectReader", "ObjectFollower",
           "ObjectSnapshotStore"]
