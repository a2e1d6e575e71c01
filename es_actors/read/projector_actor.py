"""The Ray edge of the read path: one projector actor per store, hosting a
:class:`~es_actors.read.runner.ProjectionRunner`.

The actor gives the runner two threads (one that starts a loop thread per projection,
ADR-017, and a watch that follows heads and publishes metrics) and exposes its calls to clients; Ray calls (queries, waits, status,
pause/resume) run on other threads of the actor (``max_concurrency``), concurrently with
projection: DuckDB gives each query its own cursor and snapshot. Everything else (the loop,
retry/park, pause, status) is the runner's, which needs no Ray.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Sequence

import ray
from ray.util import metrics

from es_actors.config import StoreConfig
from es_actors.domain import Aggregate, DomainRegistry
from es_actors.errors import ActorStartFailed, EsActorsError, ProjectorConflict
from es_actors.read.progress import STATUSES, worst_status
from es_actors.read.projection import Projection
from es_actors.read.events_relation import LogEvents
from es_actors.read.queries import query_request
from es_actors.read.runner import ProjectionRunner
from es_actors.runtime.cluster import actor_get, actor_start_failed, died_in_constructor, store_actor_placement
from es_actors.runtime.naming import NAMESPACE, projector_name
from es_actors.storage.layout import StoreDescriptor, StoreLayout


log = logging.getLogger(__name__)

WATCH_INTERVAL_S = 1.0


class _ProjectionMetrics:
    """Read-path metrics, exported on the node's Prometheus endpoint (prefix ``ray_``)."""

    def __init__(self) -> None:
        tags = ("projection", "partition")
        self.checkpoint = metrics.Gauge("es_actors_projection_checkpoint", "Last applied log position.", tag_keys=tags)
        self.head = metrics.Gauge("es_actors_projection_head", "Newest durable log position seen.", tag_keys=tags)
        self.lag_events = metrics.Gauge("es_actors_projection_lag_events", "Events not yet applied.", tag_keys=tags)
        self.lag_seconds = metrics.Gauge(
            "es_actors_projection_lag_seconds", "Age of the oldest event not yet applied.", tag_keys=tags
        )
        self.rate = metrics.Gauge("es_actors_projection_events_per_s", "Events applied per second.", tag_keys=tags)
        self.status = metrics.Gauge(
            "es_actors_projection_status", "1 for the projection's current status.", tag_keys=("projection", "status")
        )

    def publish(self, rows: list[dict[str, Any]]) -> None:
        worst: dict[str, str] = {}
        for r in rows:
            tags = {"projection": r["projection"], "partition": str(r["partition"])}
            self.checkpoint.set(r["checkpoint"], tags)
            self.head.set(r["head"], tags)
            self.lag_events.set(r["lag_events"], tags)
            self.lag_seconds.set(r["lag_seconds"], tags)
            self.rate.set(r["events_per_s"], tags)
            worst[r["projection"]] = worst_status([r["status"], worst.get(r["projection"], "running")])
        for name, status in worst.items():
            for s in STATUSES:
                self.status.set(1.0 if s == status else 0.0, {"projection": name, "status": s})


@ray.remote(max_restarts=-1, max_task_retries=0, num_cpus=0, max_concurrency=16)  # type: ignore[call-overload]  # Ray's stubs omit actor options
class ProjectorActor:
    """Hosts the store's projection runner; restarts on crash and resumes from the checkpoints."""

    def __init__(
        self,
        layout: StoreLayout,
        partitions: int,
        aggregates: Sequence[type[Aggregate[Any]]],
        projections: Sequence[type[Projection]],
        config: StoreConfig,
    ) -> None:
        self.layout = layout
        self.partitions = partitions
        self.config = config
        self.runner = ProjectionRunner(self.layout, partitions, DomainRegistry(aggregates), projections, config)
        self._metrics = _ProjectionMetrics()
        from es_actors.runtime.process import tune_gc_for_a_long_lived_heap

        # Decoding a batch allocates one object per event and keeps them all alive until the
        # batch commits: with CPython's default thresholds the collector re-scanned that growing
        # heap for about half of a Python projection's time (py-spy, project_python_1m).
        tune_gc_for_a_long_lived_heap()
        from es_actors.read.backfill.install import adopt_builds

        adopt_builds(self.runner, ray.cloudpickle.loads, log)  # versions built beside keep following the log
        self._closed = False
        from es_actors.read.parallel_catch_up import ParallelCatchUp

        # projections far behind (a new one: the whole log) that declare a merge: backfill tasks catch them up
        self._catch_up = ParallelCatchUp(self.runner, self.layout, partitions, aggregates, config, lambda: self._closed)
        self._catch_up.start()
        self._loop = threading.Thread(target=self.runner.run, name="projector-loop", daemon=True)
        self._watch = threading.Thread(target=self._watch_heads, name="projector-watch", daemon=True)
        self._loop.start()
        self._watch.start()

    def _watch_heads(self) -> None:
        while not self._closed:
            try:
                self.runner.refresh_heads()
                self._metrics.publish(self.runner.status())
            except Exception:
                log.exception("projector watch failed")
            time.sleep(WATCH_INTERVAL_S)

    # -- Ray calls: the runner's ----------------------------------------------------------------

    def ping(self) -> bool:
        return True

    def node_id(self) -> str:
        """The Ray node this projector (and its read-model file) is on."""
        return str(ray.get_runtime_context().get_node_id())

    def projections(self) -> dict[str, int]:
        """The projections this projector was opened with, by their declared names (versions a
        backfill built and it follows are not among them; ADR-018)."""
        out = {}
        for name, version in self.runner.projections().items():
            p = self.runner.states[name].projection
            declared = getattr(p, "declared_as", None)
            if declared:
                out[declared] = version
            elif getattr(p, "beside_of", None) is None:
                out[name] = version
        return out

    def status(self) -> list[dict[str, Any]]:
        return self.runner.status()

    def wait_for(self, name: str, positions: dict[int, int], timeout_s: float) -> dict[int, int]:
        return self.runner.wait_for(name, positions, timeout_s)

    def pause(self, name: str) -> None:
        self.runner.pause(name)

    def resume(self, name: str) -> None:
        self.runner.resume(name)

    def dead_letters(self, name: str | None = None) -> Any:
        return self.runner.dead_letters(name)

    def retry_dead_letters(self, name: str) -> dict[str, int]:
        return self.runner.retry_dead_letters(name)

    def query(self, sql: str, timeout_s: float | None = None, params: Any = None) -> Any:
        """A read-only query (checked before it runs, cancelled at its timeout: ``None`` is this
        projector's ``query_timeout_s``; result capped), on its own cursor."""
        req = query_request(sql, params, timeout_s, self.config)
        return self.runner.read_model.query(req, LogEvents(self.layout, self.partitions))

    def is_build(self, name: str) -> bool:
        """Whether ``name`` is a version a backfill built beside (not a projection of its own)."""
        return getattr(self.runner.states[name].projection, "beside_of", None) is not None if name in self.runner.states else False

    def install_backfill(self, projection: type[Projection], definition: bytes) -> dict[str, Any]:
        """Combine a finished backfill's parts into this projector's read model (the file's one
        writer) and follow the built version from there on."""
        from es_actors.read.backfill.install import adopt
        from es_actors.read.backfill.work import open_work

        scratch = self.layout.read_model_root / ".backfill-parts" if self.layout.scheme else None  # parts copied from a bucket
        work = open_work(self.layout, projection.name, projection.version, scratch=scratch)
        return adopt(self.runner, projection, work, definition).to_dict()

    # -- Ray calls: versions of projections (es_actors.read.versions, ADR-018) ------------------

    def _versions(self) -> Any:
        from es_actors.read.versions import Versions

        return Versions(self.runner.read_model.con, self.layout, self.partitions, self.runner, load=ray.cloudpickle.loads)

    def versions(self) -> list[dict[str, Any]]:
        return self._versions().versions()  # type: ignore[no-any-return]

    def check(self, name: str, version: int) -> dict[str, Any]:
        return self._versions().check(name, version)  # type: ignore[no-any-return]

    def cutover(self, name: str, version: int, principal: str, reason: str, force: bool = False) -> dict[str, Any]:
        return self._versions().cutover(name, version, principal, reason, force)  # type: ignore[no-any-return]

    def rollback(self, name: str, principal: str, reason: str, force: bool = False) -> dict[str, Any]:
        return self._versions().rollback(name, principal, reason, force)  # type: ignore[no-any-return]

    def drop(self, name: str, version: int, principal: str, reason: str) -> dict[str, Any]:
        return self._versions().drop(name, version, principal, reason)  # type: ignore[no-any-return]

    def operations(self, name: str | None = None) -> list[dict[str, Any]]:
        return self._versions().operations(name)  # type: ignore[no-any-return]

    def close(self) -> None:
        self._closed = True
        self._catch_up.join(timeout_s=10.0)  # its tasks are cancelled; their checkpoints stay for the next start
        self.runner.close(loop=self._loop)


def start_projector(
    layout: StoreLayout,
    descriptor: StoreDescriptor,
    aggregates: Sequence[type[Aggregate[Any]]],
    projections: Sequence[Any],
    config: StoreConfig,
) -> Any:
    """The store's projector actor (joined if another client started it)."""
    def create() -> Any:
        return ProjectorActor.options(  # type: ignore[attr-defined]
            name=projector_name(layout, descriptor), namespace=NAMESPACE, get_if_exists=True,
            # its read-model file is on this node's disk (an object store's too: read_model_dir, ADR-019)
            **store_actor_placement(False),
        ).remote(layout, descriptor.partitions, list(aggregates), list(projections), config)

    actor = create()
    deadline = time.monotonic() + config.retry_deadline_s
    while True:
        try:
            running = actor_get(actor.projections.remote())
            break
        except EsActorsError:
            ray.kill(actor, no_restart=True)
            raise
        except ray.exceptions.ActorUnavailableError:  # joined while it restarts after a crash
            if time.monotonic() >= deadline:
                raise ActorStartFailed("the projector did not come back in time") from None
            time.sleep(0.1)
        except ray.exceptions.RayActorError as exc:
            if died_in_constructor(exc) or time.monotonic() >= deadline:
                # An actor whose constructor failed keeps its name until killed: without this, every
                # later open of the store (fixed projections too) would join it and fail the same way.
                ray.kill(actor, no_restart=True)
                raise actor_start_failed("the projector", exc) from None
            time.sleep(0.1)  # the store was closed a moment ago: its projector's name is being released
            actor = create()
    wanted = {p.name: p.version for p in projections}
    if running != wanted:  # joined a projector another client started with other projections: say so, leave it
        raise ProjectorConflict(
            f"a projector already runs for {layout.root} with projections {running}; this open asks for "
            f"{wanted}. Close the store that started it (or open this one without projections to use it)."
        )
    return actor
