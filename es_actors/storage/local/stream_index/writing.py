"""The owner side of the stream index: a run per sealed segment, reconcile, tiered merges.

Only the partition's owner writes (its sealer thread, under the upkeep lock, never on the
command path); :func:`build_index` indexes a store written directly as segments, in one call,
when no writer runs. The index is derived data: any run can be deleted and rebuilt from the
segments, which stay the truth.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from es_actors.codecs.rows import ARROW_SCHEMA
from es_actors.config import StoreConfig
from es_actors.errors import EsActorsError
from es_actors.storage.layout import StoreLayout
from es_actors.storage.lost_ranges import LostRanges
from es_actors.storage.local.segments import Segment, list_segments, resolve_current, verify_segment
from es_actors.storage.local.stream_index.reading import index_dir, load_runs
from es_actors.storage.local.stream_index.runs import OpenRun, RunInvalid, check_file_crc, sorted_run_table, write_run
from es_actors.storage.local.stream_index.validity import segment_stamp, why_invalid

log = logging.getLogger(__name__)

MERGE_FACTOR = 4  # F adjacent runs of one tier become one run of the next (benchmarks/stream_index.py; ADR-015)
MAX_RUN_BYTES = 1 << 30  # no merge past this: string columns stay below 2 GiB (int32 offsets); a merge holds ~2x in memory


class StreamIndexWriter:
    """Keeps one partition's runs: ``add`` after a seal, ``reconcile`` after a compaction or at
    start, ``merge`` to keep the number of runs a lookup visits logarithmic."""

    def __init__(self, layout: StoreLayout, partition: int, store_id: str, config: StoreConfig | None = None,
                 merge_factor: int = MERGE_FACTOR, max_run_bytes: int = MAX_RUN_BYTES) -> None:
        self.layout = layout
        self.partition = partition
        self.store_id = store_id
        self.config = config
        self.dir = index_dir(layout, partition)
        self.merge_factor = merge_factor
        self.max_run_bytes = max_run_bytes
        self._segments: list[Segment] = []
        self._lost = LostRanges()

    def _fields(self, sources: list[tuple[str, int, int]], tier: int) -> dict[str, object]:
        return {"store_id": self.store_id, "partition": self.partition, "sources": tuple(sources), "tier": tier}

    def add(self, segment: Segment, table: pa.Table) -> Path:
        """Index a segment just sealed, from the rows the sealer holds (no re-read)."""
        self._segments = [s for s in self._segments if s.last < segment.first] + [segment]
        return write_run(self.dir, sorted_run_table(table), self._fields([(segment.path.name, *segment_stamp(segment.path))], 0))

    def _valid_runs(self) -> list[OpenRun]:
        """Runs valid for the segments last reconciled, each whole-file CRC checked once; the
        invalid ones and those a wider valid run covers are deleted."""
        current = {s.path.name: s for s in self._segments}
        valid: list[OpenRun] = []
        for name, entry in load_runs(self.dir).items():
            why = entry if isinstance(entry, str) else why_invalid(entry, self.store_id, self.partition, current)
            if why is None and not isinstance(entry, str):
                try:
                    check_file_crc(entry)
                    valid.append(entry)
                    continue
                except RunInvalid as exc:
                    why = str(exc)
            log.warning("partition %d: deleting index run %s: %s", self.partition, name, why)
            (self.dir / name).unlink(missing_ok=True)
        kept: list[OpenRun] = []
        end = 0
        for run in sorted(valid, key=lambda r: (r.meta.first, -r.meta.last)):
            if run.meta.first <= end:  # inside a wider run (a merge that stopped before deleting it)
                (self.dir / run.path.name).unlink(missing_ok=True)
                continue
            kept.append(run)
            end = run.meta.last
        return kept

    def reconcile(self, segments: list[Segment], lost: LostRanges,
                  should_stop: Callable[[], bool] = lambda: False) -> bool:
        """Delete invalid runs; give every current segment no valid run covers a run of its own.
        Returns False if ``should_stop`` cut it short (call again later)."""
        self._segments, self._lost = list(segments), lost
        if self.dir.is_dir():
            for tmp in self.dir.glob(".run-*.tmp"):
                tmp.unlink(missing_ok=True)  # a write that crashed before its rename
        covered = {source[0] for run in self._valid_runs() for source in run.meta.sources}
        built = 0
        for seg in segments:
            if seg.path.name in covered:
                continue
            if built and should_stop():
                return False  # at least one run per call: upkeep progresses under any load
            built += 1
            verify_segment(seg)  # never index damage
            table = pq.read_table(seg.path, schema=ARROW_SCHEMA)
            write_run(self.dir, sorted_run_table(table), self._fields([(seg.path.name, *segment_stamp(seg.path))], 0))
        return True

    def merge(self, should_stop: Callable[[], bool] = lambda: False) -> int:
        """Merge F adjacent valid runs of one tier into one (never across a lost range, never past
        the size cap); the merged-away runs are deleted at once. Returns merges done."""
        merges = 0
        while not should_stop():
            group = self._mergeable(self._valid_runs())
            if group is None:
                return merges
            table = pa.concat_tables([pa.Table.from_batches([r.batch]) for r in group])
            sources = [s for r in group for s in r.meta.sources]
            write_run(self.dir, sorted_run_table(table), self._fields(sources, group[0].meta.tier + 1))
            for r in group:
                (self.dir / r.path.name).unlink(missing_ok=True)
            merges += 1
        return merges

    def _mergeable(self, runs: list[OpenRun]) -> list[OpenRun] | None:
        f = self.merge_factor
        for i in range(len(runs) - f + 1):
            group = runs[i:i + f]
            if (all(r.meta.tier == group[0].meta.tier for r in group)
                    and all(b.meta.first == a.meta.last + 1 for a, b in zip(group, group[1:]))
                    and sum(r.size for r in group) <= self.max_run_bytes):
                return group
        return None


def build_index(layout: StoreLayout, partition: int, merge_factor: int = MERGE_FACTOR) -> int:
    """Index one partition of a store written directly as segments (tools, bench data sets), in
    one call, with no writer running. Returns the number of runs afterwards."""
    desc = layout.read_descriptor()
    if desc is None:
        raise EsActorsError(f"{layout.root}: no store.json; not a store")
    gen = resolve_current(layout.log_dir(partition))
    lost = LostRanges.load(layout.root)
    segments = list_segments(gen, lost, partition) if gen is not None else []
    writer = StreamIndexWriter(layout, partition, desc.store_id, merge_factor=merge_factor)
    writer.reconcile(segments, lost)
    writer.merge()
    return len(writer._valid_runs())
