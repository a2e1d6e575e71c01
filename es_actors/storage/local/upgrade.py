"""``es-actors upgrade``: format 1 -> 2, in place, with every writer stopped (ADR-009).

Format-1 tail files are rewritten as format-2 files (temp, fsync, rename); segments get their
CRC-32 in their names through a new generation (hard links, one ``current`` swap);
``store.json`` says 2 last, so a crash part-way leaves a store that is still format 1 and can
be upgraded again."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from es_actors.errors import StoreCorrupted
from es_actors.codecs.rows import ARROW_SCHEMA
from es_actors.storage.guard import storage_boundary
from es_actors.storage.layout import FORMAT_VERSION, StoreLayout
from es_actors.storage.lost_ranges import (
    LostRanges,
)
from es_actors.storage.local.segments import (
    SegmentSet,
    file_crc32,
    next_generation_dir,
    point_current_at,
    resolve_current,
    segment_name,
)
from es_actors.storage.local.wal import (
    damage_error,
    list_tail_files,
    scan_tail_file,
)
from es_actors.storage.files import fsync_dir, replace_durably


from es_actors.storage.local.maintenance import all_partitions_locked, store_descriptor, tail_file_bytes


class UpgradeReport(BaseModel):
    store: str
    from_version: int
    to_version: int
    tail_files_rewritten: int = 0
    torn_bytes_dropped: int = 0
    segments_renamed: int = 0


@storage_boundary("upgrading the store")
def upgrade_store(root: str | os.PathLike[str]) -> UpgradeReport:
    """Upgrade a store to the current format in place; a no-op on a current store."""
    layout = StoreLayout.local(root, "format upgrades")
    desc = store_descriptor(layout)
    report = UpgradeReport(store=str(layout.root), from_version=desc.format_version, to_version=FORMAT_VERSION)
    if desc.format_version >= FORMAT_VERSION:
        return report
    with all_partitions_locked(layout, desc.partitions):
        for p in range(desc.partitions):
            files = list_tail_files(layout.tail_dir(p))
            scans = [scan_tail_file(path, i == len(files) - 1, first) for i, (first, path) in enumerate(files)]
            damaged = [d for s in scans for d in s.damage]
            if damaged:
                raise damage_error(damaged, f"partition {p}'s write-ahead tail (nothing was upgraded)")
            for (first, _path), scan in zip(files, scans):
                if scan.version == 2:
                    continue  # rewritten by an earlier, interrupted upgrade
                replace_durably(scan.path, tail_file_bytes(first, scan.frames))
                report.tail_files_rewritten += 1
                report.torn_bytes_dropped += scan.torn_bytes
            if files:
                fsync_dir(layout.tail_dir(p))
            report.segments_renamed += _name_segments_with_crc(layout, p)
        layout.write_descriptor(desc.model_copy(update={"format_version": FORMAT_VERSION}))
    return report


def _name_segments_with_crc(layout: StoreLayout, partition: int) -> int:
    """A new generation whose segment names carry each file's CRC-32 (hard links, then a swap)."""
    gen = resolve_current(layout.log_dir(partition))
    if gen is None:
        return 0
    segs = SegmentSet(layout.log_dir(partition), lost=LostRanges.load(layout.root), partition=partition)
    if all(s.crc is not None for s in segs.segments):
        return 0
    new_gen = next_generation_dir(layout.log_dir(partition), gen)
    renamed = 0
    for s in segs.segments:
        try:
            pq.read_table(s.path, schema=ARROW_SCHEMA)  # readable as a whole before it is vouched for
        except (pa.ArrowException, OSError) as exc:
            raise StoreCorrupted(f"{s.path}: sealed segment cannot be read ({exc}); nothing was upgraded here") from None
        crc = s.crc if s.crc is not None else file_crc32(s.path)
        os.link(s.path, new_gen / segment_name(s.first, s.last, crc))
        renamed += s.crc is None
    fsync_dir(new_gen)
    point_current_at(layout.log_dir(partition), new_gen)
    os.utime(gen)
    return renamed


