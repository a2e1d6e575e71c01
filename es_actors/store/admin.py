"""``store.admin``: operations on a store's partition actors as a whole: counters, sealing
the tails, freeing and warming memory, writing due snapshots, compacting; and verifying the log."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from es_actors.errors import EsActorsError

if TYPE_CHECKING:
    from es_actors.storage.local.verify import VerifyProgressFn, VerifyReport
    from es_actors.store.facade import Store


class Admin:
    """The partition-actor operations of one :class:`~es_actors.store.Store` (``store.admin``)."""

    def __init__(self, store: "Store") -> None:
        self.store = store

    def stats(self) -> list[dict[str, Any]]:
        """Per-partition counters from the owning actors."""
        from es_actors.runtime.cluster import actor_get

        actors = self.store.partition_actors_or_none()
        if actors is None:
            raise EsActorsError("stats need an open (writable) store")
        return actor_get([a.stats.remote() for a in actors])  # type: ignore[no-any-return]

    def seal(self) -> None:
        """Seal every partition's tail now (close does this too)."""
        from es_actors.runtime.cluster import actor_get

        actors = self.store.partition_actors_or_none()
        if actors is not None:
            actor_get([a.seal.remote() for a in actors])

    def passivate(self) -> int:
        """Drop every hydrated state from the partition actors' memory; they rehydrate on next use."""
        from es_actors.runtime.cluster import actor_get

        return sum(actor_get([a.passivate.remote() for a in self.store.partition_actors()]))

    def hydrate(self, limit_per_partition: int | None = None) -> int:
        """Warm up: hydrate the most recently written aggregates of each partition (default up to
        ``max_hydrated``), from snapshots plus later events. Returns how many were hydrated."""
        from es_actors.runtime.cluster import actor_get

        return sum(actor_get([a.hydrate_all.remote(limit_per_partition) for a in self.store.partition_actors()]))

    def flush_snapshots(self) -> int:
        """Write the snapshots the live policy has due now instead of at the next batch or close."""
        from es_actors.runtime.cluster import actor_get

        return sum(actor_get([a.flush_snapshots.remote() for a in self.store.partition_actors()]))

    def compact(self, partition: int | None = None) -> list[dict[str, Any]]:
        """Merge runs of small sealed segments now, in the running partition actors (every
        partition, or one): per partition its segments before and after. A closed store is
        compacted by :func:`es_actors.jobs.compaction.compact_store` (``es-actors compact``)."""
        from es_actors.runtime.cluster import actor_get

        actors = self.store.partition_actors_or_none()
        if actors is None:
            raise EsActorsError("compaction through store.admin needs an open (writable) store; "
                                "a closed one: `es-actors compact --store PATH`")
        chosen = list(range(len(actors))) if partition is None else [partition]
        out = actor_get([actors[p].compact.remote() for p in chosen])
        return [{"partition": p, **r} for p, r in zip(chosen, out)]

    def verify(self, partition: int | None = None, progress: "VerifyProgressFn | None" = None) -> "VerifyReport":
        """Read the whole log (or one partition) and report damage, writing nothing
        (:func:`es_actors.storage.local.verify.verify_store`; safe while the store runs)."""
        from es_actors.storage.local.verify import verify_store

        return verify_store(self.store.root, partition, progress)
