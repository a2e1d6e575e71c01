"""A store URI selects its storage backend.

URIs are parsed by :mod:`es_actors.storage.uris` (one set of rules for every scheme):

- a plain path or ``file:///path``: the local-disk backend (:mod:`es_actors.storage.local`:
  append + fdatasync tail, rename-published segments, flock fencing);
- ``blobdir:///path``: the whole-object backend over a local directory
  (:mod:`es_actors.storage.objects`: put-if-absent, get, list, delete only), the model of
  an object store;
- ``s3://bucket/prefix``: the whole-object backend on S3-compatible object storage
  (:mod:`es_actors.storage.objects.s3`: conditional PUTs through boto3);
- anything else (``gs://`` ...) is refused with an :class:`EsActorsError` naming the
  scheme and the ones known, before any network round trip.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from es_actors.config import StoreConfig
from es_actors.errors import EsActorsError
from es_actors.storage.api import BlobStore, OwnedPartitionLog, OwnerSnapshotStore, StorageBackend
from es_actors.storage.uris import LOCAL_SCHEMES, OBJECT_DIR_SCHEME, S3_SCHEME, StoreUri, parse_store_uri

__all__ = ["LOCAL_SCHEMES", "OBJECT_DIR_SCHEME", "StoreUri", "parse_store_uri", "open_backend", "local_root",
           "blob_store_of", "open_owned_partition", "aggregate_rows", "foreign_store", "recorded_at",
           "events_snapshot", "durable_heads"]

if TYPE_CHECKING:
    import pyarrow as pa

    from es_actors.storage.layout import StoreLayout
    from es_actors.storage.objects.s3 import S3BlobStore


def _open_local(root: Path) -> StorageBackend:
    from es_actors.storage.local.backend import LocalBackend

    return LocalBackend(root)


_BACKENDS: dict[str, Callable[[Path], StorageBackend]] = {
    "": _open_local,
    "file": _open_local,
}


def open_backend(uri: str | os.PathLike[str], config: StoreConfig | None = None) -> StorageBackend:
    """The storage backend a store URI selects (nothing is created or read yet). With ``config``,
    a whole-object backend's followers of a partition share one look every ``object_poll_s``
    (without it every poll looks)."""
    parsed = parse_store_uri(uri)
    if parsed.scheme in (S3_SCHEME, OBJECT_DIR_SCHEME):
        from es_actors.storage.objects import DirectoryBlobStore, ObjectBackend

        poll_s = config.object_poll_s if config is not None else 0.0
        blobs = _s3_blobs(parsed.path, parsed.endpoint) if parsed.scheme == S3_SCHEME else DirectoryBlobStore(parsed.path)
        return ObjectBackend(blobs, poll_s)
    return _BACKENDS[parsed.scheme](parsed.path)


@functools.lru_cache(maxsize=16)
def _s3_client(endpoint: str | None) -> Any:
    """One boto3 client per endpoint and process (clients are thread-safe; making one costs ~50 ms).
    Credentials: boto3's standard chain, read when the client is made."""
    import boto3

    from es_actors.storage.objects.s3 import client_config

    return boto3.client("s3", endpoint_url=endpoint, config=client_config())


def _s3_blobs(root: Path, endpoint: str | None) -> "S3BlobStore":
    from es_actors.storage.objects.s3 import S3BlobStore

    bucket, _, prefix = str(root).lstrip("/").partition("/")
    return S3BlobStore(bucket, prefix, client=_s3_client(endpoint))


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

    if layout.scheme == S3_SCHEME:
        return _s3_blobs(layout.root, layout.endpoint)
    if layout.scheme != OBJECT_DIR_SCHEME:
        raise EsActorsError(f"{layout.uri} is not a whole-object store")
    return DirectoryBlobStore(layout.root)


def foreign_store(layout: "StoreLayout") -> str | None:
    """Why the layout's directory holds the *other* backend's store (opening it with this URI would
    read its files as torn or damaged objects), or None. Looks at names only, and at whether
    ``store.json`` carries the whole-object completion mark."""
    from es_actors.storage.objects.blobs import ends_with_completion_mark
    from es_actors.storage.uris import format_store_uri

    root = layout.root
    if layout.scheme == S3_SCHEME:
        blobs = _s3_blobs(root, layout.endpoint)
        if blobs.any_under("log/") or blobs.any_under("tail/"):  # e.g. `aws s3 sync ./store s3://...`
            return (f"{layout.uri} holds a local-disk store's files (log/, tail/), not an s3 store's; a local "
                    "store is not moved to S3 by copying its files (open it where it is)")
        return None
    if not root.is_dir():
        return None
    partitions = any(p.is_dir() and p.name[1:].isdigit() for p in root.glob("p[0-9]*"))
    local_dirs = (root / "log").is_dir() or (root / "tail").is_dir()
    descriptor = layout.descriptor_path
    marked = descriptor.is_file() and ends_with_completion_mark(descriptor)
    if layout.scheme == OBJECT_DIR_SCHEME:
        unmarked = descriptor.is_file() and not marked
        if local_dirs or (unmarked and not partitions):
            what = "log/ and tail/" if local_dirs else "a store.json without the whole-object completion mark"
            return (f"{root} holds a local-disk store ({what}), not a {layout.scheme} store; "
                    f"open it as {format_store_uri('', root)}")
        return None
    if (marked or partitions) and not local_dirs:
        what = "store.json with the whole-object completion mark" if marked else "pNNNN/ objects"
        return (f"{root} holds a {OBJECT_DIR_SCHEME} (whole-object) store ({what}), not a local-disk store; "
                f"open it as {format_store_uri(OBJECT_DIR_SCHEME, root)}")
    return None


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


def aggregate_rows(
    layout: "StoreLayout", partition: int, aggregate_type: str, aggregate_id: str, first_version: int = 1,
    last_version: int | None = None, limit: int | None = None, backwards: bool = False,
) -> list[tuple[Any, ...]]:
    """Durable rows of one aggregate with versions in range, as stored (what ``Store.history`` shows):
    sorted by version (newest first if ``backwards``), at most ``limit``. Local disk reads them
    without scanning the partition; a whole-object store still filters a full view."""
    from es_actors.codecs.rows import table_to_rows

    if not layout.scheme:  # rows straight from the index, the tail and segments: no Arrow round trip
        from es_actors.storage.local.aggregate_read import read_aggregate_rows

        return read_aggregate_rows(layout, partition, aggregate_type, aggregate_id, first_version, last_version,
                                   limit, backwards)
    from es_actors.storage.objects import ObjectBackend

    reader = ObjectBackend(blob_store_of(layout)).reader(partition)
    return table_to_rows(reader.read_aggregate(aggregate_type, aggregate_id, first_version, last_version, limit,
                                               backwards))


def durable_heads(layout: "StoreLayout", partitions: int) -> dict[int, int]:
    """Each partition's last durable position now (0: empty), on either backend."""
    if not layout.scheme:
        from es_actors.storage.local.reader import durable_high_water

        return {i: durable_high_water(layout, i) for i in range(partitions)}
    backend = open_backend(layout.uri)
    return {i: backend.head_watch(i).refresh() for i in range(partitions)}


def recorded_at(layout: "StoreLayout", backend: StorageBackend, partition: int, position: int) -> int | None:
    """When the event at ``position`` was recorded (epoch µs), or None if none is durable there or it
    cannot be read now: a best-effort figure for lag in seconds, never an error."""
    if not layout.scheme:
        from es_actors.storage.local.range_reads import recorded_at_us

        return recorded_at_us(layout, partition, position)
    try:
        table = backend.reader(partition).read_range(position, position).select(["recorded_at"])
    except (EsActorsError, OSError):
        return None
    return int(table.column(0).cast("int64")[0].as_py()) if table.num_rows else None


def events_snapshot(layout: "StoreLayout", partitions: int) -> tuple[Any, "pa.Table"]:
    """Every durable event now as (sealed part, tail rows after it), consistent per partition: what a
    query's ``events`` relation shows. The sealed part is a list of local Parquet files (local disk),
    a ``pyarrow.dataset.Dataset`` over the segment objects (S3: pyarrow reads only the columns and
    row groups a query needs), or None (a blobdir store, whose segments plain Parquet readers cannot
    read: they come read, in the tail table)."""
    import pyarrow as pa

    from es_actors.codecs.rows import ARROW_SCHEMA

    if not layout.scheme:
        from es_actors.storage.local.reader import log_snapshot

        return log_snapshot(layout, partitions)
    from es_actors.storage.objects.sealed_view import sealed_and_tail
    from es_actors.storage.objects.view import CommitCache, read_segment

    blobs = blob_store_of(layout)
    keys: list[str] = []
    tails: list[pa.Table] = []
    for p in range(partitions):
        cache = CommitCache()
        segments, tail = sealed_and_tail(blobs, p, cache)
        if layout.scheme == S3_SCHEME:
            keys.extend(s.key for s in segments)
        else:
            tails.extend(read_segment(blobs, s, cache) for s in segments)
        tails.append(tail)
    rows = pa.concat_tables(tails) if tails else ARROW_SCHEMA.empty_table()
    if not keys:
        return None, rows
    return _s3_segments_dataset(layout, keys), rows


def sealed_dataset(layout: "StoreLayout", partitions: int) -> Any:
    """The exact sealed segment set now as a ``pyarrow.dataset.Dataset`` (each sealed event once, in
    the log's Arrow schema): what DuckDB (``duckdb.sql("... FROM ds")``) and Polars
    (``polars.scan_pyarrow_dataset(ds)``) read. On S3 through pyarrow's ``S3FileSystem``, with the
    same credential chain as the store (DuckDB's httpfs is not needed). The set stays readable for
    ``gc_grace_s`` after a compaction replaces it."""
    import pyarrow.dataset as ds

    from es_actors.codecs.rows import ARROW_SCHEMA

    if not layout.scheme:
        from es_actors.storage.local.reader import sealed_files

        return ds.dataset([str(p) for p in sealed_files(layout, partitions)], schema=ARROW_SCHEMA, format="parquet")
    if layout.scheme != S3_SCHEME:
        raise EsActorsError(f"{layout.uri}: a blobdir store's segments end with its completion mark, so plain Parquet "
                            "readers cannot read them; read it through the store (Store.history, read_only=True)")
    from es_actors.storage.objects.view import current_manifest

    blobs = _s3_blobs(layout.root, layout.endpoint)
    return _s3_segments_dataset(layout, [seg.key for p in range(partitions) for seg in current_manifest(blobs, p)[0].segments])


def _s3_segments_dataset(layout: "StoreLayout", keys: list[str]) -> Any:
    """A ``pyarrow.dataset`` over the segment objects ``keys`` of an S3 store (the log's schema)."""
    import pyarrow.dataset as ds

    from es_actors.codecs.rows import ARROW_SCHEMA

    blobs = _s3_blobs(layout.root, layout.endpoint)
    return ds.dataset([f"{blobs.bucket}/{blobs.prefix}{k}" for k in keys], schema=ARROW_SCHEMA, format="parquet",
                      filesystem=arrow_s3_filesystem(layout.endpoint))


def arrow_s3_filesystem(endpoint: str | None) -> Any:
    """pyarrow's S3 filesystem for a store's endpoint (AWS's when None); credentials from the AWS
    environment, profile or instance role, as boto3 finds them."""
    from urllib.parse import urlsplit

    import pyarrow.fs as pafs

    if endpoint is None:
        return pafs.S3FileSystem(region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"))
    parts = urlsplit(endpoint)
    return pafs.S3FileSystem(endpoint_override=parts.netloc, scheme=parts.scheme,
                             region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")
