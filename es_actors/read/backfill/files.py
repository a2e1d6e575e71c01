"""Where a backfill keeps its work in the store, so any node can resume it (never on a node's
own disk)::

    backfills/<projection>/v<version>/
        plan.json                       the plan (es_actors.read.backfill.plan)
        tasks/<task>/checkpoint.json    the task's last checkpoint: positions reached, counts, its files
        tasks/<task>/<seq>/<table>.parquet   the task's tables as of that checkpoint (+ _dead_letters)
        installed.json                  written once the parts are in the read model
        stop-requested.json             an operator asked the running backfill to stop (its driver polls)

Every file is written whole under a temporary name, synced and renamed into place, and a
checkpoint names its files only after they are in place: a task killed at any point leaves
the previous checkpoint intact.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from pathlib import Path
from typing import IO

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ValidationError

from es_actors.errors import EsActorsError, invalid_file
from es_actors.read.backfill.plan import BackfillPlan
from es_actors.storage.files import fsync_dir, replace_durably

DEAD_LETTERS = "_dead_letters"
#: How a checkpoint's tables are written. No dictionary: a part's keys are mostly distinct, so the
#: dictionary is built and then dropped (half the CPU of a checkpoint; the files come out no larger).
PART_PARQUET = {"use_dictionary": False}


class TaskCheckpoint(BaseModel):
    """How far one task got: positions reached per partition, and its tables at that point."""

    task: str
    seq: int
    positions: dict[int, int]
    applied: int
    parked: int
    tables: list[str]
    final: bool = False
    worker: str = ""  # where it was written (a Ray node id, when the Ray edge says)


class BackfillBusy(EsActorsError):
    """Another backfill of the same projection version is running."""


class BackfillDir:
    """The directory of one backfill of one projection version."""

    def __init__(self, root: Path, projection: str, version: int, purpose: str = "") -> None:
        """``purpose``: "" for a backfill beside the live version, "catch-up" for the projector's
        parallel catch-up of the live one (each has its own directory)."""
        self.root = root
        self.purpose = purpose
        self.name = f"backfills/{projection}/v{version}" + (f"-{purpose}" if purpose else "")
        self.path = root / self.name
        self.where = str(self.path)
        self.local_root = root  # where a task's DuckDB may read the parts (they are here)
        self._lock: IO[bytes] | None = None

    # -- the run's lock ------------------------------------------------------------------------

    def lock(self, owner: str | None = None) -> None:
        """Hold the backfill for this process (released by :meth:`unlock` or the process's end;
        ``owner`` is for the object-store lease, a flock needs none)."""
        self.path.mkdir(parents=True, exist_ok=True)
        f = open(self.path / ".lock", "ab")
        for attempt in range(10):  # a moment's grace: :meth:`running` looks with a brief shared lock
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == 9:
                    f.close()
                    raise BackfillBusy(f"another backfill of {self.path.relative_to(self.root)} is running "
                                       f"(it holds {self.path / '.lock'})") from None
                time.sleep(0.05)
        self._lock = f

    def running(self) -> bool:
        """Whether a process holds this backfill now (read-only: creates nothing)."""
        try:
            f = open(self.path / ".lock", "rb")
        except FileNotFoundError:
            return False
        with f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
            return False

    # -- stop requests -------------------------------------------------------------------------

    @property
    def stop_request(self) -> Path:
        return self.path / "stop-requested.json"

    def request_stop(self, text: str) -> None:
        """Ask the running driver to stop (it polls :meth:`stop_requested`; a new run clears it)."""
        replace_durably(self.stop_request, text.encode())
        fsync_dir(self.path)

    def stop_requested(self) -> bool:
        return self.stop_request.exists()

    def clear_stop_request(self) -> None:
        self.stop_request.unlink(missing_ok=True)

    def drop_local_copies(self) -> None:
        """Nothing: the parts are read where they are."""

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # -- the plan ------------------------------------------------------------------------------

    def load_plan(self) -> BackfillPlan | None:
        path = self.path / "plan.json"
        if not path.exists():
            return None
        try:
            return BackfillPlan.model_validate_json(path.read_bytes())
        except ValidationError as exc:
            raise EsActorsError(f"{path} is not a backfill plan this version can read ({exc.error_count()} errors); start again with restart") from None

    def save_plan(self, plan: BackfillPlan) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        replace_durably(self.path / "plan.json", plan.to_json().encode())
        fsync_dir(self.path)

    def discard(self) -> None:
        """Remove the plan, the checkpoints and the installed mark (the lock file stays, held)."""
        for child in self.path.iterdir() if self.path.exists() else []:
            if child.name == ".lock":
                continue
            shutil.rmtree(child) if child.is_dir() else child.unlink()

    @property
    def installed_mark(self) -> Path:
        return self.path / "installed.json"

    def installed(self) -> str | None:
        """The installed mark's text, None if the parts are not installed."""
        try:
            return self.installed_mark.read_text()
        except FileNotFoundError:
            return None

    def mark_installed(self, text: str) -> None:
        replace_durably(self.installed_mark, text.encode())
        fsync_dir(self.path)

    # -- task checkpoints ----------------------------------------------------------------------

    def task_dir(self, task: str) -> Path:
        return self.path / "tasks" / task

    def load_checkpoint(self, task: str) -> TaskCheckpoint | None:
        path = self.task_dir(task) / "checkpoint.json"
        if not path.exists():
            return None
        try:
            ck = TaskCheckpoint.model_validate_json(path.read_bytes())
        except ValidationError:
            return None  # unreadable: the task starts over (its share is redone, never half-used)
        if not all((self.task_dir(task) / str(ck.seq) / f"{t}.parquet").exists() for t in [*ck.tables, DEAD_LETTERS]):
            return None
        return ck

    def checkpoint_problem(self, task: str) -> str | None:
        """Why a task's checkpoint that is there cannot be used (the task then redoes its share),
        naming the file; None if it is usable or there is none."""
        path = self.task_dir(task) / "checkpoint.json"
        try:
            ck = TaskCheckpoint.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return None
        except OSError as exc:
            return f"{path} cannot be read ({exc.strerror})"
        except ValidationError as exc:
            return f"{path} is not a checkpoint this version reads ({invalid_file(exc)})"
        missing = [t for t in [*ck.tables, DEAD_LETTERS] if not (self.task_dir(task) / str(ck.seq) / f"{t}.parquet").exists()]
        if missing:
            return f"{path} names tables that are missing from {self.task_dir(task) / str(ck.seq)} ({', '.join(missing)})"
        return None

    def table_file(self, ck: TaskCheckpoint, table: str) -> Path:
        return self.task_dir(ck.task) / str(ck.seq) / f"{table}.parquet"

    def write_checkpoint(self, ck: TaskCheckpoint, tables: dict[str, pa.Table], dead_letters: pa.Table) -> None:
        """The task's tables first (a new directory, synced), then the checkpoint naming them;
        the previous checkpoint's directory goes last."""
        tdir = self.task_dir(ck.task)
        tdir.mkdir(parents=True, exist_ok=True)
        target = tdir / str(ck.seq)
        tmp = tdir / f".{ck.seq}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for name, table in [*tables.items(), (DEAD_LETTERS, dead_letters)]:
            path = tmp / f"{name}.parquet"
            pq.write_table(table, path, **PART_PARQUET)
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(tmp)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
        fsync_dir(tdir)
        replace_durably(tdir / "checkpoint.json", ck.model_dump_json().encode())
        fsync_dir(tdir)
        for old in tdir.iterdir():
            if old.is_dir() and old.name != str(ck.seq):
                shutil.rmtree(old, ignore_errors=True)
