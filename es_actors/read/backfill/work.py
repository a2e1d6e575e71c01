"""Where a backfill keeps its work, whatever the store: one interface, two implementations.

- a local-disk store: :class:`~es_actors.read.backfill.files.BackfillDir`, files under the
  store's directory (fsync + rename, an ``flock`` for "running");
- an object-storage store (s3://, blobdir://): :class:`~es_actors.read.backfill.objects.BackfillObjects`,
  objects in the bucket (put-if-absent, numbered checkpoints, a lease for "running").

Either way the work is IN THE STORE, never on one node's disk, so any node resumes it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol

import pyarrow as pa

from es_actors.read.backfill.files import BackfillDir, TaskCheckpoint
from es_actors.read.backfill.plan import BackfillPlan
from es_actors.storage.layout import StoreLayout

_VERSION = re.compile(r"^v(\d+)$")


class BackfillWork(Protocol):
    """A backfill's plan, task checkpoints and parts, run lock, stop request and installed mark."""

    name: str  # backfills/<projection>/v<version>[-purpose], relative to the store
    where: str  # for messages: a path or a URI
    purpose: str

    @property
    def local_root(self) -> Path: ...

    def lock(self, owner: str | None = None) -> None: ...

    def running(self) -> bool: ...

    def unlock(self) -> None: ...

    def request_stop(self, text: str) -> None: ...

    def stop_requested(self) -> bool: ...

    def clear_stop_request(self) -> None: ...

    def installed(self) -> str | None: ...

    def mark_installed(self, text: str) -> None: ...

    def load_plan(self) -> BackfillPlan | None: ...

    def save_plan(self, plan: BackfillPlan) -> None: ...

    def discard(self) -> None: ...

    def load_checkpoint(self, task: str) -> TaskCheckpoint | None: ...

    def checkpoint_problem(self, task: str) -> str | None: ...

    def table_file(self, ck: TaskCheckpoint, table: str) -> Path: ...

    def write_checkpoint(self, ck: TaskCheckpoint, tables: dict[str, pa.Table], dead_letters: pa.Table) -> None: ...

    def drop_local_copies(self) -> None: ...


def open_work(layout: StoreLayout, projection: str, version: int, purpose: str = "", scratch: Path | None = None) -> BackfillWork:
    """The backfill's work in ``layout``'s store. ``scratch``: on object storage, the local directory
    parts are copied to for DuckDB to read (default: a temporary directory made on first use)."""
    if not layout.scheme:
        return BackfillDir(layout.root, projection, version, purpose)
    from es_actors.read.backfill.objects import BackfillObjects
    from es_actors.storage.backends import blob_store_of

    return BackfillObjects(blob_store_of(layout), layout.uri, projection, version, purpose, scratch)


def backfilled_versions(layout: StoreLayout, projection: str) -> list[int]:
    """The versions of ``projection`` a backfill was started for (not parallel catch-ups), ascending."""
    if not layout.scheme:
        base = layout.root / "backfills" / projection
        names = [d.name for d in base.iterdir()] if base.is_dir() else []
    else:
        from es_actors.storage.backends import blob_store_of

        names = [k.rsplit("/", 1)[-1] for k in blob_store_of(layout).list(f"backfills/{projection}/versions/")]
    return sorted(int(m.group(1)) for n in names if (m := _VERSION.match(n)))
