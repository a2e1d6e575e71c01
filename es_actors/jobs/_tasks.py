"""What the partition jobs share: resolving domain classes, opening a store's partitions inside a
task, placing the tasks, and running one task per partition while reporting each partition as
it finishes. Starting or joining Ray and unwrapping a task's error are the runtime's
(:mod:`es_actors.runtime.cluster`)."""

from __future__ import annotations

import importlib
import os
import socket
import sys
from typing import Any, Callable, Sequence, Union

import ray

from es_actors.domain import Aggregate
from es_actors.errors import EsActorsError
from es_actors.runtime.cluster import ensure_ray, store_actor_placement, unwrap_actor_error
from es_actors.storage.api import StorageBackend
from es_actors.storage.backends import open_backend
from es_actors.storage.layout import StoreLayout

#: ``progress=`` of the jobs: True (a bar on stderr), False (quiet), or a function that gets
#: each partition's report as soon as its task finishes.
Progress = Union[bool, Callable[[dict[str, Any]], None]]


def connect_ray(address: str | None = None) -> None:
    """Join the cluster at ``address`` (or $RAY_ADDRESS, or a ``ray start`` one here), else start a
    small local Ray, loopback only (ADR-012) and without a dashboard: the runtime's :func:`ensure_ray`."""
    ensure_ray(address, include_dashboard=False)


def task_placement(layout: StoreLayout) -> dict[str, Any]:
    """Ray options of a job's partition tasks. A store on object storage: SPREAD over the cluster's
    nodes (every node reads it the same way). A directory: Ray's default, as before (a task on
    another node reads the same path there, e.g. a shared file system; if the store is not there
    the task says so, naming its host)."""
    return store_actor_placement(True) if layout.remote else {}


def open_partition_store(uri: str, what: str) -> StorageBackend:
    """The storage backend of the store at ``uri`` inside a task (a local path or an object-store URI,
    never a path derived from one); EsActorsError naming the store, ``what`` and this host if no
    store is there."""
    layout = StoreLayout.from_uri(uri)
    if layout.read_descriptor() is None:
        raise EsActorsError(f"{what}: {layout.uri} is not an es_actors store as seen from {socket.gethostname()} "
                            "(no store.json)")
    return open_backend(uri)


def resolve_aggregates(spec: str | Sequence[str]) -> list[type[Aggregate[Any]]]:
    """``"es_actors.examples.bank:BankAccount,pkg.mod:Other"`` (or a list of such) -> the classes, imported."""
    return resolve_classes(spec, Aggregate, "es_actors.examples.bank:BankAccount")


def resolve_classes(spec: str | Sequence[str], base: type, example: str) -> list[Any]:
    """``module:Class`` names, comma-separated (or a list of such; ``pkg.mod:A,B`` takes B from the
    same module) -> the classes, imported; each must subclass ``base`` (``example`` shows the form in errors)."""
    items = [s for part in ([spec] if isinstance(spec, str) else spec) for s in part.split(",")]
    out: list[Any] = []
    previous_module = ""
    for item in (i.strip() for i in items):
        if not item:
            continue
        module_name, sep, attr = item.partition(":")
        if not sep and previous_module and item.isidentifier():  # "pkg.mod:A,B": B from the same module
            module_name, sep, attr = previous_module, ":", item
        previous_module = module_name
        if not sep or not module_name or not attr:
            raise EsActorsError(f"{item!r}: give classes as module:Class, e.g. {example}")
        if "" not in sys.path and os.getcwd() not in sys.path:  # like `python -m`: the current directory imports
            sys.path.insert(0, os.getcwd())
        try:
            obj: Any = importlib.import_module(module_name)
        except ImportError as exc:
            raise EsActorsError(f"{item!r}: cannot import {module_name!r}: {exc}") from None
        for name in attr.split("."):
            try:
                obj = getattr(obj, name)
            except AttributeError:
                raise EsActorsError(f"{item!r}: {module_name!r} has no {attr!r}") from None
        if not (isinstance(obj, type) and issubclass(obj, base)):
            raise EsActorsError(f"{item!r} is not a {base.__name__} subclass")
        out.append(obj)
    if not out:
        raise EsActorsError(f"no {base.__name__} classes given")
    return out


def run_per_partition(
    refs: dict[Any, int], progress: Progress, describe: Callable[[dict[str, Any]], str], title: str
) -> tuple[dict[int, dict[str, Any]], dict[int, BaseException]]:
    """Wait for the partition tasks as they finish (``ray.wait``), reporting each one.

    Returns (report by partition, error by partition); every task is waited for, so a
    failure in one partition never leaves another's work half done.
    """
    bar = None
    if progress is True:
        from tqdm import tqdm

        bar = tqdm(total=len(refs), desc=title, unit="partition", file=sys.stderr, leave=True)
    done: dict[int, dict[str, Any]] = {}
    failed: dict[int, BaseException] = {}
    pending = list(refs)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                p = refs[ref]
                try:
                    report = ray.get(ref)
                except Exception as exc:
                    failed[p] = unwrap_actor_error(exc)
                    report = {"partition": p, "error": f"{type(failed[p]).__name__}: {failed[p]}"}
                else:
                    done[p] = report
                if bar is not None:
                    bar.update(1)
                    bar.write(describe(report), file=sys.stderr)
                elif callable(progress):
                    progress(report)
    finally:
        if bar is not None:
            bar.close()
    return done, failed


def raise_first(failed: dict[int, BaseException], report: dict[str, Any]) -> None:
    """Raise the first failed partition's own error (e.g. UnreadableEvent, its message naming the
    event), noting the other failed partitions; ``exc.report`` holds what the others did."""
    if not failed:
        return
    first = min(failed)
    exc = failed[first]
    others = [
        f"partition {p}: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}" for p, e in sorted(failed.items()) if p != first
    ]
    if others:
        exc.add_note("also failed: " + "; ".join(others))
    try:
        exc.report = report  # type: ignore[attr-defined]
    except Exception:
        pass
    raise exc
