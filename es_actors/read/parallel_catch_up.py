"""The projector's parallel catch-up (ADR-016): a projection far behind (a new one: the whole
log) that declares a merge is caught up by backfill tasks spread over the cluster, into its own
tables, instead of one batch after another in the projector.

On local disk and on object storage alike (the plan and checkpoints are in the store: files, or
objects in the bucket, es_actors.read.backfill.work). At the projector's start, each projection at least ``parallel_catch_up_events`` behind is left to
a thread here (status ``backfilling``; the loop takes no batch of it): a plan from its
checkpoints to the durable heads (``backfills/<name>/v<N>-catch-up/``, reused after a projector
restart, so tasks resume from their checkpoints), the tasks, then the parts folded into its
tables with its checkpoints in one transaction, and the loop follows on from there. A
``Merge.by_aggregate()`` projection qualifies only when it starts from nothing (its parts are
inserted, so its tables must be empty); ``Merge.combining`` parts fold into existing rows. Any
failure leaves the projection to the loop, which catches up as before (the error in its status
until then).
"""

from __future__ import annotations

import logging
import threading

from typing import Any, Callable, Sequence

import ray

from es_actors.config import StoreConfig
from es_actors.domain import Aggregate
from es_actors.read.backfill.files import BackfillBusy
from es_actors.read.backfill.install import install_into
from es_actors.read.backfill.plan import fingerprint, make_plan
from es_actors.storage.backends import durable_heads
from es_actors.read.backfill.work import open_work
from es_actors.read.backfill_tasks import run_plan_tasks
from es_actors.read.projection import Projection
from es_actors.read.runner import ProjectionRunner
from es_actors.storage.layout import StoreLayout

log = logging.getLogger(__name__)
PURPOSE = "catch-up"


def candidates(runner: ProjectionRunner, heads: dict[int, int], threshold: int) -> list[type[Projection]]:
    """The projections to catch up in parallel: a merge declared, and at least ``threshold`` behind."""
    if threshold <= 0:
        return []
    out = []
    for st in runner.states.values():
        p = st.projection
        if p.merge is None or st.paused or st.halted or getattr(p, "beside_of", None):
            continue
        cps = {i: prog.checkpoint for i, prog in st.partitions.items()}
        behind = sum(max(0, heads.get(i, 0) - cp) for i, cp in cps.items())
        if behind < threshold:
            continue
        if p.merge.split == "partition" and any(cps.values()):
            continue  # its parts would collide with the rows it has
        out.append(p)
    return out


class ParallelCatchUp:
    """Catches projections up with backfill tasks, one thread per projection."""

    def __init__(
        self, runner: ProjectionRunner, layout: StoreLayout, partitions: int, aggregates: Sequence[type[Aggregate[Any]]],
        config: StoreConfig, stopping: Callable[[], bool],
    ) -> None:
        self.runner = runner
        self.layout = layout
        self.partitions = partitions
        self.aggregates = list(aggregates)
        self.config = config
        self.stopping = stopping
        self.threads: list[threading.Thread] = []

    def start(self) -> list[str]:
        """Leave the projections far behind to parallel catch-up threads; their names."""
        heads = durable_heads(self.layout, self.partitions)
        chosen = candidates(self.runner, heads, self.config.parallel_catch_up_events)
        for p in chosen:
            self.runner.set_backfilling(p.name, True)
            t = threading.Thread(target=self._run, args=(p, heads), name=f"catch-up-{p.name}", daemon=True)
            self.threads.append(t)
            t.start()
        return [p.name for p in chosen]

    def _run(self, p: type[Projection], heads: dict[int, int]) -> None:
        st = self.runner.states[p.name]
        try:
            work = open_work(self.layout, p.name, p.version, PURPOSE, scratch=self._scratch())
            work.lock(owner=self._owner())
        except Exception as exc:  # busy, or the bucket did not answer: the loop catches up
            if not isinstance(exc, BackfillBusy):
                st.last_error = f"parallel catch-up did not start, catching up one batch after another: {type(exc).__name__}: {exc}"
            self.runner.set_backfilling(p.name, False)
            return
        try:
            start = {i: prog.checkpoint for i, prog in st.partitions.items()}
            plan = work.load_plan()
            if plan is not None and (plan.fingerprint != fingerprint(p) or plan.start != start):
                work.discard()
                plan = None
            parallelism = max(1, int(ray.cluster_resources().get("CPU", 1)))
            if plan is None:
                plan = make_plan(self.layout, self.partitions, p, parallelism, start=start, targets=heads)
                work.save_plan(plan)
            log.info("projection %s: catching up %d events with %d tasks in parallel", p.name, plan.events, len(plan.tasks))
            results = run_plan_tasks(plan, work, self.layout, self.partitions, self.aggregates, p, parallelism,
                                     should_stop=self.stopping)
            parts = [work.load_checkpoint(t.id) for t in plan.tasks]
            applied: dict[int, int] = {}
            for spec, r in zip(plan.tasks, results):
                part = min(spec.bounds)  # a merge's shares are within one partition
                applied[part] = applied.get(part, 0) + r.applied
            with self.runner.exclusive(p.name):
                install_into(self.runner.read_model.con, p, plan, [ck for ck in parts if ck is not None], work)
                work.discard()  # committed: the parts are not needed (a crash before this: the next start discards them)
                self.runner.advance_to(p.name, plan.targets, applied)
            log.info("projection %s: parallel catch-up done at %s", p.name, plan.targets)
        except Exception as exc:
            if not self.stopping():
                st.last_error = f"parallel catch-up failed, catching up one batch after another: {type(exc).__name__}: {exc}"
                log.warning("projection %s: %s", p.name, st.last_error)
        finally:
            work.unlock()
            work.drop_local_copies()
            self.runner.set_backfilling(p.name, False)

    def _scratch(self) -> Any:
        """Where the install's DuckDB may read parts copied from a bucket: under the read-model directory."""
        return self.layout.read_model_root / ".backfill-parts" if self.layout.scheme else None

    @staticmethod
    def _owner() -> str | None:
        """The lease owner on object storage: this actor's id, so a restarted projector (same id)
        takes its own lease back at once instead of waiting for it to expire."""
        try:
            return ray.get_runtime_context().get_actor_id() or None
        except Exception:  # noqa: BLE001 - not in an actor: a fresh owner
            return None

    def join(self, timeout_s: float) -> None:
        for t in self.threads:
            t.join(timeout=timeout_s)


