"""A backfill's work kept in an object-storage store (s3://, blobdir://), so any node can resume it;
the same interface as :class:`~es_actors.read.backfill.files.BackfillDir` (ADR-016, ADR-019)::

    backfills/<projection>/versions/v<version>        a marker: this version was backfilled (status lists them)
    backfills/<projection>/v<version>[-purpose]/
        plan.json                                     the plan
        lease/<n>.json                                who runs it, until when (es_actors.read.backfill.lease)
        stop-requested.json, installed.json           as on local disk
        tasks/<task>/ck-<seq>.json                    the task's checkpoints: the highest whole one wins
        tasks/<task>/<seq>-<token>--<table>.parquet   the tables that checkpoint names

Only put-if-absent, get, list and delete: a checkpoint is a new object under the next number
written after its tables (which carry a token of the attempt that wrote them, so a retried
attempt never meets a half-written predecessor's), so a task killed at any point leaves the
previous checkpoint whole (a torn checkpoint object keeps its number; the next one is written
after it); of two attempts of one task that race for a number (a zombie), one writes it and the
other fails and is retried. Older checkpoints and their tables go after a new one
is written. Parts are read where DuckDB can read them: copied on first use into ``scratch`` (a
local directory the reading connection may read: a task's temporary directory, or the read-model
directory of the projector that installs them).
"""

from __future__ import annotations

import re
import shutil
import tempfile
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from es_actors.errors import EsActorsError, invalid_file
from es_actors.read.backfill.files import DEAD_LETTERS, PART_PARQUET, BackfillBusy, TaskCheckpoint
from es_actors.read.backfill.lease import Lease, LeaseHeld
from es_actors.read.backfill.plan import BackfillPlan
from es_actors.storage.api import BlobStore, ObjectIncomplete

_CK = re.compile(r"^ck-(\d{10})\.json$")


class StoredCheckpoint(TaskCheckpoint):
    """A checkpoint as kept in the bucket: also the stem of its tables' keys."""

    parts: str


class BackfillObjects:
    """One backfill of one projection version in a whole-object store."""

    def __init__(self, blobs: BlobStore, uri: str, projection: str, version: int, purpose: str, scratch: Path | None) -> None:
        self.blobs = blobs
        self.purpose = purpose
        self.name = f"backfills/{projection}/v{version}" + (f"-{purpose}" if purpose else "")
        self.prefix = self.name + "/"
        self.where = f"{uri.split('?')[0].rstrip('/')}/{self.name}"
        self.marker = f"backfills/{projection}/versions/v{version}"
        self.scratch = scratch
        self._copies: Path | None = None
        self.lease = Lease(blobs, self.prefix + "lease/")

    @property
    def local_root(self) -> Path:
        """Where DuckDB may read the parts (they are copied here on first use): ``scratch``, else
        a temporary directory of this process."""
        if self._copies is None:
            base = self.scratch or Path(tempfile.mkdtemp(prefix="es-actors-backfill-"))
            self._copies = base / self.name
            self._copies.mkdir(parents=True, exist_ok=True)
        return self._copies

    def drop_local_copies(self) -> None:
        """Remove the parts copied here (the bucket keeps them)."""
        if self._copies is not None:
            shutil.rmtree(self._copies if self.scratch else self._copies.parents[len(Path(self.name).parts) - 1],
                          ignore_errors=True)
            self._copies = None

    # -- the run's lease -----------------------------------------------------------------------

    def lock(self, owner: str | None = None) -> None:
        try:
            self.lease.acquire(owner)
        except LeaseHeld as exc:
            raise BackfillBusy(f"another backfill of {self.where} is running: its lease {exc}") from None

    def running(self) -> bool:
        return self.lease.held_by_other() is not None or (bool(self.lease.owner) and not self.lease.lost)

    def unlock(self) -> None:
        self.lease.release()

    # -- stop requests, installed mark ---------------------------------------------------------

    def _replace(self, key: str, data: bytes) -> None:
        """Whole-object 'overwrite' under the run's lease: delete, then put."""
        self.blobs.delete(key)
        if not self.blobs.put_if_absent(key, data):
            raise BackfillBusy(f"{self.where}: {key} was written by another run meanwhile")

    def request_stop(self, text: str) -> None:
        self.blobs.put_if_absent(self.prefix + "stop-requested.json", text.encode())  # one there already: asked

    def stop_requested(self) -> bool:
        """A stop was asked for, or this run lost its lease (another took over: it must stop too)."""
        return self.lease.lost or self.blobs.exists(self.prefix + "stop-requested.json")

    def clear_stop_request(self) -> None:
        self.blobs.delete(self.prefix + "stop-requested.json")

    def installed(self) -> str | None:
        try:
            return self.blobs.get(self.prefix + "installed.json").decode()
        except (FileNotFoundError, ObjectIncomplete):
            return None

    def mark_installed(self, text: str) -> None:
        self._replace(self.prefix + "installed.json", text.encode())

    # -- the plan ------------------------------------------------------------------------------

    def load_plan(self) -> BackfillPlan | None:
        try:
            data = self.blobs.get(self.prefix + "plan.json")
        except (FileNotFoundError, ObjectIncomplete):
            return None  # none, or torn by a crash before it was whole: planned again
        try:
            return BackfillPlan.model_validate_json(data)
        except ValidationError as exc:
            raise EsActorsError(f"{self.where}/plan.json is not a backfill plan this version can read "
                                f"({exc.error_count()} errors); start again with restart") from None

    def save_plan(self, plan: BackfillPlan) -> None:
        self._replace(self.prefix + "plan.json", plan.to_json().encode())
        self.blobs.put_if_absent(self.marker, b"")

    def discard(self) -> None:
        """Remove the checkpoints, the installed mark and the plan (in that order: the plan names the tasks)."""
        plan = self.load_plan()
        for task in plan.tasks if plan is not None else []:
            for key in self.blobs.list(self._task_prefix(task.id)):
                self.blobs.delete(key)
        for name in ("installed.json", "stop-requested.json", "plan.json"):
            self.blobs.delete(self.prefix + name)

    # -- task checkpoints ----------------------------------------------------------------------

    def _task_prefix(self, task: str) -> str:
        return f"{self.prefix}tasks/{task}/"

    def _checkpoint_keys(self, task: str) -> list[str]:
        keys = [k for k in self.blobs.list(self._task_prefix(task)) if _CK.match(k.rsplit("/", 1)[-1])]
        return sorted(keys, reverse=True)

    def _table_key(self, ck: StoredCheckpoint, table: str) -> str:
        return f"{self._task_prefix(ck.task)}{ck.parts}--{table}.parquet"

    def _read(self, task: str) -> tuple[StoredCheckpoint | None, str | None]:
        """(the highest whole checkpoint whose tables are all there, why the highest is not usable)."""
        problem = None
        names = set(self.blobs.list(self._task_prefix(task)))
        for key in self._checkpoint_keys(task):
            try:
                ck = StoredCheckpoint.model_validate_json(self.blobs.get(key))
            except FileNotFoundError:
                continue
            except ObjectIncomplete:
                problem = problem or f"{self.where}/{key[len(self.prefix):]} is not whole (torn by a crash)"
                continue
            except ValidationError as exc:
                problem = problem or f"{self.where}/{key[len(self.prefix):]} is not a checkpoint this version reads ({invalid_file(exc)})"
                continue
            missing = [t for t in [*ck.tables, DEAD_LETTERS] if self._table_key(ck, t) not in names]
            if missing:
                problem = problem or f"{self.where}/{key[len(self.prefix):]} names tables that are missing ({', '.join(missing)})"
                continue
            return ck, problem
        return None, problem

    def load_checkpoint(self, task: str) -> TaskCheckpoint | None:
        return self._read(task)[0]

    def checkpoint_problem(self, task: str) -> str | None:
        ck, problem = self._read(task)
        return problem if ck is None else None

    def table_file(self, ck: TaskCheckpoint, table: str) -> Path:
        """The table of a checkpoint as a local Parquet file (copied from the bucket on first use)."""
        assert isinstance(ck, StoredCheckpoint), ck
        key = self._table_key(ck, table)
        path = self.local_root / key[len(self.prefix):]
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
            tmp.write_bytes(self.blobs.get(key))
            tmp.replace(path)
        return path

    def write_checkpoint(self, ck: TaskCheckpoint, tables: dict[str, pa.Table], dead_letters: pa.Table) -> None:
        """The tables first (new keys), then the checkpoint naming them under the next number
        (put-if-absent: taken means another attempt of this task wrote it at the same moment, and
        this one fails; Ray runs it again from the newest); then the older checkpoints and their
        tables go. Every checkpoint is whole and self-consistent, so whichever is highest is a
        correct state of the share."""
        stored = StoredCheckpoint(**ck.model_dump(), parts=f"{ck.seq:010d}-{uuid.uuid4().hex[:12]}")
        for name, table in [*tables.items(), (DEAD_LETTERS, dead_letters)]:
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink, **PART_PARQUET)
            self.blobs.put_if_absent(self._table_key(stored, name), sink.getvalue().to_pybytes())
        listed = self._checkpoint_keys(ck.task)  # a torn one (a crash mid-put) keeps its number: the next is free
        number = max(ck.seq, int(_CK.match(listed[0].rsplit("/", 1)[-1]).group(1)) + 1 if listed else 0)  # type: ignore[union-attr]
        key = f"{self._task_prefix(ck.task)}ck-{number:010d}.json"
        if not self.blobs.put_if_absent(key, stored.model_dump_json().encode()):
            raise BackfillBusy(f"{self.where}: checkpoint {ck.seq} of task {ck.task} was written by another attempt of it; "
                               "this one stops (the task resumes from the newest checkpoint)")
        keep = {key, *(self._table_key(stored, t) for t in [*tables, DEAD_LETTERS])}
        for old in self.blobs.list(self._task_prefix(ck.task)):
            if old not in keep:
                self.blobs.delete(old)
