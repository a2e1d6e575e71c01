"""A backfill's status and stop, from its files in the store alone (no Ray, no projection classes):
``es-actors backfill NAME --version N --status`` / ``--stop`` and :func:`backfill_status` /
:func:`stop_backfill`. Both work while a run goes on, from any machine that sees the store.

Status reads ``backfills/<name>/v<N>/`` (files of a local store, objects of one on S3 or
blobdir: es_actors.read.backfill.work): the plan, each task's checkpoint (events done of its
share, final or not), the installed mark, whether a process holds the run's lock, and whether
a stop was requested. Stop writes ``stop-requested.json`` there; the running driver polls it,
cancels its tasks (their checkpoints stay) and ends with ``BackfillStopped``. Started again,
the same backfill clears the request and resumes from the checkpoints.

When it stops: Ray tasks (``--parallelism`` above 1) are cancelled at the driver's next look,
within a second. The in-process path (``--parallelism 1``) looks between batches: a handler
that is busy (slow, or blocked) delays the stop until it returns, up to one batch per
partition; the request stays until then.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from es_actors.errors import EsActorsError
from es_actors.read.backfill.work import BackfillWork, backfilled_versions, open_work
from es_actors.storage.layout import StoreLayout


@dataclass
class TaskStatus:
    task: str
    done: int
    total: int
    finished: bool
    checkpoints: int  # the sequence number of its last checkpoint (0: none yet)
    worker: str
    unreadable: str = ""  # why a checkpoint that is there cannot be used (the task redoes its share)


@dataclass
class BackfillStatus:
    store: str
    projection: str
    version: int
    path: str
    state: str  # running | stopping | stopped | replayed | installed
    running: bool
    stop_requested: bool
    planned_at: str
    events_done: int
    events_total: int
    installed: dict[str, Any] | None
    tasks: list[TaskStatus] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> list[str]:
        pct = self.events_done * 100 // max(1, self.events_total)
        explain = {
            "running": "running",
            "stopping": ("running; a stop was requested: Ray tasks are cancelled within a second; in process "
                         "(--parallelism 1) it stops before its next batch, so a handler that is busy delays it"),
            "stopped": "not running, unfinished: the same backfill started again resumes from the checkpoints",
            "replayed": "not running; every task finished but the build is not installed: start it again to install",
            "installed": "installed" + (f" as {self.installed.get('instance')}" if self.installed else ""),
        }[self.state]
        lines = [f"backfill {self.projection} v{self.version} in {self.store}: {explain}",
                 f"  planned at {self.planned_at}: {len(self.tasks)} tasks, {self.events_done:,}/{self.events_total:,} events ({pct}%)"]
        for t in self.tasks:
            state = ("finished" if t.finished else f"checkpoint unreadable: {t.unreadable}; the task redoes its share"
                     if t.unreadable else "checkpoint " + str(t.checkpoints) if t.checkpoints else "not started")
            lines.append(f"  {t.task}: {t.done:,}/{t.total:,} events, {state}")
        return lines


def _shown(layout: StoreLayout) -> str:
    return layout.uri if layout.scheme else str(layout.root)


def _backfill_dir(store: str | os.PathLike[str], projection: str, version: int | None) -> tuple[StoreLayout, BackfillWork]:
    layout = StoreLayout.from_uri(store)
    if layout.read_descriptor() is None:
        raise EsActorsError(f"{store} is not an es_actors store (no store.json)")
    versions = backfilled_versions(layout, projection)
    if not versions:
        raise EsActorsError(f"no backfill of {projection!r} in {_shown(layout)}")
    if version is None:
        if len(versions) != 1:
            have = ", ".join(f"v{v}" for v in versions) or "none"
            raise EsActorsError(f"backfills of {projection!r} in {_shown(layout)}: {have}; name the version (--version)")
        version = versions[0]
    if version not in versions:
        have = ", ".join(f"v{v}" for v in versions) or "none"
        raise EsActorsError(f"no backfill of {projection} v{version} in {_shown(layout)} (backfills of {projection!r}: {have})")
    return layout, open_work(layout, projection, version)


def status_version(work: BackfillWork) -> int:
    return int(work.name.rsplit("/v", 1)[1])


def backfill_status(store: str | os.PathLike[str], projection: str, version: int | None = None) -> BackfillStatus:
    """Where a backfill of ``projection`` (version ``version``, or its only one) stands; read-only."""
    layout, work = _backfill_dir(store, projection, version)
    running = work.running()
    plan = work.load_plan()
    installed = None
    try:
        text = work.installed()
    except OSError:
        text = ""
    if text is not None:
        try:
            installed = json.loads(text)
        except ValueError:
            installed = {}
    tasks = []
    for spec in plan.tasks if plan is not None else []:
        ck = work.load_checkpoint(spec.id)
        done = 0 if ck is None else sum(
            max(0, min(ck.positions.get(i, after), until) - after) for i, (after, until) in spec.bounds.items())
        final = ck is not None and ck.final
        tasks.append(TaskStatus(spec.id, spec.events if final else done, spec.events, final,
                                ck.seq if ck is not None else 0, ck.worker if ck is not None else "",
                                (work.checkpoint_problem(spec.id) or "") if ck is None else ""))
    stop = work.stop_requested()
    if running:
        state = "stopping" if stop else "running"
    elif installed is not None:
        state = "installed"
    elif tasks and all(t.finished for t in tasks):
        state = "replayed"
    else:
        state = "stopped"
    return BackfillStatus(
        store=_shown(layout), projection=projection, version=status_version(work), path=work.where,
        state=state, running=running, stop_requested=stop, planned_at=plan.created_at if plan is not None else "",
        events_done=sum(t.done for t in tasks), events_total=sum(t.total for t in tasks), installed=installed, tasks=tasks,
    )


def stop_backfill(
    store: str | os.PathLike[str], projection: str, version: int | None = None, *, wait_s: float = 60.0,
    principal: str = "", reason: str = "", on_request: Callable[[str], None] | None = None,
) -> BackfillStatus:
    """Ask the running backfill to stop and wait (up to ``wait_s``; 0: do not wait) until it has;
    its status afterwards (``running`` still True: it has not stopped yet, the request stays).
    EsActorsError if none runs. The checkpoints stay: run it again to resume. ``on_request``
    gets a line once the request is written."""
    _layout, work = _backfill_dir(store, projection, version)
    if not work.running():
        status = backfill_status(store, projection, version)
        raise EsActorsError(f"no backfill of {projection} v{status.version} is running in {status.store} "
                            f"(it is {status.state}): nothing to stop")
    work.request_stop(json.dumps({"requested_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                  "principal": principal, "reason": reason, "pid": os.getpid()}))
    if on_request is not None:
        on_request(f"asked the backfill of {projection} v{status_version(work)} to stop; waiting up to {wait_s:.0f} s")
    deadline = time.monotonic() + wait_s
    while work.running() and time.monotonic() < deadline:
        time.sleep(0.1)
    return backfill_status(store, projection, version)
