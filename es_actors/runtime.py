"""Starting and stopping the partition actors of a store on Ray."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from typing import Any, Sequence

import ray

from .actor import NAMESPACE, PartitionActor
from .config import StoreConfig
from .domain import Aggregate
from .errors import EsActorsError
from .storage.layout import StoreDescriptor, StoreLayout

log = logging.getLogger(__name__)


LOOPBACK = "127.0.0.1"
#: Ray's own switch for a single-machine Ray (on by default on macOS and Windows): with it
#: off, Ray takes 127.0.0.1 as the node address, and every Ray process then listens on
#: loopback only (ADR-012). Read by ``ray._private.services.get_node_ip_address``.
_RAY_CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def ensure_ray(address: str | None) -> None:
    """Join the cluster at ``address`` (or $RAY_ADDRESS, or one started by ``ray start`` on this
    machine), else start a local Ray that listens on 127.0.0.1 only (:func:`start_local_ray`)."""
    if ray.is_initialized():
        return
    if _starts_a_new_ray(address):
        start_local_ray(logging_level=logging.WARNING, configure_logging=True)
    else:
        ray.init(address=address, logging_level=logging.WARNING, configure_logging=True)


def _starts_a_new_ray(address: str | None) -> bool:
    """Whether ``ray.init(address=address)`` would start a new Ray rather than join one."""
    if address == "local":
        return True
    if address is not None or os.environ.get("RAY_ADDRESS"):
        return False
    from ray._private.services import canonicalize_bootstrap_address

    return canonicalize_bootstrap_address(None) is None  # no cluster from `ray start` here either


def start_local_ray(**options: Any) -> None:
    """Start a Ray on this machine whose every process (GCS, raylet, object manager, workers,
    dashboard and its agent, metrics, runtime-env agent) listens on 127.0.0.1 only.

    Ray binds its gRPC servers to all interfaces unless the node address is 127.0.0.1, and
    ``ray.init(_node_ip_address="127.0.0.1")`` alone is turned back into the machine's address.
    Ray's single-machine switch (what it uses on macOS and Windows) keeps 127.0.0.1; it is set
    for this start only (the processes started now inherit it) and restored afterwards, so a
    later ``ray.init(address=...)`` in this process still finds its real address. Token
    authentication stays as Ray decides (on for a new local Ray unless RAY_AUTH_MODE=disabled).
    """
    import ray._private.ray_constants as ray_constants

    saved_env, saved_flag = os.environ.get(_RAY_CLUSTER_SWITCH), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_RAY_CLUSTER_SWITCH] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(address="local", _node_ip_address=LOOPBACK, dashboard_host=LOOPBACK, **options)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(_RAY_CLUSTER_SWITCH, None)
        else:
            os.environ[_RAY_CLUSTER_SWITCH] = saved_env


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
            actor_get([a.stats.remote() for a in actors])  # waits for recovery; surfaces WriterFenced
            created = [token == opener for token in actor_get([a.opened_by.remote() for a in actors])]
            return actors, created
        except EsActorsError:
            for a in actors:
                ray.kill(a, no_restart=True)
            raise
        except ray.exceptions.ActorDiedError:
            # The store was closed a moment ago: we joined an actor that close() killed and whose
            # name Ray has not released yet. Ask again once it has.
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_CALL = re.compile(r"ray::([\w.]+)\(")


def unwrap_actor_error(exc: BaseException) -> BaseException:
    """The error an actor raised, without Ray's wrapper (whose text is a remote traceback).

    Ray re-raises an actor's exception as ``RayTaskError(<its class>)``: an instance of the
    original class, but whose message is the actor's traceback with terminal colour codes.
    Callers see the plain es_actors error (e.g. :class:`WriterFenced` and its message); any
    other exception raised in an actor (a bug) becomes an :class:`EsActorsError` naming the
    call and the cause, with the remote traceback, uncoloured, as a note.
    """
    if not isinstance(exc, ray.exceptions.RayTaskError):
        return exc
    cause = exc.__dict__.get("cause")  # the dual class forwards unknown attributes to the cause
    if isinstance(cause, EsActorsError):
        return cause
    remote = _ANSI.sub("", str(exc)).strip()  # "ray::Class.method() (pid=..., ...)" + the traceback
    call = _CALL.search(remote)
    what = f"{type(cause).__name__}: {cause}" if cause is not None else remote.splitlines()[-1]
    plain = EsActorsError(f"{call.group(1) if call else 'an actor call'} failed in the actor: {_ANSI.sub('', what)}")
    plain.add_note(remote)
    return plain


def actor_get(refs: Any, *, timeout: float | None = None) -> Any:
    """``ray.get`` for calls to es_actors' own actors: what they raise arrives as the es_actors
    error itself (:func:`unwrap_actor_error`), not as Ray's wrapper. Ray's own errors (the
    actor died, is restarting, the wait timed out) pass through for the caller to handle."""
    try:
        return ray.get(refs, timeout=timeout)
    except ray.exceptions.RayTaskError as exc:
        raise unwrap_actor_error(exc) from None


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
        actor_get([a.close.remote() for a in actors])
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
            running = actor_get(actor.projections.remote())
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
            raise
        except ray.exceptions.ActorUnavailableError:  # joined while it restarts after a crash
            if time.monotonic() >= deadline:
                raise EsActorsError("the projector did not come back in time") from None
            time.sleep(0.1)
        except ray.exceptions.ActorDiedError as exc:
            if "ray.kill" not in str(exc) or time.monotonic() >= deadline:
                ray.kill(actor, no_restart=True)
                raise EsActorsError(f"the projector did not start: {_ANSI.sub('', str(exc))}") from None
            time.sleep(0.1)  # the store was closed a moment ago: its projector's name is being released
            actor = create()
        except ray.exceptions.RayActorError as exc:
            # An actor whose constructor failed keeps its name until killed: without this, every
            # later open of the store (fixed projections too) would join it and fail the same way.
            ray.kill(actor, no_restart=True)
            raise EsActorsError(f"the projector did not start: {_ANSI.sub('', str(exc))}") from None


def find_projector(layout: StoreLayout, descriptor: StoreDescriptor) -> Any | None:
    """The running projector of a store in the connected cluster, if any."""
    try:
        return ray.get_actor(projector_name(layout, descriptor), namespace=NAMESPACE)
    except ValueError:
        return None


def stop_projector(actor: Any) -> None:
    try:
        actor_get(actor.close.remote(), timeout=60)
    finally:
        ray.kill(actor, no_restart=True)
