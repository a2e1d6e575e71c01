"""Sealed, immutable Parquet segments of one partition, published through generations.

Layout of a partition under ``<store>/log/p0003/``::

    current -> gen-000002          # symlink, swapped atomically (rename) by compaction
    gen-000002/seg-<first>-<last>.parquet

Sealing adds one segment to the current generation (temp name, fsync, rename, fsync the
directory), so a reader sees it whole or not at all. Compaction never edits a visible
directory: it builds the next generation beside it (hard links for untouched segments,
one merged file for a run of small ones), then swaps ``current``. Old generations stay
readable for ``gc_grace_s`` before they are deleted, so a reader that resolved
``current`` before a swap keeps a consistent, non-overlapping file set.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import StoreCorrupted
from ..records import ARROW_SCHEMA, rows_to_table
from .wal import fsync_dir

_SEG = re.compile(r"^seg-(\d{20})-(\d{20})\.parquet$")
_GEN = re.compile(r"^gen-(\d{6})$")
CURRENT = "current"


@dataclass(frozen=True, slots=True)
class Segment:
    first: int
    last: int
    path: Path

    @property
    def rows(self) -> int:
        return self.last - self.first + 1


def segment_name(first: int, last: int) -> str:
    return f"seg-{first:020d}-{last:020d}.parquet"


def write_parquet_durably(table: pa.Table, path: Path, row_group_size: int = 128 * 1024, **options: Any) -> None:
    """Temp name, fsync, rename, fsync the directory: the file appears whole or not at all."""
    # The temp name must not end in .parquet: DuckDB's glob '*.parquet' matches dot files too.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp, compression="zstd", row_group_size=row_group_size, **options)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def list_segments(gen_dir: Path) -> list[Segment]:
    """The segments of one generation in position order; a gap or overlap is corruption."""
    segs = []
    for p in gen_dir.iterdir():
        m = _SEG.match(p.name)
        if m:
            segs.append(Segment(int(m.group(1)), int(m.group(2)), p))
    segs.sort(key=lambda s: s.first)
    expected = 1
    for s in segs:
        if s.first != expected or s.last < s.first:
            raise StoreCorrupted(f"segments of {gen_dir} are not contiguous at {s.path.name} (expected {expected})")
        expected = s.last + 1
    return segs


def resolve_current(partition_dir: Path) -> Path | None:
    link = partition_dir / CURRENT
    if not link.is_symlink():
        return None
    return partition_dir / os.readlink(link)


class SegmentSet:
    """The writer's view of a partition's sealed segments. Only the partition owner mutates it."""

    def __init__(self, partition_dir: Path, gc_grace_s: float = 300.0) -> None:
        self.dir = partition_dir
        self.gc_grace_s = gc_grace_s
        partition_dir.mkdir(parents=True, exist_ok=True)
        cur = resolve_current(partition_dir)
        if cur is None or not cur.is_dir():
            cur = partition_dir / "gen-000001"
            cur.mkdir(exist_ok=True)
            self._point_current_at(cur)
        self.gen_dir = cur
        for stale in cur.glob(".*.tmp"):
            stale.unlink(missing_ok=True)  # a seal that crashed before its rename
        self.segments = list_segments(cur)

    @property
    def last_position(self) -> int:
        return self.segments[-1].last if self.segments else 0

    def seal(self, rows: list[tuple[Any, ...]]) -> Segment:
        """Write rows (contiguous, starting right after the last sealed position) as a segment."""
        first, last = rows[0][1], rows[-1][1]
        if first != self.last_position + 1 or last - first + 1 != len(rows):
            raise StoreCorrupted(f"seal of {first}..{last} does not continue {self.last_position}")
        seg = Segment(first, last, self.gen_dir / segment_name(first, last))
        write_parquet_durably(rows_to_table(rows), seg.path)
        self.segments.append(seg)
        return seg

    def compact(self, small_rows: int, min_run: int) -> int:
        """Merge each run of >= min_run adjacent small segments into one; returns files merged."""
        runs: list[list[Segment]] = []
        cur: list[Segment] = []
        for s in self.segments:
            if s.rows < small_rows:
                cur.append(s)
            else:
                if len(cur) >= min_run:
                    runs.append(cur)
                cur = []
        if len(cur) >= min_run:
            runs.append(cur)
        if not runs:
            return 0
        merged_away = {s.path.name for run in runs for s in run}
        new_gen = self.dir / f"gen-{self._gen_number(self.gen_dir) + 1:06d}"
        if new_gen.exists():
            shutil.rmtree(new_gen)  # left over from a compaction that crashed before its swap
        new_gen.mkdir()
        new_segments: list[Segment] = []
        for s in self.segments:
            if s.path.name not in merged_away:
                os.link(s.path, new_gen / s.path.name)
                new_segments.append(Segment(s.first, s.last, new_gen / s.path.name))
        for run in runs:
            table = pa.concat_tables([pq.read_table(s.path, schema=ARROW_SCHEMA) for s in run])
            seg = Segment(run[0].first, run[-1].last, new_gen / segment_name(run[0].first, run[-1].last))
            write_parquet_durably(table, seg.path)
            new_segments.append(seg)
        new_segments.sort(key=lambda s: s.first)
        fsync_dir(new_gen)
        old_gen = self.gen_dir
        self._point_current_at(new_gen)
        os.utime(old_gen)  # its grace period counts from when it stopped being current
        self.gen_dir, self.segments = new_gen, new_segments
        return len(merged_away)

    def collect_garbage(self, now: Callable[[], float] = time.time) -> int:
        """Delete generations older than the current one once their grace period is over."""
        removed = 0
        for p in self.dir.iterdir():
            if _GEN.match(p.name) and p != self.gen_dir and now() - p.stat().st_mtime > self.gc_grace_s:
                shutil.rmtree(p, ignore_errors=True)
                removed += 1
        return removed

    def _point_current_at(self, gen_dir: Path) -> None:
        tmp = self.dir / f".{CURRENT}.tmp"
        tmp.unlink(missing_ok=True)
        os.symlink(gen_dir.name, tmp)
        os.replace(tmp, self.dir / CURRENT)
        fsync_dir(self.dir)

    @staticmethod
    def _gen_number(gen_dir: Path) -> int:
        m = _GEN.match(gen_dir.name)
        return int(m.group(1)) if m else 0
