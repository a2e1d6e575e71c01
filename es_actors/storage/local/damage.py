"""Finding damage in a local partition log: one scanner for ``repair`` (which then quarantines
and rewrites) and ``verify`` (which only reports). Nothing here writes.

- :func:`segment_damage`: a sealed segment whose CRC-32 differs from its name (or, with a
  format-1 name, that does not read).
- :func:`segment_gaps`: positions no sealed segment holds and no recorded lost range covers.
- :func:`scan_partition_tail`: every tail file of a partition classified frame by frame
  (frames, a torn end of the newest file, damage), as the writer's recovery sees them.
- :func:`examine_tail`: the valid frames past the last sealed position, pooled over the files,
  and the positions handed out that nothing holds.
- :func:`missing_ranges`: the runs of ``first..last`` that ``have`` lacks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from es_actors.codecs.rows import ARROW_SCHEMA
from es_actors.storage.local.segments import Segment, file_crc32
from es_actors.storage.local.durable_mark import DurableMark
from es_actors.storage.local.wal import Frame, TailScan, high_water, list_tail_files, scan_tail_file
from es_actors.storage.lost_ranges import LostRanges


def segment_damage(s: Segment) -> str | None:
    """Why a sealed segment cannot be trusted, or None: its CRC-32 against its name (format 2),
    else whether it reads at all (a format-1 name carries no checksum)."""
    if s.crc is not None:
        actual = file_crc32(s.path)
        if actual != s.crc:
            return f"CRC-32 {actual:08x} where its name says {s.crc:08x}"
        return None
    try:
        pq.read_table(s.path, schema=ARROW_SCHEMA)
    except (pa.ArrowException, OSError) as exc:
        return f"cannot be read: {exc}"
    return None


def segment_gaps(segs: list[Segment], lost: LostRanges, partition: int) -> list[tuple[int, int]]:
    """Position ranges before or between ``segs`` (in position order) that no segment holds and
    no recorded lost range covers."""
    out: list[tuple[int, int]] = []
    expected = 1
    for s in segs:
        if s.first > expected and not lost.covers(partition, expected, s.first - 1):
            out.append((expected, s.first - 1))
        expected = max(expected, s.last + 1)
    return out


def scan_partition_tail(tail_dir: Path) -> tuple[list[tuple[int, Path]], list[TailScan]]:
    """The tail files of a partition (first position, path) and each one's scan; only the newest
    may have a torn end. FileNotFoundError if a seal moved a file meanwhile (scan again)."""
    files = list_tail_files(tail_dir)
    scans = [scan_tail_file(path, i == len(files) - 1, first) for i, (first, path) in enumerate(files)]
    return files, scans


def missing_ranges(first: int, last: int, have: list[int]) -> list[tuple[int, int]]:
    """The runs of ``first..last`` not in ``have`` (ascending positions)."""
    out: list[tuple[int, int]] = []
    want = first
    for pos in have:
        if pos > want:
            out.append((want, pos - 1))
        want = max(want, pos + 1)
    if want <= last:
        out.append((want, last))
    return out


@dataclass
class TailFindings:
    """What a partition's tail holds past its last sealed position, and what it lacks.

    ``runs``: the valid frames past ``sealed_last`` pooled over every file, in position order
    (each run contiguous; a misplaced frame or a renamed file is put where it belongs);
    ``used``: the highest position the tail shows was ever handed out (durable mark, file
    names); ``missing``: ranges up to ``used`` no sealed segment or frame holds and no recorded
    lost range covers; ``damaged``: the scans with damage or a torn end."""

    files: list[tuple[int, Path]]
    scans: list[TailScan]
    runs: list[list[Frame]]
    last_kept: int
    used: int
    damaged: list[TailScan]
    missing: list[tuple[int, int]]

    def positions(self) -> list[int]:
        return [pos for run in self.runs for fr in run for pos in range(fr.first_position, fr.first_position + len(fr.rows))]


def examine_tail(tail_dir: Path, sealed_last: int, lost: LostRanges, partition: int) -> TailFindings:
    """Classify a partition's tail against its last sealed position (see :class:`TailFindings`).

    The durable mark is read before the files, so a writer appending meanwhile can only make
    the files hold more than the mark says, never less."""
    durable = DurableMark.read(tail_dir)
    files, scans = scan_partition_tail(tail_dir)
    pooled: dict[int, Frame] = {}
    for scan in scans:
        for fr in scan.frames:
            if fr.rows and fr.rows[-1][1] > sealed_last:
                pooled.setdefault(fr.first_position, fr)
    runs: list[list[Frame]] = []
    last_kept = sealed_last
    for first in sorted(pooled):
        fr = pooled[first]
        if first <= last_kept:
            continue  # overlaps what is already kept (a frame copied by an interrupted repair)
        if runs and first == last_kept + 1:
            runs[-1].append(fr)
        else:
            runs.append([fr])
        last_kept = fr.rows[-1][1]
    renamed = {s.path for s in scans for d in s.damage if "named for position" in d.reason}
    used = max(last_kept, high_water(durable, [(first, path) for first, path in files if path not in renamed]))
    damaged = [scan for scan in scans if scan.damage or scan.torn_bytes]
    found = TailFindings(files, scans, runs, last_kept, used, damaged, [])
    found.missing = [(a, b) for a, b in missing_ranges(sealed_last + 1, used, sorted(found.positions()))
                     if not lost.covers(partition, a, b)]
    return found
