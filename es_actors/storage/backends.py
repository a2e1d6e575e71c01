"""A store URI selects its storage backend.

- a plain path or ``file:///path``: the local-disk backend (:mod:`es_actors.storage.local`:
  append + fdatasync tail, rename-published segments, flock fencing);
- ``blobdir:///path``: the whole-object backend over a local directory
  (:mod:`es_actors.storage.objects`: put-if-absent, get, list, delete only), the model of
  an object store;
- anything else (``s3://``, ``gs://`` ...) is refused with an :class:`EsActorsError` naming the
  scheme and the ones known, before any network round trip.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from es_actors.config import StoreConfig
from es_actors.errors import EsActorsError
from es_actors.storage.api import BlobStore, OwnedPartitionLog, OwnerSnapshotStore, StorageBackend

if TYPE_CHECKING:
    from es_actors.storage.layout import StoreLayout

LOCAL_SCHEMES = ("", "file")
OBJECT_DIR_SCHEME = "blobdir"


@dataclass(frozen=True, slots=True)
class StoreUri:
    """A parsed store URI: its scheme ("" for a plain path) and the local directory it names."""

    scheme: str
    path: Path


def _open_local(root: Path) -> StorageBackend:
    from es_actors.storage.local.backend import LocalBackend

    return LocalBackend(root)


def _open_blob_dir(root: Path) -> StorageBackend:
    from es_actors.storage.objects import ObjectBackend

    return ObjectBackend.on_directory(root)


_BACKENDS: dict[str, Callable[[Path], StorageBackend]] = {
    "": _open_local,
    "file": _open_local,
    OBJECT_DIR_SCHEME: _open_blob_dir,
}


def parse_store_uri(uri: str | os.PathLike[str]) -> StoreUri:
    """Split a store URI; EsActorsError for a scheme no backend serves."""
    text = os.fspath(uri)
    if "://" not in text:
        return StoreUri("", Path(text).expanduser().resolve())
    scheme, rest = text.split("://", 1)
    scheme = scheme.lower()
    if scheme not in _BACKENDS:
        known = ", ".join(f"{s}://" for s in _BACKENDS if s) + " or a plain path"
        raise EsActorsError(
            f"{text!r}: {scheme} stores are not supported yet: no storage backend serves the {scheme!r} scheme "
            f"(known: {known}); see adrs/ADR-014-storage-interface.md"
        )
    if scheme == "file":
        from pyarrow import fs as pafs

        filesystem, path = pafs.FileSystem.from_uri(text)
        assert isinstance(filesystem, pafs.LocalFileSystem)
        return StoreUri(scheme, Path(path).resolve())
    if rest.startswith("/"):
        return StoreUri(scheme, Path(rest).resolve())
    raise EsActorsError(f"{text!r}: a {scheme} URI names a local directory: {scheme}:///absolute/path")


def open_backend(uri: str | os.PathLike[str]) -> StorageBackend:
    """The storage backend a store URI selects (nothing is created or read yet)."""
    parsed = parse_store_uri(uri)
    return _BACKENDS[parsed.scheme](parsed.path)


def local_root(uri: str | os.PathLike[str]) -> Path:
    """The directory of a local-disk store; EsActorsError for a URI of another backend."""
    parsed = parse_store_uri(uri)
    if parsed.scheme not in LOCAL_SCHEMES:
        raise EsActorsError(
            f"{os.fspath(uri)!r}: {parsed.scheme} stores are not supported yet by Store.open (the partition "
            "actors write through the local-disk log); the storage backend exists for the conformance suite and "
            "the object-storage work (adrs/ADR-014-storage-interface.md)"
        )
    return parsed.path


def blob_store_of(layout: "StoreLayout") -> BlobStore:
    """The blob store of a whole-object store."""
    from es_actors.storage.objects import DirectoryBlobStore

    if layout.scheme != OBJECT_DIR_SCHEME:
        raise EsActorsError(f"{layout.uri} is not a whole-object store")
    return DirectoryBlobStore(layout.root)


def open_owned_partition(
    layout: "StoreLayout", partition: int, config: StoreConfig
) -> tuple[OwnedPartitionLog, OwnerSnapshotStore]:
    """The owner's log and snapshot store of a partition (recovered and fenced), for the write path.

    On local disk these are the local classes themselves (the command path calls them directly)."""
    if not layout.scheme:
        from es_actors.storage.local.partition_log import PartitionLog
        from es_actors.storage.local.snapshots import SnapshotStore

        return PartitionLog(layout, partition, config), SnapshotStore(layout.root, partition)
    from es_actors.storage.objects import ObjectBackend

    backend = ObjectBackend(blob_store_of(layout))
    log = backend.open_log(partition, config)
    return log, backend.snapshots(partition)


def aggregate_rows(layout: "StoreLayout", partition: int, aggregate_type: str, aggregate_id: str) -> list[tuple[Any, ...]]:
    """Every durable row of one aggregate, as stored (what ``Store.history`` shows)."""
    if not layout.scheme:
        from es_actors.storage.local.reader import read_partition_rows

        return read_partition_rows(layout, partition, (aggregate_type, aggregate_id))
    from es_actors.codecs.rows import table_to_rows

    return table_to_rows(open_backend(layout.uri).reader(partition).read_aggregate(aggregate_type, aggregate_id))
