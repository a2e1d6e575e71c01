"""Where a partition's log stands, as one read attempt sees it: the first step of every reader.

The order is what makes a read consistent (ADR-005): the durable mark first (everything up to it
is in the files listed after it), then the tail files, then the current generation's segments. A
seal or compaction between these steps shows later as a gap or a vanished file, and the caller's
:func:`~es_actors.storage.consistent.read_consistently` reads again.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

from es_actors.storage.consistent import Moved
from es_actors.storage.layout import StoreLayout
from es_actors.storage.local.durable_mark import DurableMark, KeysMark
from es_actors.storage.local.segments import (
    CURRENT,
    Segment,
    list_segments,
    list_segments_cached,
    resolve_current,
)
from es_actors.storage.local.stat_cache import UnchangedCache
from es_actors.storage.local.wal import high_water, list_tail_files, list_tail_files_cached
from es_actors.storage.lost_ranges import FILE_NAME as LOST_FILE, LostRanges


@dataclass(frozen=True, slots=True)
class LogPlace:
    durable: int | None  # the writer's durable mark, read before anything else
    tails: list[tuple[int, Path]]  # tail files as (first position, path)
    segments: list[Segment]  # the current generation's segments, in position order
    keys: KeysMark | None = None  # the newest tail file's key file, as published with the mark

    @property
    def sealed_last(self) -> int:
        return self.segments[-1].last if self.segments else 0


_lost_cache: UnchangedCache[LostRanges] = UnchangedCache(1024)
_lost_paths: dict[Path, str] = {}  # store root -> its lost-ranges.json path


def lost_ranges(root: Path) -> LostRanges:
    """``LostRanges.load(root)``, reusing this process's parse while the file is unchanged (a stat
    instead of a read and a pydantic parse per read; a repair replaces it by a rename: new inode)."""
    path = _lost_paths.get(root)
    if path is None:
        if len(_lost_paths) > 1024:
            _lost_paths.clear()
        path = _lost_paths[root] = os.path.join(root, LOST_FILE)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return LostRanges()  # none recorded (what load answers for a missing file)
    return _lost_cache.get(path, st, lambda: LostRanges.load(root))


class _Dirs:
    """A partition's directories and the files a read looks at, as paths and strings, built once
    per process (joining paths costs per read too)."""

    __slots__ = ("tail", "log", "durable", "current", "targets")

    def __init__(self, layout: StoreLayout, partition: int) -> None:
        self.tail, self.log = layout.tail_dir(partition), layout.log_dir(partition)
        self.durable = os.path.join(self.tail, DurableMark.NAME)
        self.current = os.path.join(self.log, CURRENT)
        self.targets: dict[str, Path] = {}  # what ``current`` pointed at -> that generation's path

    def generation(self) -> Path | None:
        """:func:`resolve_current` of the log directory (one readlink), the Path built once per target."""
        try:
            target = os.readlink(self.current)
        except OSError as exc:  # missing, or not a symlink (EINVAL): as resolve_current answers
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EINVAL, errno.ELOOP):
                return None
            raise
        gen = self.targets.get(target)
        if gen is None:
            if len(self.targets) > 64:
                self.targets.clear()
            gen = self.targets[target] = self.log / target
        return gen


_dir_cache: dict[tuple[str, int], _Dirs] = {}


def _dirs(layout: StoreLayout, partition: int) -> _Dirs:
    """A partition's :class:`_Dirs`, one per process."""
    key = (str(layout.root), partition)
    hit = _dir_cache.get(key)
    if hit is None:
        if len(_dir_cache) > 4096:
            _dir_cache.clear()
        hit = _dir_cache[key] = _Dirs(layout, partition)
    return hit


def log_place(layout: StoreLayout, partition: int, lost: LostRanges, cached: bool = False) -> LogPlace:
    """The durable mark, the tail files and the sealed segments, in that order. ``cached`` reuses this
    process's listing of an unchanged tail directory and parse of an unchanged generation directory
    (reads that run per request). Raises Moved if
    ``current`` is missing while the tail shows positions were written."""
    d = _dirs(layout, partition)
    durable, keys = DurableMark.read_with_keys_at(d.durable)
    tails = list_tail_files_cached(d.tail) if cached else list_tail_files(d.tail)
    gen = d.generation() if cached else resolve_current(d.log)
    if gen is None and (durable or tails):
        raise Moved(f"{d.log / CURRENT} is missing although the tail shows positions were written")
    listing = list_segments_cached if cached else list_segments
    return LogPlace(durable, tails, listing(gen, lost, partition) if gen is not None else [], keys)


def require_held(layout: StoreLayout, partition: int, lost: LostRanges, durable: int | None,
                 tails: list[tuple[int, Path]], held_to: int, upto: int | None = None) -> None:
    """Every position written (the durable mark, the tail files' names) up to ``upto`` is held by a
    file listed: positions after ``held_to`` that were written but are in no file raise
    ``Moved(missing=True)``, a race if a later attempt finds them, damage if none does."""
    used = high_water(durable, tails)
    if upto is not None:
        used = min(used, upto)
    if used > held_to and not lost.covers(partition, held_to + 1, used):
        raise Moved(f"partition {partition}: positions {held_to + 1}..{used} were written (durable mark, tail file "
                    f"names in {layout.tail_dir(partition)}) but no file holds them: tail files or segments are "
                    "missing", missing=True)

