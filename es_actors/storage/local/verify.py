"""``es-actors verify``: read a local store's whole log and report what is damaged, writing nothing.

Per partition: every sealed segment's CRC-32 against its name (format 1: that it reads), that
its rows hold exactly the positions its name says; every tail frame's checksums (the same
scanner as ``repair``, :mod:`.damage`); that positions run without a gap across segments and
tail, or across a range recorded in ``lost-ranges.json``; and that each aggregate's versions
run without a gap (or the gap lies across a recorded or unreadable range); that every row is
the partition's (its ``partition`` column and the hash of its aggregate: a segment copied from
another partition checks out by its CRC); that a format-2 partition has its tail directory and
an intact ``DURABLE`` mark. Recorded losses are listed, with whether an operator accepted them
(an unaccepted one makes the partition refuse commands); they are known gaps, not damage, and
leave the verdict clean (exit status 0). It takes no lock
and works while the store runs: a partition whose files changed under it (a seal, a
compaction) is read again. Memory: one segment's columns at a time, and the last version of
each aggregate of the partition being read.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from es_actors.codecs.rows import COL
from es_actors.errors import EsActorsError
from es_actors.storage.guard import storage_boundary
from es_actors.storage.layout import StoreLayout
from es_actors.storage.local.damage import PartitionCheck, examine_tail, segment_damage, segment_gaps
from es_actors.storage.local.maintenance import store_descriptor
from es_actors.storage.local.segments import Segment, parse_segment_name, resolve_current
from es_actors.storage.local.wal import list_tail_files
from es_actors.storage.lost_ranges import LostRanges

_ATTEMPTS = 10  # a partition whose files keep changing under the read (a busy writer) is read again
_COLUMNS = ["position", "aggregate_type", "aggregate_id", "version", "partition"]


class Finding(BaseModel):
    """One thing found damaged: where (partition, file, positions) and what."""

    partition: int
    kind: str = Field(description="segment | positions | tail | versions | layout")
    file: str | None = Field(None, description="Relative to the store.")
    first: int | None = None
    last: int | None = None
    detail: str

    def describe(self) -> str:
        where = f"partition {self.partition}"
        if self.file:
            where += f" {self.file}"
        if self.first is not None:
            if self.last is not None and self.last < self.first:
                where += " (no positions lost)"
            else:
                where += f" positions {self.first}..{'?' if self.last is None else self.last}"
        return f"{where}: {self.detail}"


class PartitionVerify(BaseModel):
    partition: int
    segments: int = 0
    tail_files: int = 0
    events: int = Field(0, description="Events read and checked.")
    last_position: int = 0
    lost_recorded: int = Field(0, description="Positions recorded lost by a repair (a known gap, not damage).")
    lost_unaccepted: int = Field(0, description="Of those, positions no operator accepted yet: the partition refuses commands.")
    lost_ranges: list[str] = Field(default_factory=list, description="Each recorded lost range and whether it was accepted.")
    torn_bytes: int = Field(0, description="A torn end of the newest tail file (a crash or a write under way; not damage).")
    reads: int = Field(1, description="How often the partition was read (more if a writer changed its files meanwhile).")
    findings: list[Finding] = Field(default_factory=list)
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return not self.findings

    def line(self) -> str:
        state = "clean" if self.clean else f"DAMAGED ({len(self.findings)} findings)"
        lost = f", {self.lost_recorded:,} recorded lost" if self.lost_recorded else ""
        return (f"p{self.partition:04d}: {self.segments} segments, {self.tail_files} tail files, {self.events:,} events "
                f"up to position {self.last_position:,}{lost}: {state} ({self.seconds:.2f}s)")


class VerifyReport(BaseModel):
    store: str
    partitions: list[PartitionVerify] = Field(default_factory=list)

    @property
    def findings(self) -> list[Finding]:
        return [f for p in self.partitions for f in p.findings]

    @property
    def clean(self) -> bool:
        return not self.findings

    def summary(self) -> str:
        events = sum(p.events for p in self.partitions)
        head = f"{self.store}: {len(self.partitions)} partitions, {events:,} events read"
        lost = [f"  recorded lost: p{p.partition:04d} {r}" for p in self.partitions for r in p.lost_ranges]
        unaccepted = [p.partition for p in self.partitions if p.lost_unaccepted]
        if unaccepted:
            lost.append(f"  partition(s) {', '.join(map(str, unaccepted))} refuse commands until an operator accepts the loss: "
                        "`es-actors repair --store PATH --accept --principal NAME --reason TEXT`")
        if self.clean:
            gaps = "without a gap" if not lost else "without a gap other than the recorded losses below"
            return "\n".join([f"{head}: clean (every frame and segment checks out; positions and versions run {gaps})", *lost])
        lines = [f"{head}: DAMAGE FOUND ({len(self.findings)})"]
        lines += [f"  {f.describe()}" for f in self.findings]
        lines.append("  `es-actors repair --store PATH` (writers stopped) quarantines the damage and records the loss")
        return "\n".join(lines + lost)


@dataclass
class VerifyProgress:
    """One step of a verify: ``files_done`` of ``files_total`` in ``partition``; ``result`` once it is done."""

    partition: int
    files_done: int
    files_total: int
    result: PartitionVerify | None = None


VerifyProgressFn = Callable[[VerifyProgress], None]


@storage_boundary("verifying the store")
def verify_store(
    root: str | os.PathLike[str], partition: int | None = None, progress: VerifyProgressFn | None = None,
) -> VerifyReport:
    """Check every frame, segment, position and aggregate version of a local store (or of one
    partition), read-only; safe while the store runs. ``report.clean`` says whether all is well."""
    layout = StoreLayout.from_uri(root)
    layout.require_local("verify")
    desc = store_descriptor(layout)
    if partition is not None and not 0 <= partition < desc.partitions:
        raise EsActorsError(f"{layout.root} has partitions 0..{desc.partitions - 1}, not {partition}")
    report = VerifyReport(store=str(layout.root))
    crc_checked: dict[tuple[int, int, int, int], str | None] = {}
    for p in [partition] if partition is not None else range(desc.partitions):
        report.partitions.append(_verify_partition(layout, p, desc.partitions, desc.format_version, crc_checked, progress))
    return report


def _verify_partition(
    layout: StoreLayout, p: int, partitions: int, fmt: int, crc_checked: dict[tuple[int, int, int, int], str | None], progress: VerifyProgressFn | None,
) -> PartitionVerify:
    t0 = time.monotonic()
    out = PartitionVerify(partition=p)
    for attempt in range(1, _ATTEMPTS + 1):
        before = _files_of(layout, p)
        try:
            out = _read_partition(layout, p, PartitionCheck(p, partitions), fmt, crc_checked, progress)
        except FileNotFoundError as exc:  # a seal or a compaction moved a file: read again
            if attempt == _ATTEMPTS:
                out = PartitionVerify(partition=p, findings=[Finding(
                    partition=p, kind="layout", detail=f"files kept changing while read ({exc.filename}); verify again")])
        else:
            out.reads = attempt
            if out.clean or _files_of(layout, p) == before:
                break
        time.sleep(0.01 * attempt)  # let the seal or compaction under way finish
    out.seconds = round(time.monotonic() - t0, 3)
    if progress is not None:
        progress(VerifyProgress(p, out.segments + out.tail_files, out.segments + out.tail_files, out))
    return out


def _files_of(layout: StoreLayout, p: int) -> tuple[Any, ...]:
    """What a writer changes: the current generation, its segment names, the tail file names and the mark."""
    gen = resolve_current(layout.log_dir(p))
    try:
        segs = sorted(f.name for f in gen.iterdir()) if gen is not None and gen.is_dir() else []
        tails = sorted(f.name for f in layout.tail_dir(p).iterdir()) if layout.tail_dir(p).is_dir() else []
    except FileNotFoundError:
        return (None,)
    return (gen, segs, tails)


class _Versions:
    """Each aggregate's last version and its position; a gap is damage unless a recorded lost
    range (or a range that could not be read) lies between the two positions."""

    def __init__(self, p: int, lost: LostRanges) -> None:
        self.p, self.lost = p, lost
        self.last: dict[tuple[str, str], tuple[int, int]] = {}
        self.unreadable: list[tuple[int, int]] = []
        self.findings: list[Finding] = []

    def _explained(self, after: int, before: int) -> bool:
        return self.lost.lost_count(self.p, after + 1, before - 1) > 0 or any(
            a < before and b > after for a, b in self.unreadable)

    def check(self, rows: Iterable[tuple[int, str, str, int]], file: str) -> None:
        for pos, atype, aid, v in rows:
            prev_v, prev_pos = self.last.get((atype, aid), (0, 0))
            if v != prev_v + 1 and not (v > prev_v + 1 and self._explained(prev_pos, pos)) and len(self.findings) < 1000:
                what = (f"versions {prev_v + 1}..{v - 1} missing (no recorded lost range between)" if v > prev_v + 1
                        else f"version {v} where {prev_v + 1} was due (a version repeats or goes back)")
                self.findings.append(Finding(partition=self.p, kind="versions", file=file, first=pos, last=pos,
                                             detail=f"{atype}/{aid}: {what}; previous at position {prev_pos or 'none'}"))
            self.last[(atype, aid)] = (v, pos)


def _read_partition(
    layout: StoreLayout, p: int, check: PartitionCheck, fmt: int, crc_checked: dict[tuple[int, int, int, int], str | None], progress: VerifyProgressFn | None,
) -> PartitionVerify:
    out = PartitionVerify(partition=p)
    lost = LostRanges.load(layout.root)
    out.lost_recorded = sum(r.last - r.first + 1 for r in lost.of(p))
    out.lost_unaccepted = sum(r.last - r.first + 1 for r in lost.unresolved(p))
    out.lost_ranges = [f"positions {r.first}..{r.last} ({r.detail}): " + (
        f"accepted by {r.accepted.principal} at {r.accepted.accepted_at} ({r.accepted.reason})" if r.accepted
        else "NOT accepted") for r in lost.of(p)]
    rel = lambda path: str(Path(path).relative_to(layout.root))  # noqa: E731
    pdir = layout.log_dir(p)
    gen = resolve_current(pdir)
    segs: list[Segment] = []
    if gen is None or not gen.is_dir():
        if pdir.is_dir() and any(g.name.startswith("gen-") for g in pdir.iterdir()):
            out.findings.append(Finding(partition=p, kind="layout", file=rel(pdir / "current"),
                                        detail="missing or broken: no generation of sealed segments is current"))
    else:
        segs = sorted((s for f in gen.iterdir() if (s := parse_segment_name(f)) is not None), key=lambda s: s.first)
    files_total = len(segs) + len(list_tail_files(layout.tail_dir(p)))
    versions = _Versions(p, lost)
    for first, last in segment_gaps(segs, lost, p):
        nxt = next((s.path.name for s in segs if s.first == last + 1), "")
        out.findings.append(Finding(partition=p, kind="positions", file=rel(gen) if gen else None, first=first, last=last,
                                    detail=f"no segment holds these positions (missing before {nxt}) and no lost range records them"))
        versions.unreadable.append((first, last))
    expected = 1
    for i, s in enumerate(segs):
        if s.first < expected:
            out.findings.append(Finding(partition=p, kind="positions", file=rel(s.path), first=s.first, last=min(s.last, expected - 1),
                                        detail="overlaps the segment before it"))
        expected = max(expected, s.last + 1)
        why = _segment_damage_once(s, crc_checked)
        if why is None:
            why = _check_segment_rows(s, versions, check, rel(s.path))
        else:
            why = f"sealed segment is damaged: {why}"
        if why is not None:
            out.findings.append(Finding(partition=p, kind="segment", file=rel(s.path), first=s.first, last=s.last, detail=why))
            versions.unreadable.append((s.first, s.last))
        else:
            out.events += s.rows
        out.segments += 1
        if progress is not None:
            progress(VerifyProgress(p, i + 1, files_total))
    sealed_last = segs[-1].last if segs else 0
    tail_dir = layout.tail_dir(p)
    if fmt >= 2 and not tail_dir.is_dir() and pdir.is_dir():  # a writer made the tail before it sealed anything
        out.findings.append(Finding(partition=p, kind="layout", file=rel(tail_dir), detail=(
            f"the partition's tail directory is missing (its DURABLE mark, lock and unsealed frames): whatever was "
            f"written past position {sealed_last} is lost and no record says how far it went")))
    found = examine_tail(tail_dir, sealed_last, lost, p, check)
    if found.durable_damage is not None:
        out.findings.append(Finding(partition=p, kind="tail", file=rel(tail_dir / "DURABLE"), detail=found.durable_damage))
    out.tail_files = len(found.files)
    for scan in found.scans:
        out.torn_bytes += scan.torn_bytes
        for d in scan.damage:
            out.findings.append(Finding(partition=p, kind="tail", file=rel(d.path), first=d.first_lost, last=d.last_lost,
                                        detail=f"at byte {d.offset}: {d.reason}"))
    for a, b in found.missing:
        out.findings.append(Finding(partition=p, kind="positions", file=rel(layout.tail_dir(p)), first=a, last=b,
                                    detail="handed out (durable mark, tail file names) but no segment or tail frame holds them"))
        versions.unreadable.append((a, b))
    by_path = {fr.offset: scan.path for scan in found.scans for fr in scan.frames}
    for run in found.runs:
        for fr in run:
            versions.check(((r[COL["position"]], str(r[COL["aggregate_type"]]), str(r[COL["aggregate_id"]]), int(r[COL["version"]]))
                            for r in fr.rows), rel(by_path.get(fr.offset, layout.tail_dir(p))))
            out.events += len(fr.rows)
    out.last_position = max(found.last_kept, sealed_last)
    out.findings.extend(versions.findings)
    return out


def _segment_damage_once(s: Segment, checked: dict[tuple[int, int, int, int], str | None]) -> str | None:
    """:func:`segment_damage`, once per file per verify (a compaction hard-links untouched segments)."""
    st = s.path.stat()
    ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if ident not in checked:
        checked[ident] = segment_damage(s)
    return checked[ident]


def _check_segment_rows(s: Segment, versions: _Versions, check: PartitionCheck, file: str) -> str | None:
    """Its rows hold exactly positions first..last in order, all of this partition; feeds the
    version check. Why not, or None."""
    expected = s.first
    try:
        pf = pq.ParquetFile(s.path, page_checksum_verification=True)
        for batch in pf.iter_batches(batch_size=64 * 1024, columns=_COLUMNS):
            cols = [batch.column(c).to_pylist() for c in _COLUMNS]
            pos = cols[0]
            if pos and pos != list(range(expected, expected + len(pos))):
                return f"rows hold positions {pos[0]}..{pos[-1]} where {expected} was due (its name says {s.first}..{s.last})"
            if (why := check.rows(cols[4], cols[1], cols[2])) is not None:
                return why
            versions.check(zip(*cols[:4]), file)
            expected += len(pos)
    except (pa.ArrowException, OSError, ValueError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        return f"cannot be read: {exc}"
    if expected != s.last + 1:
        return f"holds positions {s.first}..{expected - 1}, its name says {s.first}..{s.last}"
    return None
