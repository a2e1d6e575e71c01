"""Build snapshots for every aggregate of one type: one Ray task per partition.

    python -m es_actors.jobs.snapshots BankAccount ./demo-store [module:Class,...]
    es-actors snapshot BankAccount --store ./demo-store --aggregates es_actors.examples.bank:BankAccount

Safe on a live store, on local disk and on object storage (``s3://``, ``blobdir://``): each
task opens the store by its URI through the storage interface (``open_backend``), reads its
partition read-only (``PartitionReader.read_all``: sealed segments + durable tail, consistent
while the owner writes), replays every aggregate of the type from ``initial_state`` through
``registry.decode`` (upcasters, validation) and ``evolve``, and writes ONE immutable snapshot
group through the partition's ``SnapshotStore`` (a file in ``snapshots/pNNNN/`` written whole
then renamed into place; an object under ``pNNNN/snaps/`` put if absent). The partition actor
sees it on its next lookup and uses a row only if its fingerprint matches the code it runs and
its log still holds the snapshot's event at the snapshot's position; events after it are
replayed as usual. On object storage the tasks are spread over the cluster's nodes.

A partition with an event that cannot be read (``UnreadableEvent``), a version gap or a
failing ``evolve`` writes no file, and the job raises that error (its message names the
event); the other partitions' files are complete and valid, so they are kept.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import ray

from es_actors.codecs.snapshot_rows import SnapshotRow
from es_actors.codecs.state import SnapshotFormat
from es_actors.domain import Aggregate, DomainRegistry
from es_actors.errors import EsActorsError
from es_actors.jobs._tasks import (
    Progress, connect_ray, open_partition_store, raise_first, resolve_aggregates, run_per_partition, task_placement,
)
from es_actors.jobs.replay import fold_partition_table
from es_actors.store import Store

# Snapshot rows name their event by id as well as position when the storage layer has the column.
_ROWS_CARRY_EVENT_ID = "event_id" in {f.name for f in dataclasses.fields(SnapshotRow)}


def snapshot_partition(
    uri: str,
    partition: int,
    aggregates: Sequence[type[Aggregate[Any]]],
    aggregate_type: str,
    expected_fingerprint: str | None = None,
    skip_current: bool = True,
) -> dict[str, Any]:
    """Snapshot every aggregate of one type in one partition of the store at ``uri`` (the body of the
    Ray task; no Ray in it)."""
    t0 = time.perf_counter()
    backend = open_partition_store(uri, "snapshot job")
    reader, snapshots = backend.reader(partition), backend.snapshots(partition)
    registry = DomainRegistry(aggregates)
    snapshot_format = SnapshotFormat(registry)
    fingerprint = snapshot_format.fingerprint(aggregate_type)
    if expected_fingerprint is not None and fingerprint != expected_fingerprint:
        raise EsActorsError(
            f"partition {partition}: this worker's code gives {aggregate_type} snapshot fingerprint {fingerprint}, "
            f"the driver's {expected_fingerprint}: the cluster runs other code than the driver"
        )
    codec = snapshot_format.codec(aggregate_type)
    sealed_before = reader.sealed_through()  # rows up to here are durable for certain
    table = reader.read_all()
    rows_read = table.num_rows
    folded = fold_partition_table(registry, table, partition, aggregate_type)
    del table
    # Events read from the tail are confirmed once more: still the same event at that position?
    in_tail = [f.position for f in folded.values() if f.position > sealed_before]
    now_at = reader.event_ids_at(in_tail)
    current: set[tuple[str, str, int, int]] = set()  # (type, id, version, position) of usable snapshots
    if skip_current:
        for row in snapshots.all_rows():
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
    written = snapshots.write(rows)  # a local file's path, or an object's key
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
        "file": str(written) if written is not None else None,
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
    registry = store.registry
    registry.aggregate(atype)  # UnknownAggregateType, naming the registered ones
    fingerprint = SnapshotFormat(registry).fingerprint(atype)
    connect_ray(address)
    t0 = time.perf_counter()
    task = _snapshot_task.options(**task_placement(store.layout))
    refs = {
        task.remote(store.layout.uri, p, list(aggregates), atype, fingerprint, skip_current): p
        for p in range(store.descriptor.partitions)
    }
    done, failed = run_per_partition(refs, progress, describe_partition, f"snapshots {atype}")
    parts = [done[p] for p in sorted(done)]
    totals = {
        k: sum(r[k] for r in parts)
        for k in ("rows_read", "events", "aggregates", "snapshotted", "up_to_date", "unconfirmed", "not_encodable")
    }
    totals["partitions_failed"] = len(failed)
    report = SnapshotReport(store.layout.uri, atype, fingerprint, parts, round(time.perf_counter() - t0, 3), totals)
    raise_first(failed, report.to_dict())
    return report


if __name__ == "__main__":  # python -m es_actors.jobs.snapshots TYPE STORE [module:Class,...]
    if len(sys.argv) < 3:
        raise SystemExit("usage: python -m es_actors.jobs.snapshots TYPE STORE [module:Class,...]")
    aggs = resolve_aggregates(sys.argv[3] if len(sys.argv) > 3 else "es_actors.examples.bank:BankAccount")
    rep = build_snapshots(sys.argv[2], aggs, sys.argv[1])
    print(f"{rep.totals['snapshotted']} snapshots of {rep.aggregate_type} in {rep.seconds:.1f}s")
