"""Starting or joining Ray (loopback-only when started here, ADR-012), and calling es_actors'
actors so that what they raise arrives as the es_actors error itself."""

from __future__ import annotations

import logging
import os
import re
from contextlib import contextmanager
from typing import Any, Iterator

import ray

from es_actors.errors import ActorStartFailed, EsActorsError

log = logging.getLogger(__name__)


LOOPBACK = "127.0.0.1"
#: Ray's own switch for a single-machine Ray (on by default on macOS and Windows): with it
#: off, Ray takes 127.0.0.1 as the node address, and every Ray process then listens on
#: loopback only (ADR-012). Read by ``ray._private.services.get_node_ip_address``.
_RAY_CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def ensure_ray(address: str | None, **start_options: Any) -> None:
    """Join the cluster at ``address`` (or $RAY_ADDRESS, or one started by ``ray start`` on this
    machine), else start a local Ray that listens on 127.0.0.1 only (:func:`start_local_ray`,
    given ``start_options``, e.g. ``include_dashboard=False``)."""
    if ray.is_initialized():
        return
    if _starts_a_new_ray(address):
        start_local_ray(logging_level=logging.WARNING, configure_logging=True, **start_options)
    elif not join_ray(address):  # an address given (or $RAY_ADDRESS), loopback ones included; else `ray start`'s
        ray.init(address=address, logging_level=logging.WARNING, configure_logging=True)


def join_ray(address: str | None) -> bool:
    """Join the Ray cluster at ``address`` (or $RAY_ADDRESS) if one is given and this process
    is not connected yet; never starts a Ray. Whether this process is connected now."""
    address = address or os.environ.get("RAY_ADDRESS")
    if address and not ray.is_initialized():
        if address.split("://")[-1].rsplit(":", 1)[0] in (LOOPBACK, "localhost"):
            with _single_machine():  # a loopback-only Ray (start_local_ray): join it on 127.0.0.1, not this machine's address
                ray.init(address=address, _node_ip_address=LOOPBACK, logging_level=logging.WARNING)
        else:
            ray.init(address=address, logging_level=logging.WARNING)
    return bool(ray.is_initialized())


def _starts_a_new_ray(address: str | None) -> bool:
    """Whether ``ray.init(address=address)`` would start a new Ray rather than join one."""
    if address == "local":
        return True
    if address is not None or os.environ.get("RAY_ADDRESS"):
        return False
    from ray._private.services import canonicalize_bootstrap_address

    return canonicalize_bootstrap_address(None) is None  # type: ignore[arg-type]  # None: "find one here"  # no cluster from `ray start` here either


def start_local_ray(**options: Any) -> None:
    """Start a Ray on this machine whose every process (GCS, raylet, object manager, workers,
    dashboard and its agent, metrics, runtime-env agent) listens on 127.0.0.1 only.

    Ray binds its gRPC servers to all interfaces unless the node address is 127.0.0.1, and
    ``ray.init(_node_ip_address="127.0.0.1")`` alone is turned back into the machine's address.
    Ray's single-machine switch (what it uses on macOS and Windows) keeps 127.0.0.1; it is set
    for this start only (the processes started now inherit it) and restored afterwards, so a
    later ``ray.init(address=...)`` in this process still finds its real address. Token
    authentication stays as Ray decides (on for a new local Ray unless RAY_AUTH_MODE=disabled).

    Workers run at the normal CPU priority (``worker_niceness`` 0, Ray's default is 15): they
    host the partition actors, the store's server (runtime.process.run_at_normal_priority).
    """
    options["_system_config"] = {"worker_niceness": 0, **(options.get("_system_config") or {})}
    with _single_machine():
        ray.init(address="local", _node_ip_address=LOOPBACK, dashboard_host=LOOPBACK, **options)


@contextmanager
def _single_machine() -> Iterator[None]:
    """Ray's single-machine switch, for one start or join (see :func:`start_local_ray`)."""
    import ray._private.ray_constants as ray_constants

    saved_env, saved_flag = os.environ.get(_RAY_CLUSTER_SWITCH), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_RAY_CLUSTER_SWITCH] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(_RAY_CLUSTER_SWITCH, None)
        else:
            os.environ[_RAY_CLUSTER_SWITCH] = saved_env


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_CALL = re.compile(r"ray::([\w.]+)\(")


def plain_text(text: str) -> str:
    """Ray's error text without terminal colour codes."""
    return _ANSI.sub("", text)


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


def died_in_constructor(exc: BaseException) -> bool:
    """Whether an actor call failed because the actor's constructor raised (Ray's own flag on
    the error, not its text): such an actor never serves, and keeps its name until killed."""
    return bool(getattr(exc, "actor_init_failed", False))


def actor_start_failed(what: str, exc: BaseException) -> ActorStartFailed:
    """:class:`ActorStartFailed` naming ``what`` did not start and why (Ray's text, uncoloured)."""
    return ActorStartFailed(f"{what} did not start: {plain_text(str(exc))}")


def actor_get(refs: Any, *, timeout: float | None = None) -> Any:
    """``ray.get`` for calls to es_actors' own actors: what they raise arrives as the es_actors
    error itself (:func:`unwrap_actor_error`), not as Ray's wrapper. Ray's own errors (the
    actor died, is restarting, the wait timed out) pass through for the caller to handle."""
    try:
        return ray.get(refs, timeout=timeout)
    except ray.exceptions.RayTaskError as exc:
        raise unwrap_actor_error(exc) from None


def store_actor_placement(spread: bool) -> dict[str, Any]:
    """Ray options that place a store's actors. ``spread`` (a store on object storage): over the
    cluster's nodes, restarted on another when a node is lost. Otherwise (a local directory): on this
    process's node, where the directory is, and nowhere else, also after a restart (Ray's default
    would put some on other nodes, each writing a different machine's disk at the same path)."""
    if spread:
        return {"scheduling_strategy": "SPREAD"}
    try:
        node = ray.get_runtime_context().get_node_id()
    except Exception:  # e.g. a Ray Client ("ray://") session has no node of its own
        return {}
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=False)}
