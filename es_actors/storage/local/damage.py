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
- :class:`PartitionCheck`: rows that belong to another partition (their ``partition`` column,
  or the partition their aggregate hashes to): a segment or frame copied from elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from es_actors.codecs.rows import ARROW_SCHEMA, COL
from es_actors.storage.layout import partition_of
from es_actors.storage.local.segments import Segment, file_crc32
from es_actors.storage.local.durable_mark import DurableMark
from es_actors.storage.local.wal import Damage, Frame, TailScan, high_water, list_tail_files, scan_tail_file
from es_actors.storage.lost_ranges import LostRanges


class PartitionCheck:
    """Whether rows belong to ``partition``: their ``partition`` column says so and their
    aggregate hashes to it. A checksum proves a file whole, not that it is this partition's (a
    segment copied with its CRC name from another partition checks out); this does. Each
    aggregate is hashed once."""

    def __init__(self, partition: int, partitions: int) -> None:
        self.partition, self.partitions = partition, partitions
        self._ok: set[tuple[str, str]] = set()

    def _aggregate(self, atype: str, aid: str) -> str | None:
        if (atype, aid) in self._ok:
            return None
        home = partition_of(atype, aid, self.partitions)
        if home != self.partition:
            return f"holds {atype}/{aid}, whose aggregate hashes to partition {home}, not {self.partition}"
        self._ok.add((atype, aid))
        return None

    def rows(self, parts: Sequence[int], atypes: Sequence[str], aids: Sequence[str]) -> str | None:
        """Why these rows (as columns) are not this partition's, or None."""
        for part, atype, aid in zip(parts, atypes, aids):
            if part != self.partition:
                return f"holds an event of partition {part} ({atype}/{aid}), not of partition {self.partition}"
            if (why := self._aggregate(str(atype), str(aid))) is not None:
                return why
        return None

    def table(self, t: pa.Table | pa.RecordBatch) -> str | None:
        """:meth:`rows` of a table or batch with the columns partition, aggregate_type, aggregate_id."""
        parts = t.column("partition")
        if len(parts) and not pc.all(pc.equal(parts, self.partition)).as_py():
            wrong = pc.index(pc.equal(parts, self.partition), False).as_py()
            return self.rows([parts[wrong].as_py()], [t.column("aggregate_type")[wrong].as_py()],
                             [t.column("aggregate_id")[wrong].as_py()])
        return self.rows(parts.to_pylist(), t.column("aggregate_type").to_pylist(), t.column("aggregate_id").to_pylist())

    def tuples(self, rows: Iterable[Sequence[Any]]) -> str | None:
        """:meth:`rows` of row tuples (the tail's layout, :data:`COL`)."""
        rows = list(rows)
        return self.rows([int(r[COL["partition"]]) for r in rows], [str(r[COL["aggregate_type"]]) for r in rows],
                         [str(r[COL["aggregate_id"]]) for r in rows])


_OWNER_COLUMNS = ["partition", "aggregate_type", "aggregate_id"]


def segment_damage(s: Segment, check: PartitionCheck | None = None) -> str | None:
    """Why a sealed segment cannot be trusted, or None: its CRC-32 against its name (format 2),
    else whether it reads at all (a format-1 name carries no checksum); with ``check``, also
    whether its rows are the partition's (:class:`PartitionCheck`)."""
    if s.crc is not None:
        actual = file_crc32(s.path)
        if actual != s.crc:
            return f"CRC-32 {actual:08x} where its name says {s.crc:08x}"
    else:
        try:
            pq.read_table(s.path, schema=ARROW_SCHEMA)
        except (pa.ArrowException, OSError) as exc:
            return f"cannot be read: {exc}"
    if check is not None:
        try:
            for batch in pq.ParquetFile(s.path).iter_batches(batch_size=64 * 1024, columns=_OWNER_COLUMNS):
                if (why := check.table(batch)) is not None:
                    return why
        except (pa.ArrowException, OSError, ValueError) as exc:
            if isinstance(exc, FileNotFoundError):
                raise
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
    lost range covers; ``damaged``: the scans with damage or a torn end; ``durable_damage``: why
    the ``DURABLE`` mark cannot be trusted (None: it checks out, or there is none)."""

    files: list[tuple[int, Path]]
    scans: list[TailScan]
    runs: list[list[Frame]]
    last_kept: int
    used: int
    damaged: list[TailScan]
    missing: list[tuple[int, int]]
    durable_damage: str | None = None

    def positions(self) -> list[int]:
        return [pos for run in self.runs for fr in run for pos in range(fr.first_position, fr.first_position + len(fr.rows))]


def examine_tail(
    tail_dir: Path, sealed_last: int, lost: LostRanges, partition: int, check: PartitionCheck | None = None,
) -> TailFindings:
    """Classify a partition's tail against its last sealed position (see :class:`TailFindings`);
    with ``check``, a frame whose rows are another partition's is damage, not data.

    The durable mark is read before the files, so a writer appending meanwhile can only make
    the files hold more than the mark says, never less."""
    durable = DurableMark.read(tail_dir)
    durable_damage = DurableMark.damage(tail_dir) if durable is None else None
    files, scans = scan_partition_tail(tail_dir)
    pooled: dict[int, Frame] = {}
    for scan in scans:
        if check is not None:
            _foreign_frames(scan, check)
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
    found = TailFindings(files, scans, runs, last_kept, used, damaged, [], durable_damage)
    found.missing = [(a, b) for a, b in missing_ranges(sealed_last + 1, used, sorted(found.positions()))
                     if not lost.covers(partition, a, b)]
    return found


def _foreign_frames(scan: TailScan, check: PartitionCheck) -> None:
    """Move the frames of ``scan`` whose rows are another partition's to its damage."""
    keep: list[Frame] = []
    for fr in scan.frames:
        why = check.tuples(fr.rows) if fr.rows else None
        if why is None:
            keep.append(fr)
        else:
            scan.damage.append(Damage(scan.path, fr.offset, fr.end, fr.first_position, fr.rows[-1][COL["position"]],
                                      f"a frame from another partition: {why}"))
    scan.frames = keep
