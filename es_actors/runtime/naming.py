"""Names of a store's actors in the Ray cluster, and finding or stopping the running ones.

Names join a store's clients to one set of actors: any process that opens the same store
directory finds the same partition actors and projector by name (``get_if_exists``)."""

from __future__ import annotations

import hashlib
from typing import Any

import ray

from es_actors.runtime.cluster import actor_get
from es_actors.storage.layout import StoreDescriptor, StoreLayout

NAMESPACE = "es_actors"


def store_actor_prefix(layout: StoreLayout, descriptor: StoreDescriptor) -> str:
    """Store directory, store id, and a hash of the store's absolute path: a copied store
    directory (same id) gets actors of its own, never its original's."""
    where = hashlib.blake2b(str(layout.root.resolve()).encode(), digest_size=3).hexdigest()
    return f"{layout.root.name}.{descriptor.store_id[:8]}.{where}"


def actor_name(layout: StoreLayout, descriptor: StoreDescriptor, partition: int) -> str:
    """Readable in the dashboard's actor list: store directory, store id, path hash, partition."""
    return f"{store_actor_prefix(layout, descriptor)}.partition-{partition:04d}"


def projector_name(layout: StoreLayout, descriptor: StoreDescriptor) -> str:
    return f"{store_actor_prefix(layout, descriptor)}.projector"


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
