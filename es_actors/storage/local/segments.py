"""Sealed, immutable Parquet segments of one partition, published through generations.

Layout of a partition under ``<store>/log/p0003/``::

    current -> gen-000002          # symlink, swapped atomically (rename) by compaction
    gen-000002/seg-<first>-<last>-<crc32>.parquet

The name carries the file's CRC-32 (format 2; format-1 names have none), so damage anywhere
in a file, footer included, is found by :func:`verify_segment` before its rows are used;
pages carry Parquet page checksums as well.

Sealing adds one segment to the current generation (temp name, fsync, rename, fsync the
directory), so a reader sees it whole or not at all. Compaction never edits a visible
directory: it builds the next generation beside it (hard links for untouched segments,
one merged file for a run of small ones), then swaps ``current``. Old generations stay
readable for ``gc_grace_s`` before they are deleted, so a reader that resolved
``current`` before a swap keeps a consistent, non-overlapping file set.
"""

from __future__ import annotations

import errno
import os
import re
import zlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq

from es_actors.errors import StoreCorrupted
from es_actors.codecs.rows import ARROW_SCHEMA, rows_to_table
from es_actors.storage.files import fsync_dir, fsync_file
from es_actors.storage.local.stat_cache import UnchangedCache

_SEG = re.compile(r"^seg-(\d{20})-(\d{20})(?:-([0-9a-f]{8}))?\.parquet$")
_GEN = re.compile(r"^gen-(\d{6})$")
CURRENT = "current"


@dataclass(frozen=True, slots=True)
class Segment:
    first: int
    last: int
    path: Path
    crc: int | None = None  # None: a format-1 name

    @property
    def rows(self) -> int:
        return self.last - self.first + 1


def segment_name(first: int, last: int, crc: int | None = None) -> str:
    tail = "" if crc is None else f"-{crc:08x}"
    return f"seg-{first:020d}-{last:020d}{tail}.parquet"


def file_crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
    return crc


def write_parquet_durably(table: pa.Table, path: Path, row_group_size: int = 128 * 1024, **options: Any) -> None:
    """Temp name, fsync, rename, fsync the directory: the file appears whole or not at all."""
    # The temp name must not end in .parquet: DuckDB's glob '*.parquet' matches dot files too.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp, compression="zstd", row_group_size=row_group_size, **options)
    fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_segment(table: pa.Table, gen_dir: Path, first: int, last: int) -> Segment:
    """A segment file whose name carries its CRC-32, written durably (temp, fsync, rename)."""
    tmp = gen_dir / f".seg-{first:020d}-{last:020d}.{os.getpid()}.tmp"
    pq.write_table(table, tmp, compression="zstd", row_group_size=128 * 1024, write_page_checksum=True)
    fsync_file(tmp)
    crc = file_crc32(tmp)
    seg = Segment(first, last, gen_dir / segment_name(first, last, crc), crc)
    os.replace(tmp, seg.path)
    fsync_dir(gen_dir)
    _verified.add(_identity(seg.path))
    return seg


def parse_segment_name(path: Path) -> Segment | None:
    m = _SEG.match(path.name)
    if not m:
        return None
    return Segment(int(m.group(1)), int(m.group(2)), path, int(m.group(3), 16) if m.group(3) else None)


def list_segments(gen_dir: Path, lost: Any = None, partition: int | None = None) -> list[Segment]:
    """The segments of one generation in position order; a gap or overlap is corruption,
    unless the gap is a lost range recorded by a repair (``lost``: a :class:`LostRanges`)."""
    return _contiguous(gen_dir, _segments_in(gen_dir), lost, partition)


_listings: UnchangedCache[list[Segment]] = UnchangedCache(4096)


def list_segments_cached(gen_dir: Path, lost: Any = None, partition: int | None = None) -> list[Segment]:
    """:func:`list_segments`, reusing this process's last parse of the directory while its mtime is
    unchanged (one stat instead of listing and parsing every name: reads of one aggregate do this
    per call, and a partition holds one segment per 50k events). Checked for gaps every time."""
    key = str(gen_dir)
    st = os.stat(key)  # FileNotFoundError: the generation was collected (read again)
    return _contiguous(gen_dir, _listings.get(key, st, lambda: _segments_in(gen_dir)), lost, partition)


def _segments_in(gen_dir: Path) -> list[Segment]:
    segs = [s for p in gen_dir.iterdir() if (s := parse_segment_name(p)) is not None]
    segs.sort(key=lambda s: s.first)
    return segs


def _contiguous(gen_dir: Path, segs: list[Segment], lost: Any, partition: int | None) -> list[Segment]:
    expected = 1
    for s in segs:
        if s.first != expected and not (
            s.first > expected and lost is not None and lost.covers(partition, expected, s.first - 1)
        ):
            raise StoreCorrupted(f"segments of {gen_dir} are not contiguous at {s.path.name} (expected {expected})")
        if s.last < s.first:
            raise StoreCorrupted(f"{s.path}: a segment name with last position before its first")
        expected = s.last + 1
    return segs


_verified: set[tuple[int, int, int, int]] = set()


def _identity(path: Path) -> tuple[int, int, int, int]:
    st = path.stat()  # hard links (compaction) share the inode: verified once
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def verify_segment(seg: Segment) -> None:
    """Check a segment's whole-file CRC-32 against its name, once per file per process.

    Raises StoreCorrupted naming the file (its bytes are left as they are);
    FileNotFoundError if a compaction removed it meanwhile (read again).
    """
    if seg.crc is None:
        return  # a format-1 name: its pages are still checked when read
    ident = _identity(seg.path)
    if ident in _verified:
        return
    actual = file_crc32(seg.path)
    if actual != seg.crc:
        raise StoreCorrupted(
            f"{seg.path}: sealed segment is damaged (CRC-32 {actual:08x}, its name says {seg.crc:08x}); "
            f"positions {seg.first}..{seg.last} cannot be trusted. Every byte was left as it was; run "
            "`es-actors repair --store <path>` to quarantine it and keep every readable row group"
        )
    if len(_verified) > 100_000:
        _verified.clear()
    _verified.add(ident)


def verify_segments(segments: list[Segment]) -> None:
    for seg in segments:
        verify_segment(seg)


def resolve_current(partition_dir: Path) -> Path | None:
    """The generation ``current`` points at; None if it is missing or not a symlink (one syscall)."""
    try:
        target = os.readlink(os.path.join(partition_dir, CURRENT))
    except OSError as exc:  # missing, or not a symlink (EINVAL): what is_symlink() said False to; others raise
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EINVAL, errno.ELOOP):
            return None
        raise
    return partition_dir / target


class SegmentSet:
    """The writer's view of a partition's sealed segments. Only the partition owner mutates it."""

    def __init__(self, partition_dir: Path, gc_grace_s: float = 300.0, lost: Any = None, partition: int | None = None) -> None:
        self.dir = partition_dir
        self.gc_grace_s = gc_grace_s
        self.lost = lost
        self.partition = partition
        partition_dir.mkdir(parents=True, exist_ok=True)
        cur = resolve_current(partition_dir)
        if cur is not None and not cur.is_dir():
            raise StoreCorrupted(f"{partition_dir / CURRENT} points at {cur.name}, which is not a generation directory")
        if cur is None:
            if any(_GEN.match(p.name) for p in partition_dir.iterdir()):
                raise StoreCorrupted(f"{partition_dir / CURRENT} is missing but generations exist: nothing was changed")
            cur = partition_dir / "gen-000001"
            cur.mkdir(exist_ok=True)
            point_current_at(partition_dir, cur)
        self.gen_dir = cur
        for stale in cur.glob(".*.tmp"):
            stale.unlink(missing_ok=True)  # a seal that crashed before its rename
        self.segments = list_segments(cur, lost, partition)

    @property
    def last_position(self) -> int:
        return self.segments[-1].last if self.segments else 0

    def _continues(self, first: int) -> bool:
        expected = self.last_position + 1
        return first == expected or (
            first > expected and self.lost is not None and self.lost.covers(self.partition, expected, first - 1)
        )

    def seal(self, rows: list[tuple[Any, ...]]) -> Segment:
        """Write rows (contiguous, right after the last sealed position or a recorded lost range)
        as a segment. Retry-safe: rows already sealed by an attempt that failed later return
        the segment that holds them."""
        first, last = rows[0][1], rows[-1][1]
        if self.segments and self.segments[-1].first == first and self.segments[-1].last == last:
            return self.segments[-1]
        if not self._continues(first) or last - first + 1 != len(rows):
            raise StoreCorrupted(f"seal of {first}..{last} does not continue {self.last_position}")
        for p in self.gen_dir.glob(f"seg-{first:020d}-{last:020d}*.parquet"):
            seg = parse_segment_name(p)  # renamed by an attempt that failed after it (dir fsync)
            if seg is not None:
                verify_segment(seg)
                fsync_dir(self.gen_dir)
                self.segments.append(seg)
                return seg
        seg = write_segment(rows_to_table(rows), self.gen_dir, first, last)
        self.segments.append(seg)
        return seg

    def compact(self, small_rows: int, min_run: int) -> int:
        """Merge each run of >= min_run adjacent small segments into one; returns files merged.

        A run never spans a recorded lost range: a segment always holds contiguous positions."""
        runs: list[list[Segment]] = []
        cur: list[Segment] = []
        for s in self.segments:
            if s.rows < small_rows and (not cur or cur[-1].last + 1 == s.first):
                cur.append(s)
            else:
                if len(cur) >= min_run:
                    runs.append(cur)
                cur = [s] if s.rows < small_rows else []
        if len(cur) >= min_run:
            runs.append(cur)
        if not runs:
            return 0
        merged_away = {s.path.name for run in runs for s in run}
        new_gen = next_generation_dir(self.dir, self.gen_dir)
        new_segments: list[Segment] = []
        for s in self.segments:
            if s.path.name not in merged_away:
                os.link(s.path, new_gen / s.path.name)
                new_segments.append(Segment(s.first, s.last, new_gen / s.path.name, s.crc))
        for run in runs:
            for s in run:
                verify_segment(s)  # never merge damage into a file with a fresh checksum
            table = pa.concat_tables([pq.read_table(s.path, schema=ARROW_SCHEMA) for s in run])
            new_segments.append(write_segment(table, new_gen, run[0].first, run[-1].last))
        new_segments.sort(key=lambda s: s.first)
        fsync_dir(new_gen)
        old_gen = self.gen_dir
        point_current_at(self.dir, new_gen, on_swapped=lambda: self._swapped(new_gen, new_segments))
        os.utime(old_gen)  # its grace period counts from when it stopped being current
        return len(merged_away)

    def _swapped(self, gen_dir: Path, segments: list[Segment]) -> None:
        # Called right after the rename, before anything that can fail: the in-memory view must
        # follow ``current`` even if the directory fsync then fails, or the next seal would
        # write into a generation readers no longer see.
        self.gen_dir, self.segments = gen_dir, segments

    def collect_garbage(self, now: Callable[[], float] = time.time) -> int:
        """Delete generations older than the current one once their grace period is over."""
        removed = 0
        for p in self.dir.iterdir():
            if _GEN.match(p.name) and p != self.gen_dir and now() - p.stat().st_mtime > self.gc_grace_s:
                shutil.rmtree(p, ignore_errors=True)
                removed += 1
        return removed



def point_current_at(partition_dir: Path, gen_dir: Path, on_swapped: Callable[[], None] | None = None) -> None:
    """Swap ``current`` to ``gen_dir`` atomically (a new symlink renamed over it), then make the
    swap durable. ``on_swapped`` runs right after the rename, before anything that can fail."""
    tmp = partition_dir / f".{CURRENT}.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(gen_dir.name, tmp)
    os.replace(tmp, partition_dir / CURRENT)
    if on_swapped is not None:
        on_swapped()
    fsync_dir(partition_dir)


def next_generation_dir(partition_dir: Path, after: Path) -> Path:
    """A fresh, empty directory for the generation after ``after`` (one left by a crash before
    its swap is never visible to readers and is cleared)."""
    m = _GEN.match(after.name)
    new_gen = partition_dir / f"gen-{(int(m.group(1)) if m else 0) + 1:06d}"
    if new_gen.exists():
        shutil.rmtree(new_gen)
    new_gen.mkdir()
    return new_gen
