"""The read side of the stream index: which runs are valid now, and one aggregate's rows from them.

Validity is checked, never assumed (ADR-015): a run is used only if it opens, its metadata has
this format, this store's id and this partition, its key columns pass their CRC (once per
process per file identity), and every source segment it names is in the current generation
with that name and size (:mod:`.validity`, which the owner asks too). The runs used tile
positions 1..covered with no gap or overlap (a gap only where a repair recorded a loss). Every
row a lookup returns is checked against the aggregate, the versions asked for and the run's
positions, and the blocks of rows it returns pass their CRC-32 (once per process per block); a
run that fails a check at lookup is dropped and its positions are read from the segments instead.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from itertools import compress, islice
from operator import itemgetter, lt
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from es_actors.codecs.rows import ARROW_SCHEMA, COL, INT64_MAX, table_to_rows
from es_actors.storage.layout import StoreLayout
from es_actors.storage.lost_ranges import LostRanges
from es_actors.storage.local.range_reads import aggregate_in_segments
from es_actors.storage.local.segments import Segment
from es_actors.storage.local.stream_index import row_cache, runs as run_format
from es_actors.storage.local.stream_index.runs import OpenRun, RunInvalid, open_run, parse_run_name
from es_actors.storage.local.stream_index.validity import tile, why_invalid
from es_actors.storage.local.stat_cache import UnchangedCache

log = logging.getLogger(__name__)
_VER, _POS, _TYPE, _ID = COL["version"], COL["position"], COL["aggregate_type"], COL["aggregate_id"]
_version_of = itemgetter(_VER)


def ascending_versions(rows: list[tuple[Any, ...]]) -> bool:
    """Whether the rows' versions strictly ascend (C-level loops: reads check this per call)."""
    versions = list(map(_version_of, rows))
    return all(map(lt, versions, islice(versions, 1, None)))

# Bounds of the per-process run cache: a run stays memory-mapped while cached, which pins its disk
# space even after the file is deleted (a merge, a store removed), so the cache is an LRU over index
# directories holding at most this many directories and (but for the one just read) this many bytes
# of mapped runs. A directory evicted is opened again (key CRC checked again) by its next read.
MAX_DIRECTORIES = 256
MAX_MAPPED_BYTES = 32 << 30

_Entry = tuple[tuple[int, int, int, int], OpenRun | str]  # (file identity, the run or why it is invalid)


class _Dir:
    """One index directory's cached runs (name -> entry) and the bytes of those mapped."""

    __slots__ = ("entries", "mapped", "_runs")

    def __init__(self, entries: dict[str, _Entry]) -> None:
        self.entries = entries
        self.mapped = sum(e[1].size for e in entries.values() if not isinstance(e[1], str))
        self._runs: dict[str, OpenRun | str] | None = None

    def runs(self) -> dict[str, OpenRun | str]:
        """name -> run or why it is invalid (a copy: callers may change it)."""
        if self._runs is None:
            self._runs = {name: entry for name, (_ident, entry) in self.entries.items()}
        return dict(self._runs)


# Per process, least recently read first: directory -> its runs opened and checked, by identity.
_cache: OrderedDict[Path, _Dir] = OrderedDict()
_mapped_bytes = 0  # sum of _Dir.mapped over _cache
_store_ids: dict[Path, tuple[tuple[int, int, int, int], str]] = {}  # store.json -> (its identity, store_id)
_lock = threading.Lock()


def _forget(directory: Path) -> None:
    """Drop a directory's runs from the cache (under _lock): their maps close once no view holds them."""
    global _mapped_bytes
    gone = _cache.pop(directory, None)
    if gone is not None:
        _mapped_bytes -= gone.mapped


def _keep(directory: Path, entries: dict[str, _Entry]) -> None:
    """Cache a directory's runs as the most recently read; evict the least recently read others
    past MAX_DIRECTORIES or MAX_MAPPED_BYTES (under _lock)."""
    global _mapped_bytes
    _forget(directory)
    if not _cache:
        _mapped_bytes = 0  # (a test may clear _cache as a fresh process would have it)
    d = _cache[directory] = _Dir(entries)
    _mapped_bytes += d.mapped
    while len(_cache) > 1 and (len(_cache) > MAX_DIRECTORIES or _mapped_bytes > MAX_MAPPED_BYTES):
        _forget(next(iter(_cache)))


def release(root: Path) -> None:
    """Unmap every cached run of the store at ``root`` (Store.close): views still in use keep
    theirs until they finish; a later read opens the runs again."""
    roots = {str(root), os.path.realpath(root)}
    with _lock:
        for directory in list(_cache):
            store_root = str(directory.parent.parent)
            if store_root in roots or os.path.realpath(store_root) in roots:
                _forget(directory)
        for path in [p for p in _store_ids if str(p.parent) in roots or os.path.realpath(p.parent) in roots]:
            del _store_ids[path]
    row_cache.release(roots)


def cached_runs() -> tuple[int, int]:
    """(directories, bytes of runs) this process holds mapped in the cache (tests, stats)."""
    with _lock:
        return len(_cache), _mapped_bytes


def index_dir(layout: StoreLayout, partition: int) -> Path:
    return layout.root / "index" / f"p{partition:04d}"


_listings: UnchangedCache[list[tuple[str, str]]] = UnchangedCache(4096)


def _run_names(directory: Path) -> list[tuple[str, str]]:
    """(name, path) of the run files in ``directory``, reusing this process's last listing while the
    directory is unchanged (runs are written by rename and deleted by merges: both change its mtime;
    stat_cache's rule). OSError: no such directory."""
    key = str(directory)
    st = os.stat(key)
    return _listings.get(key, st, lambda: [(n, os.path.join(key, n)) for n in os.listdir(key)
                                           if parse_run_name(n) is not None])


def load_runs(directory: Path) -> dict[str, OpenRun | str]:
    """Every run file in ``directory``: opened and checked (cached by identity: one stat per run per
    call), or why it is not usable. Entries of runs no longer listed leave the cache (their maps close)."""
    try:
        names = _run_names(directory)
    except OSError:  # no index (yet), or not a directory we can list (gone): every position reads from the log
        with _lock:
            _forget(directory)  # a deleted store's runs: unmapped, their disk space freed
        return {}
    with _lock:
        hit_dir = _cache.get(directory)
    old = hit_dir.entries if hit_dir is not None else {}
    same = len(old) == len(names)  # every run listed is cached with the identity it has now
    new: dict[str, _Entry] = {}
    for name, full in names:
        try:
            st = os.stat(full)
        except FileNotFoundError:
            same = False
            continue  # deleted by a merge since the listing: it is not part of the tiling now
        ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        hit = old.get(name)
        if hit is not None and hit[0] == ident:
            new[name] = hit
            continue
        same = False
        try:
            new[name] = (ident, open_run(directory / name))
        except FileNotFoundError:
            continue
        except RunInvalid as exc:
            new[name] = (ident, str(exc))
    with _lock:
        if same and hit_dir is not None and _cache.get(directory) is hit_dir:
            _cache.move_to_end(directory)  # unchanged: no new entry to build
            return hit_dir.runs()
        _keep(directory, new)
    return {name: entry for name, (_ident, entry) in new.items()}


def invalidate(run: OpenRun, why: str) -> None:
    """Mark a run found wrong at lookup, so every later view skips it until it is rewritten."""
    log.warning("stream index: %s is not used: %s", run.path, why)
    global _mapped_bytes
    with _lock:
        d = _cache.get(run.path.parent)
        if d is not None and run.path.name in d.entries:
            if not isinstance(d.entries[run.path.name][1], str):
                d.mapped -= run.size
                _mapped_bytes -= run.size
            d.entries[run.path.name] = (run.ident, why)
            d._runs = None


class IndexView:
    """The valid tiling at one moment: positions 1..covered answered by runs."""

    def __init__(self, runs: list[OpenRun], segments: list[Segment], partition: int) -> None:
        self.runs = runs
        self.segments = segments
        self.partition = partition
        self.covered = runs[-1].meta.last if runs else 0
        self.files: list[Path] = [r.path for r in runs]
        self._probes = 0  # bytes the lookups' binary searches read
        self._slices_taken: list[tuple[OpenRun, int, int]] = []  # (run, a, b) of each slice a lookup read
        self.bytes_verified = 0  # bytes of the blocks CRC-checked for the first time in this process (cost tests)

    @property
    def bytes_touched(self) -> int:
        """Bytes of the runs the lookups of this view read: probes + slices (cost tests; counted
        when asked, not per lookup)."""
        return self._probes + sum(run.slice_bytes(a, b) for run, a, b in self._slices_taken)

    def aggregate(
        self, aggregate_type: str, aggregate_id: str, first_version: int = 1, last_version: int | None = None
    ) -> pa.Table:
        """Rows of one aggregate in positions 1..covered with versions first..last (ARROW_SCHEMA
        columns, sorted by version). Touches only the slices that hold them."""
        batches = self._batches(aggregate_type, aggregate_id, first_version, last_version)
        if not batches:
            return ARROW_SCHEMA.empty_table()
        table = pa.Table.from_batches(batches, schema=ARROW_SCHEMA)
        if len(batches) > 1:
            versions = table.column("version").to_numpy()
            if not bool(np.all(versions[1:] > versions[:-1])):
                table = table.take(pc.sort_indices(table, sort_keys=[("version", "ascending")]))
        return table

    def aggregate_rows(
        self, aggregate_type: str, aggregate_id: str, first_version: int = 1, last_version: int | None = None
    ) -> list[tuple[Any, ...]]:
        """:meth:`aggregate` as row tuples (``table_to_rows``), no table built: what a read of a few
        rows wants. A slice checked before in this process, of the same run file identity, comes
        from :mod:`row_cache` (the bytes it covers are counted as touched all the same)."""
        rows: list[tuple[Any, ...]] = []
        for run, a, b, hi_version in self._slices(aggregate_type, aggregate_id, first_version, last_version):
            key = (str(run.path), run.ident, a, b, aggregate_type, aggregate_id, first_version, hi_version)
            got = row_cache.get(key)
            if got is None:
                try:
                    got = self._checked_rows(run, a, b, aggregate_type, aggregate_id, first_version, hi_version)
                except (RunInvalid, pa.ArrowException, ValueError) as exc:  # ValueError: e.g. invalid UTF-8
                    invalidate(run, str(exc))
                    rows.extend(table_to_rows(self._from_segments(run, aggregate_type, aggregate_id, first_version,
                                                                  hi_version)))
                    continue
                row_cache.put(key, got)
            rows.extend(got)
        if not ascending_versions(rows):
            rows.sort(key=_version_of)
        return rows

    def _checked_rows(self, run: OpenRun, a: int, b: int, aggregate_type: str, aggregate_id: str,
                      first_version: int, last_version: int) -> list[tuple[Any, ...]]:
        """:meth:`_checked` as row tuples: each column converted once, the checks run on those lists
        (C-level count/min/max), then zipped."""
        self.bytes_verified += run.verify_rows(a, b)  # CRC and validate(full=True) of the blocks holding them
        cols = run.column_lists(a, b)
        n = b - a
        types, ids = cols[_TYPE], cols[_ID]
        if types.count(aggregate_type) != n or ids.count(aggregate_id) != n:
            # Another aggregate with the same hash, or damage to type/id: recompute to tell which.
            hashes = run.hashes[a:b].tolist()
            mine = [t == aggregate_type and i == aggregate_id for t, i in zip(types, ids)]
            for k, ok in enumerate(mine):
                if not ok and run_format.stream_hash(types[k], ids[k]) != hashes[k]:
                    raise RunInvalid(f"{run.path.name}: a row's aggregate does not match its stream_hash (damaged)")
            cols = [list(compress(c, mine)) for c in cols]
        pos, ver = cols[_POS], cols[_VER]
        if pos and not (run.meta.first <= min(pos) and max(pos) <= run.meta.last
                        and first_version <= min(ver) and max(ver) <= last_version):
            raise RunInvalid(f"{run.path.name}: rows outside the run's positions or the versions asked for")
        return list(zip(*cols))

    def _batches(self, aggregate_type: str, aggregate_id: str, first_version: int,
                 last_version: int | None) -> list[pa.RecordBatch]:
        """The checked slices of the runs holding the aggregate's rows, in run (position) order."""
        batches: list[pa.RecordBatch] = []
        for run, a, b, hi_version in self._slices(aggregate_type, aggregate_id, first_version, last_version):
            try:
                batches.append(self._checked(run, a, b, aggregate_type, aggregate_id, first_version, hi_version))
            except (RunInvalid, pa.ArrowException, ValueError) as exc:  # ValueError: e.g. invalid UTF-8
                invalidate(run, str(exc))
                batches.extend(self._from_segments(run, aggregate_type, aggregate_id, first_version, hi_version)
                               .to_batches())
        return batches

    def _slices(self, aggregate_type: str, aggregate_id: str, first_version: int,
                last_version: int | None) -> Iterator[tuple[OpenRun, int, int, int]]:
        """(run, a, b, last version) of each run's rows a..b-1 that may be the aggregate's in the
        versions asked for (by its hash; checked by the caller), in run (position) order."""
        h = np.uint64(run_format.stream_hash(aggregate_type, aggregate_id))
        hi_version = INT64_MAX if last_version is None else last_version
        for run in self.runs:
            hashes = run.hashes
            self._probes += 16 * max(1, len(hashes)).bit_length()  # two binary searches' probes
            lo = int(hashes.searchsorted(h, side="left"))
            if lo == len(hashes) or hashes[lo] != h:
                continue
            hi = int(hashes.searchsorted(h, side="right"))
            vs = run.versions  # sorted within one hash (collisions share the order): search only a bound that cuts
            a = lo if int(vs[lo]) >= first_version else lo + int(vs[lo:hi].searchsorted(first_version, side="left"))
            b = hi if int(vs[hi - 1]) <= hi_version else lo + int(vs[lo:hi].searchsorted(hi_version, side="right"))
            if a >= b:
                continue
            self._slices_taken.append((run, a, b))
            yield run, a, b, hi_version

    def _checked(self, run: OpenRun, a: int, b: int, aggregate_type: str, aggregate_id: str,
                 first_version: int, last_version: int) -> pa.RecordBatch:
        """Rows a..b-1 of the run that are the aggregate's; RunInvalid if a row is not what the
        run's order says (damage the key CRC does not cover) or a block holding them fails its CRC."""
        self.bytes_verified += run.verify_rows(a, b)  # CRC, then validate(full=True): offsets in bounds, UTF-8 valid
        part = run.rows.slice(a, b - a)
        types = part.column(2).to_pylist()
        ids = part.column(3).to_pylist()
        mine = [t == aggregate_type and i == aggregate_id for t, i in zip(types, ids)]
        if not all(mine):
            # Another aggregate with the same hash, or damage to type/id: recompute to tell which.
            hashes = run.hashes[a:b].tolist()
            for k, ok in enumerate(mine):
                if not ok and run_format.stream_hash(types[k], ids[k]) != hashes[k]:
                    raise RunInvalid(f"{run.path.name}: a row's aggregate does not match its stream_hash (damaged)")
            part = part.filter(pa.array(mine))
            pos, ver = part.column(1).to_pylist(), part.column(4).to_pylist()
        else:
            pos, ver = run.positions[a:b].tolist(), run.versions[a:b].tolist()
        first, last = run.meta.first, run.meta.last
        if not all(first <= p <= last for p in pos) or not all(first_version <= v <= last_version for v in ver):
            raise RunInvalid(f"{run.path.name}: rows outside the run's positions or the versions asked for")
        return part

    def _from_segments(self, run: OpenRun, aggregate_type: str, aggregate_id: str,
                       first_version: int, last_version: int) -> pa.Table:
        """The run's positions read from the log instead (a run found wrong at lookup)."""
        first, last = run.meta.first, run.meta.last
        segments = [seg for seg in self.segments if seg.last >= first and seg.first <= last]
        return aggregate_in_segments(segments, aggregate_type, aggregate_id, first_version, last_version,
                                     after=first - 1, upto=last)


class StreamIndex:
    """Read side of one partition's stream index; cheap to construct, caches per process."""

    def __init__(self, layout: StoreLayout, partition: int) -> None:
        self.layout = layout
        self.partition = partition
        self.dir = index_dir(layout, partition)
        self._descriptor = layout.descriptor_path

    @property
    def store_id(self) -> str:
        """This store's id (store.json), parsed once per process per store.json identity."""
        path = self._descriptor
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return ""
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        hit = _store_ids.get(path)
        if hit is None or hit[0] != key:
            desc = self.layout.read_descriptor()
            hit = _store_ids[path] = (key, desc.store_id if desc is not None else "")
        return hit[1]

    def view(self, segments: list[Segment], lost: LostRanges) -> IndexView:
        """The valid tiling for this generation's ``segments`` now (FileNotFoundError: a file moved
        under it; the caller's read_consistently reads again)."""
        current = {s.path.name: s for s in segments}
        store_id = self.store_id
        valid = []
        for entry in load_runs(self.dir).values():
            if isinstance(entry, str):
                continue
            if why_invalid(entry, store_id, self.partition, current) is None:
                valid.append(entry)
        return IndexView(tile(valid, lost, self.partition), segments, self.partition)
