"""Backfill one projection version from the log with parallel Ray tasks, beside the live one.

    es-actors backfill balances --version 2 --store ./demo-store --projections pkg.read:BalancesV2
    ray job submit -- python -m es_actors.jobs.backfill balances --version 2 --store /data/store ...

The plan (es_actors.read.backfill.plan) shares the log out: one task per partition for a
projection keyed by aggregate, per range of positions for one whose parts combine, one task
for all of it for a projection that declares no merge (refused for parallel work, replayed
sequentially). Each task (1 CPU, spread over the nodes, retried by Ray when its worker or node
dies) replays its share into a private database and checkpoints it into the store; the parts
are then combined into the read model as ``<name>__v<version>``, which the store's projector
adopts and keeps following. The live version keeps serving throughout. ADR-016.

Progress: a bar on a terminal (else a line every few seconds in the job's log) with events
done of total, rate and ETA, per-task lines, and the Ray metrics
``ray_es_actors_backfill_events_done`` / ``_events_total`` (per task) for the dashboard.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import duckdb
import ray

from es_actors.domain import Aggregate, DomainRegistry
from es_actors.errors import EsActorsError
from es_actors.jobs._tasks import connect_ray
from es_actors.read.backfill.install import InstallReport, adopt, beside, taken_by_a_projection
from es_actors.read.backfill.plan import BackfillPlan, fingerprint, make_plan
from es_actors.read.backfill.task import CHECKPOINT_EVENTS, TaskResult, projection_tables, run_task
from es_actors.read.backfill.work import BackfillWork, open_work
from es_actors.read.backfill_tasks import BackfillStopped, run_plan_tasks
from es_actors.read.projection import Projection, check_projections
from es_actors.read.readmodel import ReadModel
from es_actors.read.readmodel.database import readmodel_path
from es_actors.read.runner import ProjectionRunner
from es_actors.config import StoreConfig
from es_actors.runtime.cluster import actor_get, join_ray
from es_actors.runtime.naming import find_projector
from es_actors.storage.layout import StoreLayout

#: ``progress=``: True (a bar or log lines on stderr), False, or a function given a dict per update.
BackfillProgressArg = bool | Callable[[dict[str, Any]], None]


@dataclass
class BackfillReport:
    store: str
    projection: str
    version: int
    instance: str
    mode: str  # "parallel" | "sequential"
    parallelism: int
    refused_parallel: str | None
    tasks: int
    tasks_resumed: int
    events: int
    applied: int
    parked: int
    seconds: float
    replay_s: float
    merge_s: float
    events_per_s: float
    rows: dict[str, int]
    installed_by: str
    task_results: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def backfill(
    store_path: str | Path,
    projection: type[Projection],
    aggregates: Sequence[type[Aggregate[Any]]],
    *,
    parallelism: int | None = None,
    address: str | None = None,
    progress: BackfillProgressArg = True,
    restart: bool = False,
    checkpoint_events: int = CHECKPOINT_EVENTS,
    checkpoint_s: float = 60.0,
    task_events: int | None = None,
    read_model_dir: str | None = None,
) -> BackfillReport:
    """Build ``projection`` (its declared version) from the log beside the live version.

    ``parallelism``: tasks at once (default: the cluster's CPUs; 1 runs the same tasks one after
    another in this process, without Ray). A stopped or failed backfill started again with the
    same declaration resumes from its tasks' checkpoints; ``restart`` discards them. ``read_model_dir``:
    a store on object storage whose projector does not run here has its read models there (as
    ``StoreConfig.read_model_dir``; default ``$ES_ACTORS_READ_MODELS`` or the user cache)."""
    t0 = time.monotonic()
    p = projection
    layout = StoreLayout.from_uri(store_path)
    descriptor = layout.read_descriptor()
    if descriptor is None:
        raise EsActorsError(f"{store_path} is not an es_actors store (no store.json)")
    layout = layout.with_read_models(descriptor.store_id, read_model_dir)  # object storage: where its read model is
    try:
        check_projections([p])
        registry = DomainRegistry(aggregates)
        scratch = ReadModel(layout.read_model_root, registry, [p], database=":memory:")  # set-up runs, kind is known
        try:
            tables = projection_tables(scratch.con.cursor(), p.name)
        finally:
            scratch.close()
        if p.merge is not None:
            p.merge.check(p.name, tables)
    except ValueError as exc:
        raise EsActorsError(str(exc)) from None
    beside(p)  # the instance name fits
    if parallelism is None or parallelism > 1:
        connect_ray(address)
        if parallelism is None:
            parallelism = max(1, int(ray.cluster_resources().get("CPU", 1)))
    else:
        join_ray(address)  # no Ray of its own; a cluster given (or $RAY_ADDRESS) holds the projector to install into
    if parallelism < 1:
        raise EsActorsError(f"parallelism must be at least 1, not {parallelism}")
    refused = None
    if p.merge is None and parallelism > 1:
        refused = (
            f"projection {p.name!r} declares no merge (Merge.by_aggregate() or Merge.combining(...)): parts built in "
            "parallel could not be combined exactly, so it is replayed sequentially by one task"
        )
        _say(progress, {"event": "refused_parallel", "message": refused})
    partitions = descriptor.partitions
    _refuse_a_taken_name(layout, descriptor, beside(p).name)
    _note_a_new_read_model(layout, descriptor, progress)
    work = open_work(layout, p.name, p.version)
    work.lock()
    try:
        work.clear_stop_request()  # a request meant for an earlier run (this one resumes it)
        plan = _plan(work, layout, partitions, p, parallelism, task_events, restart, progress)
        t1 = time.monotonic()
        results = _run_tasks(
            plan, work, layout, partitions, list(aggregates), p, parallelism, progress, checkpoint_events, checkpoint_s,
        )
        replay_s = time.monotonic() - t1
        installed, by = _install(layout, partitions, registry, p, work)
        work.mark_installed(json.dumps(installed.to_dict()))
    finally:
        work.unlock()
        work.drop_local_copies()
    seconds = time.monotonic() - t0
    events = plan.events
    report = BackfillReport(
        store=str(layout.root) if not layout.scheme else layout.uri, projection=p.name, version=p.version, instance=installed.instance,
        mode="sequential" if plan.split == "none" or parallelism == 1 else "parallel", parallelism=parallelism,
        refused_parallel=refused, tasks=len(plan.tasks), tasks_resumed=sum(1 for r in results if r.resumed_at),
        events=events, applied=sum(r.applied for r in results), parked=installed.dead_letters,
        seconds=round(seconds, 3), replay_s=round(replay_s, 3), merge_s=round(installed.merge_s, 3),
        events_per_s=round(sum(r.events - r.resumed_at for r in results) / replay_s, 1) if replay_s > 0 else 0.0,
        rows=installed.rows, installed_by=by,
        task_results=[r.to_dict() for r in results],
    )
    _say(progress, {"event": "done", "report": report.to_dict()})
    return report


def _note_a_new_read_model(layout: StoreLayout, descriptor: Any, progress: BackfillProgressArg) -> None:
    """A store on object storage keeps its read models in a local directory its opener chose: with no
    projector to install into and no read model in the directory this run resolved, say (before any
    work) that the build starts one there, which only a store opened with that read_model_dir sees."""
    if not layout.scheme or readmodel_path(layout.read_model_root).exists():
        return
    if ray.is_initialized() and find_projector(layout, descriptor) is not None:
        return
    _say(progress, {"event": "note", "message": (
        f"no projector of the store runs where this process can reach it and {layout.read_model_root} holds no read "
        "model of it: the build starts one there, which a store opened with another read_model_dir does not see "
        "(give the store's: read_model_dir=, --read-model-dir or $ES_ACTORS_READ_MODELS)")})


def _refuse_a_taken_name(layout: StoreLayout, descriptor: Any, name: str) -> None:
    """Before any work: ``<name>__v<N>`` must not be a live projection's name (only an earlier build's)."""
    projector = find_projector(layout, descriptor) if ray.is_initialized() else None
    if projector is not None:
        running = actor_get(projector.projections.remote())
        taken = name in running and not actor_get(projector.is_build.remote(name))
    else:
        path = readmodel_path(layout.read_model_root)
        if not path.exists():
            return
        try:
            con = duckdb.connect(str(path), read_only=True)
        except duckdb.Error:
            return  # held by a projector this process cannot reach: the install checks it
        try:
            taken = taken_by_a_projection(con, name)
        finally:
            con.close()
    if taken:
        raise EsActorsError(f"a projection named {name!r} exists and is not a backfill's build: the build of this version "
                            "would take its name; rename one of them")


def _plan(
    work: BackfillWork, layout: StoreLayout, partitions: int, p: type[Projection], parallelism: int,
    task_events: int | None, restart: bool, progress: BackfillProgressArg,
) -> BackfillPlan:
    plan = work.load_plan()
    if plan is not None and (restart or work.installed() is not None):
        work.discard()
        plan = None
    if plan is not None and plan.fingerprint != fingerprint(p):
        raise EsActorsError(
            f"a backfill of {p.name} v{p.version} with another declaration was started ({work.where}/plan.json: "
            f"fingerprint {plan.fingerprint}, this code's {fingerprint(p)}): finish it with that code, or start again "
            "with restart (--restart)"
        )
    if plan is None:
        plan = make_plan(layout, partitions, p, parallelism, task_events)
        work.save_plan(plan)
    else:
        _say(progress, {"event": "resumed", "message": f"resuming the backfill planned at {plan.created_at}"})
    return plan


def _run_tasks(
    plan: BackfillPlan, work: BackfillWork, layout: StoreLayout, partitions: int, aggregates: list[type[Aggregate[Any]]],
    p: type[Projection], parallelism: int, progress: BackfillProgressArg, checkpoint_events: int, checkpoint_s: float,
) -> list[TaskResult]:
    view = _ProgressView(progress, f"backfill {p.name} v{p.version}", plan)
    stop = _StopPoll(work, p)
    try:
        if parallelism == 1:  # the same tasks, one after another, here

            def report(task: str, done: int, total: int) -> None:
                view.update(task, done, total)
                stop.check()

            results = []
            for spec in plan.tasks:
                stop.check()
                results.append(run_task(
                    layout.uri, partitions, DomainRegistry(aggregates), p, spec, work,
                    checkpoint_events=checkpoint_events, checkpoint_s=checkpoint_s, report=report,
                ))
                view.finished(results[-1])
            return results
        return run_plan_tasks(
            plan, work, layout, partitions, aggregates, p, parallelism,
            on_progress=view.update, on_done=view.finished, checkpoint_events=checkpoint_events, checkpoint_s=checkpoint_s,
            should_stop=stop.requested,
        )
    finally:
        view.close()


def _install(
    layout: StoreLayout, partitions: int, registry: DomainRegistry, p: type[Projection], work: BackfillWork
) -> tuple[InstallReport, str]:
    """Into the running projector's read model (it then follows the version), else into the file
    here, caught up with the log once (the next projector to start adopts it)."""
    definition = ray.cloudpickle.dumps(p)
    descriptor = layout.read_descriptor()
    projector = find_projector(layout, descriptor) if ray.is_initialized() and descriptor is not None else None
    if projector is not None:
        out = actor_get(projector.install_backfill.remote(p, definition))
        return InstallReport(**out), "projector"
    try:
        rm = ReadModel(layout.read_model_root, registry, [])
    except Exception as exc:
        raise EsActorsError(
            f"the read-model file of {layout.root} is held by a projector this process cannot reach (join its Ray "
            f"cluster with --address): {type(exc).__name__}: {exc}"
        ) from None
    try:
        runner = ProjectionRunner(layout, partitions, registry, [], StoreConfig(), read_model=rm)
        local = open_work(layout, p.name, p.version, scratch=layout.read_model_root / ".backfill-parts") if layout.scheme else work
        report = adopt(runner, p, local, definition)
        while runner.step():  # caught up with what the log holds now
            pass
    finally:
        rm.close()
    return report, f"this process, into {readmodel_path(layout.read_model_root)}"


class _StopPoll:
    """Whether an operator asked this backfill to stop (``es-actors backfill ... --stop``): the
    request file, looked at no more than every 0.2 s."""

    def __init__(self, work: BackfillWork, p: type[Projection]) -> None:
        self.work, self.p, self.next_look, self.seen = work, p, 0.0, False

    def requested(self) -> bool:
        now = time.monotonic()
        if not self.seen and now >= self.next_look:
            self.next_look = now + 0.2
            self.seen = self.work.stop_requested()
        return self.seen

    def check(self) -> None:
        if self.requested():
            raise BackfillStopped(f"backfill of {self.p.name} v{self.p.version} stopped on request; its checkpoints in "
                                  f"{self.work.where} stay: the same backfill started again resumes it")


def _say(progress: BackfillProgressArg, update: dict[str, Any]) -> None:
    if callable(progress):
        progress(update)
    elif progress and "message" in update:
        print(update["message"], file=sys.stderr)


class _ProgressView:
    """Overall and per-task progress: a tqdm bar on a terminal, else a line every 5 s (job logs)."""

    def __init__(self, progress: BackfillProgressArg, title: str, plan: BackfillPlan) -> None:
        self.progress = progress
        self.title = title
        self.total = plan.events
        self.tasks: dict[str, tuple[int, int]] = {}
        self.t0 = time.monotonic()
        self.last_line = 0.0
        self.bar = None
        if progress is True and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc=title, unit="ev", unit_scale=True, file=sys.stderr)

    def _done(self) -> int:
        return sum(d for d, _t in self.tasks.values())

    def update(self, task: str, done: int, total: int) -> None:
        self.tasks[task] = (done, total)
        d = self._done()
        if self.bar is not None:
            self.bar.n = d
            running = [t for t, (dd, tt) in self.tasks.items() if dd < tt]
            self.bar.set_postfix_str(", ".join(f"{t} {self.tasks[t][0] * 100 // max(1, self.tasks[t][1])}%" for t in running[:4]))
            self.bar.refresh()
        elif callable(self.progress):
            self.progress({"event": "progress", "task": task, "done": done, "total": total, "overall_done": d, "overall_total": self.total})
        elif self.progress and time.monotonic() - self.last_line >= 5.0:
            self.last_line = time.monotonic()
            print(self._line(d), file=sys.stderr, flush=True)

    def _line(self, d: int) -> str:
        el = time.monotonic() - self.t0
        rate = d / el if el > 0 else 0.0
        eta = f"{(self.total - d) / rate:,.0f} s" if rate > 0 else "?"
        tasks = "; ".join(f"{t} {dd:,}/{tt:,}" for t, (dd, tt) in sorted(self.tasks.items()) if dd < tt)
        return f"{self.title}: {d:,}/{self.total:,} events ({d * 100 // max(1, self.total)}%), {rate:,.0f} ev/s, ETA {eta}" + (f" [{tasks}]" if tasks else "")

    def finished(self, r: TaskResult) -> None:
        self.tasks[r.task] = (r.events, r.events)
        line = f"task {r.task}: {r.events:,} events, {r.applied:,} applied in {r.seconds:.2f}s" + (f" (resumed at {r.resumed_at:,})" if r.resumed_at else "")
        if self.bar is not None:
            self.bar.n = self._done()
            self.bar.write(line, file=sys.stderr)
        elif callable(self.progress):
            self.progress({"event": "task_done", **r.to_dict()})
        elif self.progress:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

