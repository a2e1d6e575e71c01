"""Bench data sets copied into S3 stores on the local S3-compatible server (set-up, never timed).

The server is moto's, in a process of its own on 127.0.0.1 (``start_local_s3_process``), so its
Python does not share a GIL with the clients it serves. :func:`load_into_s3` writes every
partition of a data set's store through the object-storage log (the rows as they are, in commits of
``COMMIT_ROWS``), one sealed segment per source segment, so the S3 store holds the same events in
the same segment boundaries as the local copy. :func:`shared_bank_store` keeps one server and one
loaded copy per data set for the whole run (``projection.py`` and ``query_events.py`` read the
same S3 store; it is read only to them); :func:`stop_shared` ends it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import log

#: Rows per commit (one PUT each) while loading; a source segment (50,000 rows) is two commits.
COMMIT_ROWS = 25_000
BUCKET = "es-actors-bench"


@dataclass(frozen=True)
class S3Store:
    """A data set loaded into an S3 store: its URI, store id and the (untimed) load."""

    uri: str
    store_id: str
    events: int
    load_s: float


def load_into_s3(src: Path, s3: Any, name: str, commit_rows: int = COMMIT_ROWS,
                 seal_rows: int | None = None) -> S3Store:
    """Every partition of the local store ``src`` written into a new S3 store ``name`` on ``s3`` (a
    :class:`~es_actors.testing.local_s3.LocalS3`): the same rows (positions, ids, payloads,
    recorded_at), appended through the whole-object log in commits of ``commit_rows``, and sealed
    after each source segment (``seal_rows=None``: the same segments as ``src``) or every
    ``seal_rows`` rows, the rest at the end."""
    import pyarrow.parquet as pq

    from es_actors.codecs.rows import table_to_rows
    from es_actors.config import StoreConfig
    from es_actors.storage.backends import blob_store_of
    from es_actors.storage.layout import StoreLayout
    from es_actors.storage.objects import ObjectBackend

    src_layout = StoreLayout.from_uri(src)
    src_desc = src_layout.read_descriptor()
    if src_desc is None:
        raise RuntimeError(f"{src} is not an es_actors store (no store.json)")
    partitions = src_desc.partitions
    uri = f"s3://{s3.bucket(BUCKET)}/{name}-{os.getpid()}?endpoint_url={s3.endpoint_url}"
    layout = StoreLayout.from_uri(uri)
    desc = layout.create_or_check(partitions, partitions)
    backend = ObjectBackend(blob_store_of(layout))
    config = StoreConfig(seal_rows=seal_rows or 10**12)  # None: sealed here, once per source segment
    events = 0
    t0 = time.perf_counter()
    for p in range(partitions):
        files = sorted((src / "log" / f"p{p:04d}" / "current").glob("*.parquet"))
        log_ = backend.open_log(p, config)
        try:
            for f in files:
                rows = table_to_rows(pq.read_table(f))
                for i in range(0, len(rows), commit_rows):
                    log_.append(rows[i:i + commit_rows])
                if seal_rows is None:
                    log_.seal()
                events += len(rows)
            log_.seal_all()
        finally:
            log_.close()
    load_s = time.perf_counter() - t0
    log(f"s3: {events:,} events in {partitions} partition(s) of {src} loaded into {layout.uri.split('?')[0]} "
        f"in {load_s:.1f} s ({events / load_s:,.0f} events/s, untimed set-up)")
    return S3Store(uri, desc.store_id, events, load_s)


_server: Any = None
_loaded: dict[Path, S3Store] = {}


def shared_server() -> Any:
    """The run's one local S3 server (its own process), started on first use, stopped by
    :func:`stop_shared` or at exit."""
    global _server
    if _server is None:
        from es_actors.testing.local_s3 import start_local_s3_process

        _server = start_local_s3_process()
        log(f"s3: local S3-compatible server (moto, own process) at {_server.endpoint_url}")
    return _server


def shared_bank_store(store_dir: Path, name: str) -> S3Store:
    """``store_dir`` loaded into the shared server once per run (read only to every bench after)."""
    if store_dir not in _loaded:
        _loaded[store_dir] = load_into_s3(store_dir, shared_server(), name)
    return _loaded[store_dir]


def stop_shared() -> None:
    """Stop the shared server (its objects live in its memory) and forget what it held."""
    global _server
    if _server is not None:
        _server.stop()
        _server = None
    _loaded.clear()
