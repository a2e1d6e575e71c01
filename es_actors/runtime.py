"""Starting and stopping the partition actors of a store on Ray."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from typing import Any, Sequence

import ray

from .actor import NAMESPACE, PartitionActor
from .config import StoreConfig
from .domain import Aggregate
from .errors import EsActorsError
from .storage.layout import StoreDescriptor, StoreLayout

log = logging.getLogger(__name__)


def ensure_ray(address: str | None) -> None:
    """Join the cluster at ``address`` (or RAY_ADDRESS), else start a local Ray."""
    if ray.is_initialized():
        return
    ray.init(address=address, logging_level=logging.WARNING, configure_logging=True)


def store_actor_prefix(layout: StoreLayout, descriptor: StoreDescriptor) -> str:
    """Store directory, store id, and a hash of the store's absolute path: a copied store
    directory (same id) gets actors of its own, never its original's."""
    where = hashlib.blake2b(str(layout.root.resolve()).encode(), digest_size=3).hexdigest()
    return f"{layout.root.name}.{descriptor.store_id[:8]}.{where}"


def actor_name(layout: StoreLayout, descriptor: StoreDescriptor, partition: int) -> str:
    """Readable in the dashboard's actor list: store directory, store id, path hash, partition."""
    return f"{store_actor_prefix(layout, descriptor)}.partition-{partition:04d}"


def start_partition_actors(
    layout: StoreLayout,
    descriptor: StoreDescriptor,
    aggregates: Sequence[type[Aggregate[Any]]],
    config: StoreConfig,
    address: str | None,
) -> tuple[list[Any], list[bool]]:
    """The store's partition actors (joined where they already run), and for each whether this
    call created it (and so owns stopping it)."""
    ensure_ray(address)
    opener = os.urandom(12).hex()
    deadline = time.monotonic() + config.lock_timeout_s
    while True:
        actors = [
            PartitionActor.options(
                name=actor_name(layout, descriptor, p), namespace=NAMESPACE, get_if_exists=True
            ).remote(str(layout.root), p, list(aggregates), config, opener)
            for p in range(descriptor.partitions)
        ]
        try:
            ray.get([a.stats.remote() for a in actors])  # waits for recovery; surfaces WriterFenced
            created = [token == opener for token in ray.get([a.opened_by.remote() for a in actors])]
            return actors, created
        except EsActorsError as exc:
            for a in actors:
                ray.kill(a, no_restart=True)
            raise unwrap_actor_error(exc) from None
        except ray.exceptions.ActorDiedError:
            # The store was closed a moment ago: we joined an actor that close() killed and whose
            # name Ray has not released yet. Ask again once it has.
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


def unwrap_actor_error(exc: BaseException) -> BaseException:
    """The error an actor raised, without Ray's wrapper (whose text is a remote traceback).

    Ray re-raises an actor's exception as ``RayTaskError(<its class>)``: an instance of the
    original class, but whose message is the actor's traceback with terminal colour codes.
    Callers should see the plain error (e.g. :class:`WriterFenced` and its message).
    """
    cause = getattr(exc, "cause", None)
    if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(cause, EsActorsError):
        return cause
    return exc


def find_partition_actors(layout: StoreLayout, descriptor: StoreDescriptor) -> list[Any]:
    """The running partition actors of a store in the connected cluster (those that run)."""
    found = []
    for p in range(descriptor.partitions):
        try:
            found.append(ray.get_actor(actor_name(layout, descriptor, p), namespace=NAMESPACE))
        except ValueError:
            pass
    return found


def stop_partition_actors(actors: list[Any]) -> None:
    """Seal and release every partition, then end the actors."""
    try:
        ray.get([a.close.remote() for a in actors])
    finally:
        for a in actors:
            ray.kill(a, no_restart=True)


def projector_name(layout: StoreLayout, descriptor: StoreDescriptor) -> str:
    return f"{store_actor_prefix(layout, descriptor)}.projector"


def start_projector(
    layout: StoreLayout,
    descriptor: StoreDescriptor,
    aggregates: Sequence[type[Aggregate[Any]]],
    projections: Sequence[Any],
    config: StoreConfig,
) -> Any:
    """The store's projector actor (joined if another client started it)."""
    from .projector import ProjectorActor

    def create() -> Any:
        return ProjectorActor.options(
            name=projector_name(layout, descriptor), namespace=NAMESPACE, get_if_exists=True
        ).remote(str(layout.root), descriptor.partitions, list(aggregates), list(projections), config)

    actor = create()
    deadline = time.monotonic() + config.retry_deadline_s
    while True:
        try:
            running = ray.get(actor.projections.remote())
            wanted = {p.name: p.version for p in projections}
            if running != wanted:  # joined a projector started with other projections: say so
                raise EsActorsError(
                    f"a projector already runs for {layout.root} with projections {running}; this open asks for "
                    f"{wanted}. Close the store that started it (or open this one without projections to use it)."
                )
            return actor
        except EsActorsError as exc:
            if "already runs" not in str(exc):
                ray.kill(actor, no_restart=True)
            raise unwrap_actor_error(exc) from None
        except ray.exceptions.ActorUnavailableError:  # joined while it restarts after a crash
            if time.monotonic() >= deadline:
                raise EsActorsError("the projector did not come back in time") from None
            time.sleep(0.1)
        except ray.exceptions.ActorDiedError as exc:
            if "ray.kill" not in str(exc) or time.monotonic() >= deadline:
                ray.kill(actor, no_restart=True)
                raise EsActorsError(f"the projector did not start: {exc}") from None
            time.sleep(0.1)  # the store was closed a moment ago: its projector's name is being released
            actor = create()
        except ray.exceptions.RayActorError as exc:
            # An actor whose constructor failed keeps its name until killed: without this, every
            # later open of the store (fixed projections too) would join it and fail the same way.
            ray.kill(actor, no_restart=True)
            raise EsActorsError(f"the projector did not start: {exc}") from None


def find_projector(layout: StoreLayout, descriptor: StoreDescriptor) -> Any | None:
    """The running projector of a store in the connected cluster, if any."""
    try:
        return ray.get_actor(projector_name(layout, descriptor), namespace=NAMESPACE)
    except ValueError:
        return None


def stop_projector(actor: Any) -> None:
    try:
        ray.get(actor.close.remote(), timeout=60)
    finally:
        ray.kill(actor, no_restart=True)
