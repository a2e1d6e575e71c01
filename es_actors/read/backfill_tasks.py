"""The Ray edge of backfill tasks: a plan's tasks run across the cluster (``num_cpus=1`` each,
spread over the nodes, run again by Ray when their worker or node dies: they resume from their
checkpoints), at most ``parallelism`` at once, reporting progress to a small actor and to Ray
gauges. Used by the backfill job (es_actors.jobs.backfill) and by the projector's parallel
catch-up (es_actors.read.projector_actor). ADR-016."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any, Callable, Sequence

import ray

from es_actors.domain import Aggregate, DomainRegistry
from es_actors.errors import EsActorsError
from es_actors.read.backfill.plan import BackfillPlan, TaskSpec
from es_actors.read.backfill.task import CHECKPOINT_EVENTS, TaskResult, run_task
from es_actors.read.backfill.work import BackfillWork, open_work
from es_actors.read.projection import Projection
from es_actors.runtime.cluster import actor_get, unwrap_actor_error
from es_actors.storage.layout import StoreLayout


class BackfillStopped(EsActorsError):
    """A backfill was stopped before its tasks finished (they resume from their checkpoints)."""


class BackfillTaskLost(EsActorsError):
    """A backfill task failed for another reason than its projection's: its worker or node was
    lost more often than Ray retries, it was cancelled, or it hit a bug (its checkpoints stay)."""


@ray.remote(num_cpus=0, max_restarts=-1)  # type: ignore[call-overload]
class BackfillProgress:
    """Where tasks report how far they are, for the driver's bar (a restart loses only figures).
    One per driver process, shared by its runs (each keeps its figures under its own run id):
    a new actor per run started a worker process each time, ~0.4 s of CPU taken from the tasks."""

    def __init__(self) -> None:
        self.runs: dict[str, dict[str, tuple[int, int]]] = {}

    def update(self, task: str, done: int, total: int, run: str = "") -> None:
        self.runs.setdefault(run, {})[task] = (done, total)

    def snapshot(self, run: str = "") -> dict[str, tuple[int, int]]:
        return dict(self.runs.get(run, {}))

    def forget(self, run: str) -> None:
        self.runs.pop(run, None)


_tracker_lock = threading.Lock()
_tracker: tuple[tuple[str, str], Any] | None = None  # ((the Ray job, the caller's node), its handle)


def _shared_tracker() -> Any:
    """This driver's progress actor, started at its first run (another Ray session or cluster,
    where job ids start again at 1 but the node is another: a new one)."""
    global _tracker
    ctx = ray.get_runtime_context()
    job = (ctx.get_job_id(), ctx.get_node_id())
    with _tracker_lock:
        if _tracker is None or _tracker[0] != job:
            _tracker = (job, BackfillProgress.remote())  # type: ignore[attr-defined]
        return _tracker[1]


class _Metrics:
    def __init__(self, projection: str, version: int) -> None:
        from ray.util import metrics

        tags = ("projection", "version", "task")
        self.done = metrics.Gauge("es_actors_backfill_events_done", "Log positions a backfill task has replayed.", tag_keys=tags)
        self.total = metrics.Gauge("es_actors_backfill_events_total", "Log positions in a backfill task's share.", tag_keys=tags)
        self.base = {"projection": projection, "version": str(version)}

    def set(self, task: str, done: int, total: int) -> None:
        tags = {**self.base, "task": task}
        self.done.set(done, tags)
        self.total.set(total, tags)


def _task(
    store: str, partitions: int, aggregates: list[type[Aggregate[Any]]], p: type[Projection], spec: TaskSpec,
    progress: Any, checkpoint_events: int, checkpoint_s: float, purpose: str = "", run: str = "",
) -> dict[str, Any]:
    """The body of one backfill task (Ray runs it; retried when its worker dies). ``store``: the
    store's URI (a path, or s3://...?endpoint_url=...): the task opens the backend from it and
    finds its checkpoints in the store, whichever node it lands on."""
    metrics = _Metrics(p.name, p.version)
    last = [0.0]

    def report(task: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.5 or done >= total:
            last[0] = now
            metrics.set(task, done, total)
            if progress is not None:
                progress.update.remote(task, done, total, run)

    work = open_work(StoreLayout.from_uri(store), p.name, p.version, purpose)
    try:
        result = run_task(
            store, partitions, DomainRegistry(aggregates), p, spec, work,
            checkpoint_events=checkpoint_events, checkpoint_s=checkpoint_s, report=report,
            worker=ray.get_runtime_context().get_node_id(),
        )
    finally:
        work.drop_local_copies()
    return result.to_dict()


_backfill_task = ray.remote(num_cpus=1, max_retries=3)(_task)




def _named(exc: BaseException, spec: TaskSpec, p: type[Projection]) -> BaseException:
    """A task's failure as an es_actors error that names the task (a lost worker or node after
    Ray's retries, a cancelled task, a bug): its own es_actors errors already do."""
    if isinstance(exc, EsActorsError):
        return exc
    shares = ", ".join(f"partition {i} positions {a + 1}..{u}" for i, (a, u) in spec.bounds.items())
    out = BackfillTaskLost(f"backfill of {p.name} v{p.version}, task {spec.id} ({shares}): {type(exc).__name__}: "
                           f"{(str(exc).splitlines() or [''])[0]}")
    out.__cause__ = exc
    return out


def run_plan_tasks(
    plan: BackfillPlan, work: BackfillWork, layout: StoreLayout, partitions: int, aggregates: Sequence[type[Aggregate[Any]]],
    p: type[Projection], parallelism: int, *, on_progress: Callable[[str, int, int], None] | None = None,
    on_done: Callable[[TaskResult], None] | None = None, checkpoint_events: int = CHECKPOINT_EVENTS, checkpoint_s: float = 60.0,
    should_stop: Callable[[], bool] = lambda: False,
) -> list[TaskResult]:
    """Run the plan's unfinished tasks, ``parallelism`` at a time; raise the first task's error
    after the running ones ended (their checkpoints stay for a resume). ``should_stop`` true:
    the running tasks are cancelled and BackfillStopped raised (checkpoints stay)."""
    tracker, run = _shared_tracker(), uuid.uuid4().hex
    pending = list(plan.tasks)
    running: dict[Any, TaskSpec] = {}
    results: dict[str, TaskResult] = {}
    errors: dict[str, BaseException] = {}
    try:
        while pending or running:
            if should_stop():
                for ref in running:
                    ray.cancel(ref, force=True)
                raise BackfillStopped(f"backfill of {p.name} v{p.version} stopped; its checkpoints in {work.where} stay for a resume")
            while pending and len(running) < parallelism:
                spec = pending.pop(0)
                ref = _backfill_task.options(scheduling_strategy="SPREAD").remote(
                    layout.uri, partitions, list(aggregates), p, spec, tracker, checkpoint_events, checkpoint_s, work.purpose, run,
                )
                running[ref] = spec
            ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            for ref in ready:
                spec = running.pop(ref)
                try:
                    r = TaskResult(**ray.get(ref))
                except Exception as exc:
                    errors[spec.id] = _named(unwrap_actor_error(exc), spec, p)
                    pending.clear()  # no new task: the run stops, the checkpoints stay for a resume
                    continue
                results[spec.id] = r
                if on_done is not None:
                    on_done(r)
            if on_progress is not None:
                try:
                    for task, (done, total) in actor_get(tracker.snapshot.remote(run), timeout=5).items():
                        if task not in results:
                            on_progress(task, done, total)
                except Exception:
                    pass  # figures only
    finally:
        try:
            tracker.forget.remote(run)
        except Exception:
            pass  # figures only
    if errors:
        first = next(iter(errors.values()))
        if len(errors) > 1:
            first.add_note("also failed: " + "; ".join(f"{t}: {type(e).__name__}: {e}" for t, e in list(errors.items())[1:]))
        first.add_note(f"the finished tasks' work is kept in {work.where}: the same backfill started again resumes it")
        raise first
    return [results[t.id] for t in plan.tasks]
