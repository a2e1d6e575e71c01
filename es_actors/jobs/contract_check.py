"""Check the code's event contracts against the WHOLE history: one Ray task per partition.

    python -m es_actors.jobs.contract_check ./demo-store [module:Class,...]
    es-actors check-contracts --store ./demo-store --aggregates es_actors.examples.bank:BankAccount

Read-only (safe against a live store, e.g. before a deploy): nothing is written. Works on
local disk and on object storage (``s3://``, ``blobdir://``): each task opens the store by its
URI and reads its partition through the storage interface (``PartitionReader.read_all``); on
object storage the tasks are spread over the cluster's nodes. Every
stored event goes through this code's upcaster chain and payload validation
(``registry.decode``); the events it reads as must be declared by their aggregate; and
each aggregate is folded through ``evolve`` from ``initial_state``, so a bug in ``evolve``
on upcast (or any) events shows too. Every failure is reported with partition, position,
aggregate, version, stored event type and schema version, the stage that failed and the
error text; the job never stops at the first one. After a failure in an aggregate its
later events are still decoded and checked, but no longer folded (its state is unknown).

Also counted, per stored (event_type, schema_version): events read, upcast, failed; and
events whose aggregate type no class registers (not checked; a failure with ``strict``).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import pyarrow as pa
import ray

from es_actors.domain import Aggregate, DomainRegistry, fold
from es_actors.domain.upcasting import UnreadableEvent
from es_actors.errors import EsActorsError
from es_actors.jobs._tasks import (
    Progress, connect_ray, open_partition_store, raise_first, resolve_aggregates, run_per_partition, task_placement,
)
from es_actors.jobs.replay import event_where, in_position_order, iter_event_rows
from es_actors.store import Store

STAGES = ("sequence", "decode", "undeclared", "evolve")


def check_partition_table(
    registry: DomainRegistry, table: pa.Table, partition: int, max_failures: int | None = 10_000
) -> dict[str, Any]:
    """Check one partition's rows (no Ray, no files). Returns counts and failures (at most
    ``max_failures`` listed; ``failure_count`` counts them all)."""
    counts: dict[tuple[str, int], list[int]] = {}  # (event_type, schema_version) -> [read, upcast, failed]
    failures: list[dict[str, Any]] = []
    failure_count = 0
    unregistered: dict[str, dict[str, Any]] = {}
    unregistered_ids: dict[str, set[str]] = {}
    folds: dict[tuple[str, str], list[Any]] = {}  # key -> [state, last version, broken]
    by_stage = dict.fromkeys(STAGES, 0)
    rows = 0

    for pos, atype, aid, version, etype, sv, payload, _event_id in iter_event_rows(in_position_order(table)):
        rows += 1
        c = counts.get((etype, sv))
        if c is None:
            c = counts[(etype, sv)] = [0, 0, 0]
        c[0] += 1
        agg = registry.aggregates.get(atype)
        if agg is None:
            u = unregistered.get(atype)
            if u is None:
                u = unregistered[atype] = {"events": 0, "aggregates": 0, "first_position": pos}
                unregistered_ids[atype] = set()
            u["events"] += 1
            u["last_position"] = pos
            unregistered_ids[atype].add(aid)
            continue
        key = (atype, aid)
        slot = folds.get(key)
        if slot is None:
            slot = folds[key] = [agg.initial_state(), 0, False]
        row_failed = False

        def fail(stage: str, error: str) -> None:
            nonlocal failure_count, row_failed
            failure_count += 1
            by_stage[stage] += 1
            row_failed = True
            slot[2] = True  # the aggregate's state is unknown from here: no more evolve
            if max_failures is None or len(failures) < max_failures:
                failures.append({
                    "partition": partition, "position": pos, "aggregate_type": atype, "aggregate_id": aid,
                    "version": version, "event_type": etype, "schema_version": sv, "stage": stage, "error": error,
                })

        where = event_where(partition, pos, atype, aid, version)
        if version != slot[1] + 1:
            fail("sequence", f"{where}: version {version} follows {slot[1]}")
        slot[1] = version
        try:
            events = registry.decode(etype, sv, payload, where)
        except UnreadableEvent as exc:
            fail("decode", str(exc))
            events = []
        except Exception as exc:  # not expected (decode wraps errors), but never stop the check
            fail("decode", f"{type(exc).__name__}: {exc}")
            events = []
        else:
            if not registry.decoder.is_current(etype, sv):
                c[1] += 1
        declared = []
        for event in events:
            try:
                registry.check_event(atype, event)
            except EsActorsError as exc:
                fail("undeclared", f"{where}: stored {etype} v{sv} reads as {event.event_type}: {exc}")
                break
            declared.append(event)
        if declared and not slot[2]:
            try:
                slot[0] = fold(agg, declared, slot[0])
            except Exception as exc:
                names = "/".join(e.event_type for e in declared)
                fail("evolve", f"{where}: evolve of {atype} on {names}: {type(exc).__name__}: {exc}")
        if row_failed:
            c[2] += 1

    for atype, ids in unregistered_ids.items():
        unregistered[atype]["aggregates"] = len(ids)
    return {
        "partition": partition,
        "events": rows,
        "aggregates": len(folds),
        "aggregates_failed": sum(1 for s in folds.values() if s[2]),
        "upcast": sum(c[1] for c in counts.values()),
        "counts": [
            {"event_type": t, "schema_version": v, "read": c[0], "upcast": c[1], "failed": c[2]}
            for (t, v), c in sorted(counts.items())
        ],
        "failure_count": failure_count,
        "failures_by_stage": {k: n for k, n in by_stage.items() if n},
        "failures": failures,
        "unregistered": unregistered,
    }


def check_partition(
    uri: str, partition: int, aggregates: Sequence[type[Aggregate[Any]]], max_failures: int | None = 10_000
) -> dict[str, Any]:
    """The body of the Ray task: read one partition of the store at ``uri`` read-only, check it."""
    t0 = time.perf_counter()
    table = open_partition_store(uri, "contract check").reader(partition).read_all()
    report = check_partition_table(DomainRegistry(aggregates), table, partition, max_failures)
    report["seconds"] = round(time.perf_counter() - t0, 3)
    return report


_check_task = ray.remote(num_cpus=1)(check_partition)


@dataclass
class ContractReport:
    store: str
    aggregates: list[str]
    partitions: int
    events: int
    aggregates_checked: int
    upcast: int
    counts: list[dict[str, Any]]  # per stored (event_type, schema_version): read, upcast, failed
    failure_count: int
    failures_by_stage: dict[str, int]
    failures: list[dict[str, Any]]  # each failure (up to max_failures per partition), in log order
    unregistered: dict[str, dict[str, Any]]  # aggregate type -> events, aggregates, first/last (partition, position)
    strict: bool
    seconds: float
    per_partition: list[dict[str, Any]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return self.failure_count == 0 and not (self.strict and self.unregistered)

    @property
    def failures_listed(self) -> int:
        return len(self.failures)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "clean": self.clean, "failures_listed": self.failures_listed}


def describe_partition(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"p{r['partition']:04d} could not be checked: {r['error']}"
    unreg = sum(u["events"] for u in r["unregistered"].values())
    return (
        f"p{r['partition']:04d} checked: {r['events']:,} events, {r['aggregates']:,} aggregates, "
        f"{r['upcast']:,} upcast, {r['failure_count']:,} failures"
        + (f", {unreg:,} events of unregistered types" if unreg else "")
        + f" in {r['seconds']:.2f}s"
    )


def check_contracts(
    store_path: str | os.PathLike[str],
    aggregates: Sequence[type[Aggregate[Any]]],
    progress: Progress = True,
    *,
    address: str | None = None,
    max_failures: int | None = 10_000,
    strict: bool = False,
) -> ContractReport:
    """Run every upcaster, validator and ``evolve`` over the whole history, read-only.

    One Ray task (1 CPU) per partition. ``report.clean`` is False if anything failed (or,
    with ``strict``, if events of an unregistered aggregate type exist). A partition that
    cannot be read at all raises its error after every task ended.
    """
    store = Store.open(store_path, list(aggregates), read_only=True)  # conflicting classes fail here
    connect_ray(address)
    t0 = time.perf_counter()
    task = _check_task.options(**task_placement(store.layout))
    refs = {
        task.remote(store.layout.uri, p, list(aggregates), max_failures): p
        for p in range(store.descriptor.partitions)
    }
    done, failed = run_per_partition(refs, progress, describe_partition, "check-contracts")
    parts = [done[p] for p in sorted(done)]
    counts: dict[tuple[str, int], dict[str, Any]] = {}
    stages: dict[str, int] = {}
    unregistered: dict[str, dict[str, Any]] = {}
    for r in parts:
        for c in r["counts"]:
            acc = counts.setdefault((c["event_type"], c["schema_version"]), {**c, "read": 0, "upcast": 0, "failed": 0})
            for k in ("read", "upcast", "failed"):
                acc[k] += c[k]
        for k, n in r["failures_by_stage"].items():
            stages[k] = stages.get(k, 0) + n
        for atype, u in r["unregistered"].items():
            acc = unregistered.setdefault(atype, {"events": 0, "aggregates": 0, "partitions": []})
            acc["events"] += u["events"]
            acc["aggregates"] += u["aggregates"]  # an aggregate lives in one partition: sums are exact
            acc["partitions"].append(
                {"partition": r["partition"], "first_position": u["first_position"], "last_position": u["last_position"]}
            )
    report = ContractReport(
        store=store.layout.uri,
        aggregates=[a.aggregate_type for a in aggregates],
        partitions=store.descriptor.partitions,
        events=sum(r["events"] for r in parts),
        aggregates_checked=sum(r["aggregates"] for r in parts),
        upcast=sum(r["upcast"] for r in parts),
        counts=[counts[k] for k in sorted(counts)],
        failure_count=sum(r["failure_count"] for r in parts),
        failures_by_stage=stages,
        failures=[f for r in parts for f in r["failures"]],
        unregistered=unregistered,
        strict=strict,
        seconds=round(time.perf_counter() - t0, 3),
        per_partition=[
            {k: r[k] for k in ("partition", "events", "aggregates", "aggregates_failed", "upcast", "failure_count", "seconds")}
            for r in parts
        ],
    )
    raise_first(failed, report.to_dict())
    return report


if __name__ == "__main__":  # python -m es_actors.jobs.contract_check STORE [module:Class,...]
    if len(sys.argv) < 2:
        raise SystemExit("usage: python -m es_actors.jobs.contract_check STORE [module:Class,...]")
    rep = check_contracts(sys.argv[1], resolve_aggregates(sys.argv[2] if len(sys.argv) > 2 else "es_actors.examples.bank:BankAccount"))
    print(f"{rep.events} events, {rep.failure_count} failures")
    for f in rep.failures:
        print(f"  p{f['partition']} pos {f['position']} {f['aggregate_type']}/{f['aggregate_id']} v{f['version']} "
              f"{f['event_type']} v{f['schema_version']} [{f['stage']}]: {f['error']}")
    raise SystemExit(0 if rep.clean else 1)
