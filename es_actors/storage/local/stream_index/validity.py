"""Whether a stream-index run may be used for this store, partition and generation (ADR-015).

Kept apart from :mod:`.reading` because both sides ask it: a reader skips a run that fails it
(:meth:`~.reading.StreamIndex.view`), the owner deletes and rebuilds such a run
(:mod:`.writing`). The checks here depend on the store's current state, not on the run file
alone (that a run opens, has this format and passes its key CRC is checked by :func:`.runs.open_run`):
the store and partition it was written for, each source segment still in the current generation
with the size and mtime it was indexed at (:func:`segment_stamp`), and which valid runs tile
positions 1..n (:func:`tile`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from es_actors.storage.local.segments import Segment
from es_actors.storage.local.stream_index.runs import OpenRun
from es_actors.storage.lost_ranges import LostRanges

STAMP_TTL_S = 1.0  # how long this process trusts a segment's stamp before it looks again
_stamps: dict[str, tuple[float, tuple[int, int]]] = {}


def segment_stamp(path: Path) -> tuple[int, int]:
    """(size, mtime_ns) of a segment: a run is bound to the segment as it indexed it. Segments are
    immutable (compaction hard-links them: same inode, same stamp), so a different stamp means the
    file was changed in place (damage) or replaced, and the run is not used for it: the reader then
    reads the segment itself, whose CRC check refuses damage. A process looks again after
    :data:`STAMP_TTL_S` (a stat per segment per read would make reads grow with the log); a new
    process always looks."""
    key = str(path)
    now = time.monotonic()
    hit = _stamps.get(key)
    if hit is not None and now - hit[0] < STAMP_TTL_S:
        return hit[1]
    st = os.stat(key)
    stamp = (st.st_size, st.st_mtime_ns)
    if len(_stamps) > 200_000:
        _stamps.clear()
    _stamps[key] = (now, stamp)
    return stamp


def why_invalid(run: OpenRun, store_id: str, partition: int, current: dict[str, Segment]) -> str | None:
    """Why a run opened fine but does not belong to this store, partition and generation (None: valid)."""
    m = run.meta
    if m.store_id != store_id:
        return f"{run.path.name}: written for store {m.store_id}, this is {store_id} (foreign)"
    if m.partition != partition:
        return f"{run.path.name}: written for partition {m.partition}, this is {partition} (foreign)"
    expected = m.first
    for name, size, mtime_ns in m.sources:
        seg = current.get(name)
        if seg is None:
            return f"{run.path.name}: source segment {name} is not in the current generation (stale)"
        try:
            actual = segment_stamp(seg.path)
        except FileNotFoundError:
            return f"{run.path.name}: source segment {name} vanished (stale)"
        if actual != (size, mtime_ns):
            return (f"{run.path.name}: source segment {name} is {actual[0]} bytes modified at {actual[1]} ns, the run "
                    f"indexed {size} bytes modified at {mtime_ns} ns (changed since: stale)")
        if seg.first != expected:
            return f"{run.path.name}: source segments do not tile {m.first}..{m.last}"
        expected = seg.last + 1
    if expected != m.last + 1:
        return f"{run.path.name}: source segments do not tile {m.first}..{m.last}"
    return None


def tile(valid: list[OpenRun], lost: LostRanges, partition: int) -> list[OpenRun]:
    """Runs tiling positions 1..n in order: the widest at each start, gaps only across lost ranges."""
    chosen: list[OpenRun] = []
    expected = 1
    for run in sorted(valid, key=lambda r: (r.meta.first, -r.meta.last)):
        first = run.meta.first
        if first < expected:
            continue  # overlaps a wider run already chosen (e.g. a merge's sources, not yet deleted)
        if first != expected and not lost.covers(partition, expected, first - 1):
            break
        chosen.append(run)
        expected = run.meta.last + 1
    return chosen


__all__ = ["STAMP_TTL_S", "segment_stamp", "tile", "why_invalid"]
