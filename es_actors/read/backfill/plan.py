"""A backfill's plan: the log positions it covers (each partition's durable head when it was
planned) and the shares of them its workers take. Written once to ``plan.json``, so a resumed
backfill redoes none of the planning and no share moves."""

from __future__ import annotations

import bisect
import hashlib
import inspect
import json
import math
from datetime import datetime, timezone
from typing import Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field

from es_actors.read.projection import Projection, SqlProjection
from es_actors.storage.layout import StoreLayout
from es_actors.storage.local.log_place import log_place
from es_actors.storage.backends import durable_heads
from es_actors.storage.lost_ranges import LostRanges

PLAN_FORMAT = 1
#: The smallest share of a partition worth its own task. A task's fixed cost is ~0.07 s of CPU in
#: a Ray worker (its private database, two checkpoints, metrics) plus its dispatch; 2M events are
#: ~0.4 s of a SQL projection at one thread, so that cost stays under ~20 % (ADR-016, measured).
MIN_TASK_EVENTS = 2_000_000


class TaskSpec(BaseModel):
    """One worker's share: per partition, the positions after..until (inclusive of until)."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")  # names its checkpoints' keys and directories: no "/" or ".."
    bounds: dict[int, tuple[int, int]]

    @property
    def events(self) -> int:
        return sum(until - after for after, until in self.bounds.values())


class BackfillPlan(BaseModel):
    """What one backfill of one projection version covers and how it is shared out."""

    format: int = PLAN_FORMAT
    projection: str
    version: int
    fingerprint: str
    split: Literal["partition", "range", "none"]
    targets: dict[int, int]
    start: dict[int, int] = {}  # positions already applied (a catch-up); empty: from the first event
    tasks: list[TaskSpec]
    created_at: str

    @property
    def events(self) -> int:
        return sum(t.events for t in self.tasks)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


def fingerprint(p: type[Projection]) -> str:
    """What makes two declarations build the same tables: a resumed backfill must run the same one."""
    merge = p.merge
    parts = {
        "name": p.name, "version": p.version, "kind": p.kind, "event_types": list(p.event_type_names()),
        "setup": p.setup_statements(), "on_error": p.on_error,
        "apply": p.apply_statements() if issubclass(p, SqlProjection) else _code_of(p),
        "merge": None if merge is None else {"split": merge.split, "tables": dict(merge.tables)},
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _code_of(p: type[Projection]) -> str:
    """A Python projection's ``handle``: its source, else its bytecode (a changed handler is another declaration)."""
    handle = getattr(p, "handle", None)
    func = getattr(handle, "__func__", handle)
    try:
        return inspect.getsource(func)  # type: ignore[arg-type]
    except (OSError, TypeError):
        code = getattr(func, "__code__", None)
        return hashlib.sha256(code.co_code + repr(code.co_consts).encode()).hexdigest() if code is not None else repr(func)


def split_ranges(segments: list[tuple[int, int]], target: int, chunk_events: int, after: int = 0) -> list[tuple[int, int]]:
    """A partition's positions after+1..target as (after, until) shares of about ``chunk_events``,
    cut at segment boundaries (each file is read by one task); positions after the last
    segment (the tail) join the last share. The share count is the nearest whole number of
    chunks and each cut is the segment end nearest an even split, so shares come out even
    (a greedy cut left a short last share: a worker idle at the end of the run)."""
    if target <= after:
        return []
    total = target - after
    n = max(1, round(total / max(1, chunk_events)))
    ends = sorted({last for _first, last in segments if after < last < target})
    out: list[tuple[int, int]] = []
    start = after  # the share runs start+1..
    for k in range(1, n):
        goal = after + total * k / n
        i = bisect.bisect_left(ends, goal)
        near = [e for e in ends[max(0, i - 1):i + 1] if e > start]
        if not near:
            continue
        cut = min(near, key=lambda e: abs(e - goal))
        out.append((start, cut))
        start = cut
    out.append((start, target))
    return out


def segments_of(layout: StoreLayout, partition: int, lost: LostRanges) -> list[tuple[int, int]]:
    """A partition's sealed segments as (first, last) positions: local files, or the object
    backend's current manifest (the ranges are cut at them: each segment is read by one task)."""
    if not layout.scheme:
        return [(s.first, s.last) for s in log_place(layout, partition, lost).segments]
    from es_actors.storage.backends import blob_store_of
    from es_actors.storage.objects.view import current_manifest

    return [(s.first, s.last) for s in current_manifest(blob_store_of(layout), partition)[0].segments]


def make_plan(
    layout: StoreLayout, partitions: int, p: type[Projection], parallelism: int, task_events: int | None = None,
    start: Mapping[int, int] | None = None, targets: Mapping[int, int] | None = None,
) -> BackfillPlan:
    """Fix the targets (each partition's durable head now, unless given) and share out the
    positions after ``start`` (default: from the first event) up to them."""
    lost = LostRanges() if layout.scheme else LostRanges.load(layout.root)
    targets = dict(targets) if targets is not None else durable_heads(layout, partitions)
    begin = {i: (start or {}).get(i, 0) for i in targets}
    split = "none" if p.merge is None else p.merge.split
    tasks: list[TaskSpec] = []
    if split == "none":
        tasks.append(TaskSpec(id="all", bounds={i: (begin[i], t) for i, t in targets.items() if t > begin[i]}))
    elif split == "partition":
        tasks.extend(TaskSpec(id=f"p{i:04d}", bounds={i: (begin[i], t)}) for i, t in targets.items() if t > begin[i])
    else:
        total = sum(max(0, t - begin[i]) for i, t in targets.items())
        chunk = task_events or max(MIN_TASK_EVENTS, math.ceil(total / max(1, parallelism * 4)))
        for i, t in targets.items():
            segs = segments_of(layout, i, lost)
            for k, (after, until) in enumerate(split_ranges(segs, t, chunk, begin[i])):
                tasks.append(TaskSpec(id=f"p{i:04d}-r{k:03d}", bounds={i: (after, until)}))
    return BackfillPlan(
        projection=p.name, version=p.version, fingerprint=fingerprint(p), split=split, targets=targets, start=begin,
        tasks=tasks, created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
