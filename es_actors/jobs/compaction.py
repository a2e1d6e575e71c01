"""``es-actors compact``: merge runs of small sealed segments now, partition by partition.

A partition whose actor runs (in the Ray cluster this process joined) is asked to compact,
beside its writes; any other partition is opened here under its writer lock (``WriterFenced``
if a process this one cannot reach writes it), its tail sealed as a clean close does, compacted,
and let go. Compaction builds
the next generation beside the current one and swaps ``current`` atomically: an interrupt
leaves either generation whole, readers see one or the other.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from es_actors.config import StoreConfig
from es_actors.errors import EsActorsError, WriterFenced
from es_actors.runtime.cluster import actor_get, join_ray
from es_actors.storage.layout import StoreLayout


@dataclass
class PartitionCompaction:
    partition: int
    segments_before: int
    segments_after: int
    merged: int
    by: str  # "actor" (the running partition actor) | "here" (opened under its writer lock)
    seconds: float

    def line(self) -> str:
        return (f"p{self.partition:04d}: {self.segments_before} -> {self.segments_after} segments "
                f"({self.merged} merged, by the {'running actor' if self.by == 'actor' else 'writer lock here'}, "
                f"{self.seconds:.2f}s)")


@dataclass
class CompactReport:
    store: str
    partitions: list[PartitionCompaction] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        before = sum(p.segments_before for p in self.partitions)
        after = sum(p.segments_after for p in self.partitions)
        merged = sum(1 for p in self.partitions if p.merged)
        if not merged:
            return f"{self.store}: {len(self.partitions)} partitions looked at, none had segments to merge ({before} segments)"
        return f"{self.store}: {merged} of {len(self.partitions)} partitions compacted, {before} -> {after} segments"


def compact_store(
    store: str | os.PathLike[str], partition: int | None = None, *, address: str | None = None,
    progress: Callable[[PartitionCompaction], None] | None = None, config: StoreConfig | None = None,
) -> CompactReport:
    """Compact every partition (or one): through its running actor if the Ray cluster at
    ``address`` (or $RAY_ADDRESS, or the one this process joined) runs it, else here under its
    writer lock. ``config``: the thresholds (compact_small_rows, compact_min_run) for the
    partitions opened here; running actors use their own."""
    layout = StoreLayout.from_uri(store)
    desc = layout.read_descriptor()
    if desc is None:
        raise EsActorsError(f"{layout.uri} is not an es_actors store (no store.json)")
    if partition is not None and not 0 <= partition < desc.partitions:
        raise EsActorsError(f"{layout.uri} has partitions 0..{desc.partitions - 1}, not {partition}")
    actors: dict[int, Any] = {}
    if join_ray(address):
        from es_actors.runtime.naming import actor_name, NAMESPACE
        import ray

        for p in range(desc.partitions):
            try:
                actors[p] = ray.get_actor(actor_name(layout, desc, p), namespace=NAMESPACE)
            except ValueError:
                pass
    report = CompactReport(store=layout.uri)
    for p in [partition] if partition is not None else range(desc.partitions):
        t0 = time.monotonic()
        if p in actors:
            r = actor_get(actors[p].compact.remote())
            done = PartitionCompaction(p, r["segments_before"], r["segments_after"], r["merged"], "actor", 0.0)
        elif layout.scheme:
            # No lock on whole objects: opening the partition here would claim a newer epoch and so
            # fence a live writer this process cannot see (another Ray cluster, another machine).
            raise EsActorsError(
                f"{layout.uri}: partition {p}: no running partition actor was found in a Ray cluster this process "
                f"joined, and a {layout.scheme} store has no writer lock to tell whether another process writes it; "
                "compact through the running store (--address, or store.admin.compact()), or open the store "
                "(Store.open) where none runs and compact it there"
            )
        else:
            done = _compact_here(layout, p, config or StoreConfig(lock_timeout_s=2.0))
        done.seconds = round(time.monotonic() - t0, 3)
        report.partitions.append(done)
        if progress is not None:
            progress(done)
    return report


def _compact_here(layout: StoreLayout, p: int, config: StoreConfig) -> PartitionCompaction:
    from es_actors.storage.backends import open_owned_partition

    try:
        log, _snapshots = open_owned_partition(layout, p, config)
    except WriterFenced as exc:
        raise WriterFenced(f"partition {p}: {exc} (no partition actor of it was found in a Ray cluster this process "
                           "joined: give the cluster's --address, or stop the writer)") from None
    try:
        log.seal_all()  # what the tail holds first, as a clean close does (opening queued the closed tail files)
        before = log.sealed_segment_count
        merged = log.compact()
        return PartitionCompaction(p, before, log.sealed_segment_count, merged, "here", 0.0)
    finally:
        log.close()
