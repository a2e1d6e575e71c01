"""``es-actors repair``: quarantine damage, keep every valid event, record what is lost (ADR-009).

Repair copies damaged bytes into ``quarantine/<time>/``, keeps every valid frame and every
readable row group, records what could not be kept in ``lost-ranges.json`` *before* rewriting
anything, then rewrites the damaged files without the damage, and reports positions,
aggregates and versions lost. :func:`accept_loss` records an operator's decision that lets a
partition take commands again."""

from __future__ import annotations

import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from es_actors.errors import EsActorsError
from es_actors.codecs.rows import ARROW_SCHEMA, COL
from es_actors.storage.guard import storage_boundary
from es_actors.storage.layout import StoreLayout
from es_actors.storage.lost_ranges import (
    Acceptance,
    AffectedAggregate,
    LostRange,
    LostRanges,
    now_text,
    record_lost_ranges,
    write_lost_ranges,
)
from es_actors.storage.local.segments import (
    CURRENT,
    Segment,
    list_segments,
    next_generation_dir,
    parse_segment_name,
    point_current_at,
    resolve_current,
    write_segment,
)
from es_actors.storage.local.wal import (
    Damage,
    TailScan,
    file_header,
    tail_file_name,
)
from es_actors.storage.local.damage import PartitionCheck, examine_tail, missing_ranges, segment_damage, segment_gaps
from es_actors.storage.local.durable_mark import DurableMark
from es_actors.storage.files import fsync_dir, replace_durably
from es_actors.storage.local.maintenance import all_partitions_locked, store_descriptor, tail_file_bytes


class RepairReport(BaseModel):
    store: str
    quarantine: str | None = None
    damage: list[str] = Field(default_factory=list, description="What was found, file by file.")
    torn_bytes_cut: int = 0
    lost: list[LostRange] = Field(default_factory=list)

    def summary(self) -> str:
        if not self.damage and not self.torn_bytes_cut and not self.lost:
            return f"{self.store}: no damage found; nothing changed"
        kept = (f"damaged bytes kept in {self.quarantine}" if self.quarantine
                else "no damaged file was left to keep (nothing quarantined)")
        lines = [f"{self.store}: repaired; {kept}"]
        lines += [f"  found: {d}" for d in self.damage]
        if self.torn_bytes_cut:
            lines.append(f"  cut {self.torn_bytes_cut} torn bytes at the end of the newest tail file")
        for r in self.lost:
            aggs = ", ".join(f"{a.aggregate_type}/{a.aggregate_id} v{a.versions or '?'} ({a.evidence})" for a in r.aggregates)
            lines.append(
                f"  LOST partition {r.partition} positions {r.first}..{r.last} ({r.last - r.first + 1} events) "
                f"from {r.source} at byte {r.offset}; aggregates known affected: {aggs or 'none identified'}"
            )
        if self.lost:
            lines.append(
                "  Commands to the affected partitions are refused until an operator accepts the loss: "
                "`es-actors repair --store PATH --accept --principal NAME --reason TEXT`"
            )
        return "\n".join(lines)


@storage_boundary("repairing the store")
def repair_store(root: str | os.PathLike[str], lock_timeout_s: float = 2.0) -> RepairReport:
    """Quarantine damage, keep every valid event, record what is lost. Needs every writer stopped."""
    layout = StoreLayout.local(root, "repair and its quarantine")
    desc = store_descriptor(layout)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    qdir = layout.root / "quarantine" / stamp
    report = RepairReport(store=str(layout.root))
    with all_partitions_locked(layout, desc.partitions, lock_timeout_s):
        for p in range(desc.partitions):
            before = len(report.lost)
            _repair_segments(layout, p, qdir, report, PartitionCheck(p, desc.partitions))
            _repair_tail(layout, p, qdir, report, PartitionCheck(p, desc.partitions))
            if len(report.lost) > before:
                _note_version_gaps(layout, p, report.lost[before:])
    if qdir.exists():
        report.quarantine = str(qdir)
    return report


def _quarantine(src: Path, qdir: Path, layout: StoreLayout) -> str:
    qdir.mkdir(parents=True, exist_ok=True)
    dest = qdir / str(src.relative_to(layout.root)).replace(os.sep, "__")
    shutil.copy2(src, dest)
    with open(dest, "rb") as f:
        os.fsync(f.fileno())
    fsync_dir(qdir)
    return str(dest.relative_to(layout.root))


def _record(layout: StoreLayout, ranges: list[LostRange], report: RepairReport) -> None:
    """Lost ranges go on record before any file is rewritten: a crash in between leaves damage
    that a second repair finds again, never an unexplained gap."""
    if ranges:
        record_lost_ranges(layout.root, ranges)
        report.lost.extend(ranges)


def _repair_segments(layout: StoreLayout, p: int, qdir: Path, report: RepairReport, check: PartitionCheck) -> None:
    pdir = layout.log_dir(p)
    gen = resolve_current(pdir)
    if gen is None or not gen.is_dir():
        gens = sorted(g for g in pdir.glob("gen-*") if g.is_dir()) if pdir.is_dir() else []
        if not gens:
            if gen is None and not layout.tail_dir(p).exists():
                return  # a partition that never held anything
            pdir.mkdir(parents=True, exist_ok=True)
            empty = pdir / "gen-000001"
            empty.mkdir(exist_ok=True)
            report.damage.append(f"{pdir}: no generation of sealed segments is left; an empty one replaces it")
            point_current_at(pdir, empty)
            return  # the tail pass records every position that is now missing
        report.damage.append(f"{pdir / CURRENT}: missing or broken; pointed at the newest generation {gens[-1].name}")
        point_current_at(pdir, gens[-1])
        gen = gens[-1]
    lost = LostRanges.load(layout.root)
    segs = sorted((s for f in gen.iterdir() if (s := parse_segment_name(f)) is not None), key=lambda s: s.first)
    bad: dict[str, tuple[Segment, list[pa.Table], str]] = {}
    ranges: list[LostRange] = [
        _lost(p, first, last, str(gen.relative_to(layout.root)), 0, "", "segment files for these positions are missing")
        for first, last in segment_gaps(segs, lost, p)
    ]
    for s in segs:
        why = segment_damage(s, check)
        if why is None:
            continue
        kept = _salvage_row_groups(s, check)
        report.damage.append(f"{s.path}: {why}")
        q = _quarantine(s.path, qdir, layout)
        have = sorted(int(x) for t in kept for x in t.column("position").to_pylist())
        for first, last in missing_ranges(s.first, s.last, have):
            ranges.append(_lost(p, first, last, str(s.path.relative_to(layout.root)), 0, q, why))
        bad[s.path.name] = (s, kept, q)
    ranges.sort(key=lambda r: r.first)  # in position order, gaps and damage alike
    _record(layout, ranges, report)
    if not bad:
        return
    new_gen = next_generation_dir(pdir, gen)
    for s in segs:
        if s.path.name not in bad:
            os.link(s.path, new_gen / s.path.name)
            continue
        for table in bad[s.path.name][1]:
            pos = table.column("position").to_pylist()
            write_segment(table, new_gen, pos[0], pos[-1])
    fsync_dir(new_gen)
    point_current_at(pdir, new_gen)
    os.utime(gen)


def _salvage_row_groups(s: Segment, check: PartitionCheck) -> list[pa.Table]:
    """Readable row groups whose positions and partition check out, as runs of contiguous positions."""
    try:
        pf = pq.ParquetFile(s.path, page_checksum_verification=True)
        groups = range(pf.num_row_groups)
    except (pa.ArrowException, OSError):
        return []
    runs: list[pa.Table] = []
    run: list[pa.Table] = []
    next_pos = None
    for g in groups:
        try:
            t = pf.read_row_group(g).cast(ARROW_SCHEMA)
            pos = t.column("position").to_pylist()
        except (pa.ArrowException, OSError, ValueError):
            continue
        if not pos or pos != list(range(pos[0], pos[0] + len(pos))) or pos[0] < s.first or pos[-1] > s.last:
            continue
        if check.table(t) is not None:
            continue
        if run and pos[0] != next_pos:
            runs.append(pa.concat_tables(run))
            run = []
        run.append(t)
        next_pos = pos[-1] + 1
    if run:
        runs.append(pa.concat_tables(run))
    return runs


def _lost(p: int, first: int, last: int, source: str, offset: int, quarantined: str, detail: str) -> LostRange:
    return LostRange(partition=p, first=first, last=last, source=source, offset=offset, quarantined=quarantined,
                     detail=detail, recorded_at=now_text())


def _repair_tail(layout: StoreLayout, p: int, qdir: Path, report: RepairReport, check: PartitionCheck) -> None:
    """Keep every valid frame of every tail file, record every position used but not kept.

    Frames of all files are pooled, put in position order and regrouped into files named by
    their first position: a misplaced frame or a renamed file is put back, not dropped. Lost
    ranges are what lies between the last sealed position and the highest position ever used
    (durable mark, file names) that no segment or frame holds. New files are written before any
    original is replaced or removed, so a crash part-way leaves every frame in some file.
    """
    tail_dir = layout.tail_dir(p)
    lost_before = LostRanges.load(layout.root)
    gen = resolve_current(layout.log_dir(p))
    segs = list_segments(gen, lost_before, p) if gen is not None and gen.is_dir() else []
    sealed_last = segs[-1].last if segs else 0
    found = examine_tail(tail_dir, sealed_last, lost_before, p, check)
    files, runs, used, damaged, missing = found.files, found.runs, found.used, found.damaged, found.missing
    if found.durable_damage is not None:  # evidence only: the next writer publishes it again from what it recovers
        mark = tail_dir / DurableMark.NAME
        _quarantine(mark, qdir, layout)
        mark.unlink()
        fsync_dir(tail_dir)
        report.damage.append(f"{mark}: {found.durable_damage}; quarantined (the next writer publishes it again)")
    if not damaged and not missing:
        return
    quarantined = {scan.path: _quarantine(scan.path, qdir, layout) for scan in damaged}
    for scan in damaged:
        report.damage.extend(d.describe() for d in scan.damage)
        report.torn_bytes_cut += scan.torn_bytes
    ranges: list[LostRange] = []
    for a, b in missing:
        where = next(((s, d) for s in damaged for d in s.damage if d.first_lost <= b and (d.last_lost or b) >= a), None)
        if where is not None:
            scan, d = where
            lr = _lost(p, a, b, str(scan.path.relative_to(layout.root)), d.offset, quarantined[scan.path], d.reason)
            lr.aggregates = _from_damaged_bytes(scan, d)
        else:
            source = damaged[-1] if damaged else None
            lr = _lost(p, a, b, str(tail_dir.relative_to(layout.root)), source.valid_end if source else 0,
                       quarantined[source.path] if source else "",
                       "positions were written (durable mark, tail file names) but no file holds them")
        ranges.append(lr)
    _record(layout, ranges, report)
    wanted = {tail_file_name(run[0].first_position): run for run in runs}
    existing = {path.name for _first, path in files}
    for name in sorted(set(wanted) - existing):  # new files first: every frame stays in some file
        replace_durably(tail_dir / name, tail_file_bytes(wanted[name][0].first_position, wanted[name]))
    fsync_dir(tail_dir)
    for name in sorted(set(wanted) & existing):
        data = tail_file_bytes(wanted[name][0].first_position, wanted[name])
        if (tail_dir / name).read_bytes() != data:
            replace_durably(tail_dir / name, data)
    fsync_dir(tail_dir)
    for name in sorted(existing - set(wanted)):
        (tail_dir / name).unlink()
    fsync_dir(tail_dir)
    if used >= sealed_last + 1 and not wanted:  # keep the evidence of how far the log went
        replace_durably(tail_dir / tail_file_name(used + 1), file_header(used + 1))
        fsync_dir(tail_dir)


def _from_damaged_bytes(scan: TailScan, d: Damage) -> list[AffectedAggregate]:
    """Best effort: aggregates named by rows still legible in the damaged bytes (unverified)."""
    import json

    off = d.offset
    end = d.resume_offset or scan.size
    try:
        data = scan.path.read_bytes()[off:end]
    except OSError:
        return []
    out: dict[tuple[str, str], list[int]] = {}
    start = data.find(b"[[")
    while start >= 0:
        try:
            rows, _ = json.JSONDecoder().raw_decode(data[start:].decode("utf-8", "replace"))
            for r in rows:
                out.setdefault((str(r[COL["aggregate_type"]]), str(r[COL["aggregate_id"]])), []).append(int(r[COL["version"]]))
            break
        except (ValueError, TypeError, IndexError, KeyError):
            start = data.find(b"[[", start + 1)
    return [AffectedAggregate(aggregate_type=t, aggregate_id=i, versions=v, evidence="damaged bytes (unverified)")
            for (t, i), v in sorted(out.items())]


def _note_version_gaps(layout: StoreLayout, p: int, ranges: list[LostRange]) -> None:
    """Aggregates whose surviving versions skip across a lost range: certainly affected."""
    from es_actors.storage.local.reader import read_partition

    try:
        table = read_partition(layout, p).select(["aggregate_type", "aggregate_id", "version", "position"])
    except EsActorsError:
        return  # the report still lists the positions; the partition will not open until it reads
    last: dict[tuple[str, str], int] = {}
    gaps: dict[tuple[str, str], list[int]] = {}
    for t, i, v, _pos in zip(*(table.column(c).to_pylist() for c in table.column_names)):
        prev = last.get((t, i), 0)
        if v != prev + 1:
            gaps.setdefault((t, i), []).extend(range(prev + 1, v))
        last[(t, i)] = v
    if not gaps:
        return
    all_ranges = LostRanges.load(layout.root).ranges
    for r in all_ranges:
        if any(r.partition == x.partition and r.first == x.first for x in ranges):
            known = {(a.aggregate_type, a.aggregate_id) for a in r.aggregates if a.evidence == "version gap"}
            for (t, i), versions in sorted(gaps.items()):
                if (t, i) not in known:
                    r.aggregates.append(AffectedAggregate(aggregate_type=t, aggregate_id=i, versions=versions,
                                                          evidence="version gap"))
    write_lost_ranges(layout.root, all_ranges)
    for x in ranges:
        for r in all_ranges:
            if r.partition == x.partition and r.first == x.first:
                x.aggregates = r.aggregates


def accept_loss(root: str | os.PathLike[str], principal: str, reason: str, partition: int | None = None) -> list[LostRange]:
    """Record an operator's acceptance of every unaccepted lost range (of one partition, if given)."""
    if not principal.strip() or not reason.strip():
        raise EsActorsError("accepting a loss needs a principal and a reason (they are recorded)")
    layout = StoreLayout.local(root, "accepting a loss (lost-ranges.json)")
    store_descriptor(layout)
    ranges = LostRanges.load(layout.root).ranges
    changed = []
    for r in ranges:
        if r.accepted is None and (partition is None or r.partition == partition):
            r.accepted = Acceptance(accepted_at=now_text(), principal=principal, reason=reason)
            changed.append(r)
    if changed:
        write_lost_ranges(layout.root, ranges)
    return changed

