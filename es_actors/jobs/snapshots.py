"""Build snapshots for every aggregate of one type: one Ray task per partition.

    python -m es_actors.jobs.snapshots BankAccount ./demo-store [module:Class,...]
    es-actors snapshot BankAccount --store ./demo-store --aggregates es_actors.examples.bank:BankAccount

Safe on a live store. Each task reads its partition read-only (``read_partition``: sealed
segments + durable tail, consistent while the owner writes), replays every aggregate of
the type from ``initial_state`` through ``registry.decode`` (upcasters, validation) and
``evolve``, and writes ONE immutable snapshot file into ``snapshots/pNNNN/`` (written whole,
then renamed into place). The partition actor sees the file on its next lookup and uses a
row only if its fingerprint matches the code it runs and its log still holds the snapshot's
event at the snapshot's position; events after it are replayed as usual.

A partition with an event that cannot be read (``UnreadableEvent``), a version gap or a
failing ``evolve`` writes no file, and the job raises that error (its message names the
event); the other partitions' files are complete and valid, so they are kept.
"""

from __future__ import annotations

from es_actors.codecs.state import SnapshotFormat
import dataclasses
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import ray

from es_actors.domain import Aggregate, DomainRegistry
from es_actors.errors import EsActorsError
from es_actors.jobs.replay import fold_partition_table
from es_actors.storage.layout import StoreLayout
from es_actors.storage.local.reader import event_ids_at, read_partition, sealed_last_position
from es_actors.codecs.snapshot_rows import SnapshotRow
from es_actors.storage.local.snapshots import SnapshotStore, snapshot_dir, write_snapshot_file
from es_actors.store import Store

from es_actors.jobs._tasks import Progress, connect_ray, raise_first, resolve_aggregates, run_per_partition

# Snapshot rows name their event by id as well as position when the storage layer has the column.
_ROWS_CARRY_EVENT_ID = "event_id" in {f.name for f in dataclasses.fields(SnapshotRow)}


def snapshot_partition(
    root: str,
    partition: int,
    aggregates: Sequence[type[Aggregate[Any]]],
    aggregate_type: str,
    expected_fingerprint: str | None = None,
    skip_current: bool = True,
) -> dict[str, Any]:
    """Snapshot every aggregate of one type in one partition (the body of the Ray task; no Ray in it)."""
    t0 = time.perf_counter()
    layout = StoreLayout.local(root, "snapshot jobs")
    if layout.read_descriptor() is None:
        raise EsActorsError(f"{root} is not an es_actors store as seen from {socket.gethostname()} (no store.json)")
    registry = DomainRegistry(aggregates)
    snapshot_format = SnapshotFormat(registry)
    fingerprint = snapshot_format.fingerprint(aggregate_type)
    if expected_fingerprint is not None and fingerprint != expected_fingerprint:
        raise EsActorsError(
            f"partition {partition}: this worker's code gives {aggregate_type} snapshot fingerprint {fingerprint}, "
            f"the driver's {expected_fingerprint}: the cluster runs other code than the driver"
        )
    codec = snapshot_format.codec(aggregate_type)
    sealed_before = sealed_last_position(layout, partition)  # rows up to here are durable for certain
    table = read_partition(layout, partition)
    rows_read = table.num_rows
    folded = fold_partition_table(registry, table, partition, aggregate_type)
    del table
    # Events read from the tail are confirmed once more: still the same event at that position?
    in_tail = [f.position for f in folded.values() if f.position > sealed_before]
    now_at = event_ids_at(layout, partition, in_tail)
    current: set[tuple[str, str, int, int]] = set()  # (type, id, version, position) of usable snapshots
    if skip_current:
        for row in SnapshotStore(layout.root, partition).all_rows():
            mine = folded.get((row.aggregate_type, row.aggregate_id)) if row.aggregate_type == aggregate_type else None
            # the owner's rule (SnapshotFormat.usable), at the version the fold reached
            if mine is not None and snapshot_format.usable(
                row, mine.position if row.version == mine.version else None, mine.event_id
            ):
                current.add((row.aggregate_type, row.aggregate_id, row.version, row.position))
    rows: list[SnapshotRow] = []
    up_to_date = unconfirmed = 0
    not_encodable: list[str] = []
    for key, f in folded.items():
        if f.position > sealed_before and now_at.get(f.position) != f.event_id:
            unconfirmed += 1  # that write was cut back after we read it: no snapshot of it
            continue
        if (*key, f.version, f.position) in current:
            up_to_date += 1
            continue
        try:
            data = codec.encode(f.state)
        except Exception as exc:  # like the owner: a state that cannot be encoded is not snapshotted
            not_encodable.append(f"{key[0]}/{key[1]}: {type(exc).__name__}: {exc}")
            continue
        extra = {"event_id": f.event_id} if _ROWS_CARRY_EVENT_ID else {}
        rows.append(SnapshotRow(aggregate_type, f.aggregate_id, f.version, f.position, fingerprint, codec.encoding, data, **extra))
    path = write_snapshot_file(snapshot_dir(layout.root, partition), rows)
    return {
        "partition": partition,
        "rows_read": rows_read,
        "events": sum(f.events for f in folded.values()),
        "aggregates": len(folded),
        "snapshotted": len(rows),
        "up_to_date": up_to_date,
        "unconfirmed": unconfirmed,
        "not_encodable": len(not_encodable),
        "not_encodable_examples": not_encodable[:5],
        "seconds": round(time.perf_counter() - t0, 3),
        "file": str(path) if path is not None else None,
        "node": socket.gethostname(),
    }


_snapshot_task = ray.remote(num_cpus=1)(snapshot_partition)


@dataclass
class SnapshotReport:
    store: str
    aggregate_type: str
    fingerprint: str
    partitions: list[dict[str, Any]]
    seconds: float
    totals: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def describe_partition(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"p{r['partition']:04d} FAILED: {r['error']}"
    extra = "".join(
        f", {r[k]} {k.replace('_', ' ')}" for k in ("up_to_date", "unconfirmed", "not_encodable") if r.get(k)
    )
    return (
        f"p{r['partition']:04d} done: {r['events']:,} events, {r['aggregates']:,} aggregates, "
        f"{r['snapshotted']:,} snapshotted{extra} in {r['seconds']:.2f}s"
    )


def build_snapshots(
    store_path: str | os.PathLike[str],
    aggregates: Sequence[type[Aggregate[Any]]],
    aggregate_type: str | type[Aggregate[Any]],
    progress: Progress = True,
    *,
    address: str | None = None,
    skip_current: bool = True,
) -> SnapshotReport:
    """Snapshot every aggregate of ``aggregate_type``; one Ray task (1 CPU) per partition.

    ``progress``: True draws a bar on stderr with a line per finished partition, a function
    gets each partition's report as it finishes, False is quiet. ``skip_current`` leaves
    out aggregates whose current snapshot (same fingerprint) is already at their last version.
    Raises the first failed partition's error (e.g. ``UnreadableEvent``) after every task ended.
    """
    atype = aggregate_type if isinstance(aggregate_type, str) else aggregate_type.aggregate_type
    store = Store.open(store_path, list(aggregates), read_only=True)
    store.layout.require_local("snapshot jobs")  # the tasks read local segment files
    registry = store.registry
    registry.aggregate(atype)  # UnknownAggregateType, naming the registered ones
    fingerprint = SnapshotFormat(registry).fingerprint(atype)
    connect_ray(address)
    t0 = time.perf_counter()
    refs = {
        _snapshot_task.remote(str(store.root), p, list(aggregates), atype, fingerprint, skip_current): p
        for p in range(store.descriptor.partitions)
    }
    done, failed = run_per_partition(refs, progress, describe_partition, f"snapshots {atype}")
    parts = [done[p] for p in sorted(done)]
    totals = {
        k: sum(r[k] for r in parts)
        for k in ("rows_read", "events", "aggregates", "snapshotted", "up_to_date", "unconfirmed", "not_encodable")
    }
    totals["partitions_failed"] = len(failed)
    report = SnapshotReport(str(store.root), atype, fingerprint, parts, round(time.perf_counter() - t0, 3), totals)
    raise_first(failed, report.to_dict())
    return report


if __name__ == "__main__":  # python -m es_actors.jobs.snapshots TYPE STORE [module:Class,...]
    if len(sys.argv) < 3:
        raise SystemExit("usage: python -m es_actors.jobs.snapshots TYPE STORE [module:Class,...]")
    aggs = resolve_aggregates(sys.argv[3] if len(sys.argv) > 3 else "es_actors.examples.bank:BankAccount")
    rep = build_snapshots(sys.argv[2], aggs, sys.argv[1])
    print(f"{rep.totals['snapshotted']} snapshots of {rep.aggregate_type} in {rep.seconds:.1f}s")
