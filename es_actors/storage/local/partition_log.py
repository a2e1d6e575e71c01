"""The owner's handle on one partition's log: fenced, recovered, appended, sealed, compacted.

Exactly one process may hold it (an exclusive ``flock`` on the tail directory's ``LOCK``
file; the kernel drops it when the process dies). Appends go to the write-ahead tail and
are durable when :meth:`append` returns. A background thread seals closed tail files into
Parquet segments and compacts small segments; rows are always either in memory (unsealed)
or in a published segment, so :meth:`read_positions` never misses one.

Over 400 lines on purpose: recovery, group commit, the owner's reads and the sealer share
one lock and one in-memory view of unsealed rows; split, that state would be shared across
modules. It satisfies ``storage.api.OwnedPartitionLog`` directly (the hot path has no adapter).
"""

from __future__ import annotations

import bisect
import fcntl
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from es_actors.config import StoreConfig
from es_actors.errors import StorageError, StoreCorrupted, WriterFenced
from es_actors.codecs.rows import ARROW_SCHEMA, COL, table_to_rows
from es_actors.storage.consistent import DEFAULT_ATTEMPTS, read_consistently
from es_actors.storage.guard import storage_boundary
from es_actors.storage.layout import StoreLayout
from es_actors.storage.lost_ranges import LostRanges
from es_actors.storage.local.segments import SegmentSet, verify_segments
from es_actors.storage.local.durable_mark import DurableMark
from es_actors.storage.local import tail_keys
from es_actors.storage.local.stream_index.upkeep import IndexUpkeep
from es_actors.storage.local.wal import (
    TailWriter,
    damage_error,
    first_position_of,
    list_tail_files,
    scan_tail_file,
    tail_file_name,
    tail_high_water,
)
from es_actors.storage.files import fsync_dir, fsync_file


log = logging.getLogger(__name__)
Row = tuple[Any, ...]


def acquire_partition_lock(tail_dir: Path, timeout_s: float) -> int:
    """Exclusive lock for the single writer; WriterFenced if another process keeps it."""
    tail_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(tail_dir / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise WriterFenced(
                    f"{tail_dir}: another process already writes this partition; open the store read-only, "
                    "or close the other store first"
                ) from None
            time.sleep(0.05)


class PartitionLog:
    @storage_boundary("opening a partition's log")
    def __init__(self, layout: StoreLayout, partition: int, config: StoreConfig) -> None:
        self.partition = partition
        self.config = config
        self.tail_dir = layout.tail_dir(partition)
        self._lock_fd = acquire_partition_lock(self.tail_dir, config.lock_timeout_s)
        self._mutex = threading.Lock()
        self._wake = threading.Condition(self._mutex)
        self._upkeep = threading.Lock()  # one seal/compaction at a time (the sealer's, or compact()'s)
        self.seal_error: str | None = None
        self._sealing: deque[tuple[Path, list[Row]]] = deque()
        self._writer_frames_before = 0
        self._pf_cache: dict[Path, pq.ParquetFile] = {}
        self._mark: DurableMark | None = None
        self._failed: str | None = None
        self.stream_index = IndexUpkeep(layout, partition, config)  # the stream index, kept by the sealer (ADR-015)
        try:
            self.lost = LostRanges.load(layout.root)
            self.segments = SegmentSet(layout.log_dir(partition), config.gc_grace_s, self.lost, partition)
            verify_segments(self.segments.segments)  # damage anywhere is refused before anything is written
            self._recover()
            self._mark = DurableMark(self.tail_dir)
            self._mark.publish(self.next_position - 1, self._writer.first_position, self._writer.keys_published)
        except BaseException:
            if self._mark is not None:
                self._mark.close()
            os.close(self._lock_fd)  # e.g. StoreCorrupted: this process will not own the partition
            self._lock_fd = -1
            raise
        self._stopping = False
        self._sealer = threading.Thread(target=self._seal_loop, name=f"sealer-p{partition}", daemon=True)
        self._sealer.start()

    # -- recovery -------------------------------------------------------------------------

    def _recover(self) -> None:
        """Read every tail file; refuse damage or missing positions, cut only a torn end of the
        newest file, adopt the rest.

        Nothing is modified until every check has passed: a damaged store is left byte for
        byte as it was (ADR-009).
        """
        sealed_last = self.segments.last_position
        files = list_tail_files(self.tail_dir)
        scans = [scan_tail_file(path, i == len(files) - 1, first) for i, (first, path) in enumerate(files)]
        damage = [d for scan in scans for d in scan.damage]
        if damage:
            raise damage_error(damage, f"partition {self.partition}'s write-ahead tail")
        for scan in scans:
            if scan.version != 2 and scan.size:
                raise StoreCorrupted(f"{scan.path}: a format-1 tail file in a format-2 store; run `es-actors upgrade`")
        torn = scans[-1] if scans and scans[-1].torn_bytes else None
        if torn is not None:
            rows = torn.rows
            durable = DurableMark.read(self.tail_dir)
            last_kept = rows[-1][COL["position"]] if rows else (first_position_of(torn.path) or 1) - 1
            if durable is not None and durable > max(last_kept, sealed_last):
                raise StoreCorrupted(
                    f"{torn.path} at byte {torn.valid_end}: the end fails its checks, but positions up to "
                    f"{durable} were published as durable (DURABLE): this is damage, not a torn write. "
                    "Every byte was left as it was; run `es-actors repair --store <path>`"
                )
        unsealed: list[tuple[Path, list[Row]]] = []
        already_sealed: list[Path] = []
        for scan in scans:
            rows = scan.rows
            if rows and rows[-1][COL["position"]] <= sealed_last:
                already_sealed.append(scan.path)  # sealed before a crash, not yet deleted
                continue
            if rows and rows[0][COL["position"]] <= sealed_last:
                raise StoreCorrupted(f"{scan.path} overlaps sealed segments (last sealed position {sealed_last})")
            unsealed.append((scan.path, rows))
        expected = sealed_last + 1
        for path, rows in unsealed:
            gap = self.lost.first_gap(self.partition, expected - 1, (r[COL["position"]] for r in rows))
            if gap is not None:
                raise StoreCorrupted(f"{path}: position {gap[1]} where {gap[0]} was expected")
            if rows:
                expected = rows[-1][COL["position"]] + 1
        used = tail_high_water(self.tail_dir)
        if used >= expected and not self.lost.covers(self.partition, expected, used):
            raise StoreCorrupted(
                f"partition {self.partition}: positions {expected}..{used} were written (durable mark, tail file "
                f"names in {self.tail_dir}) but no file holds them: tail files or segments are missing. Nothing "
                "was changed; restore them, or run `es-actors repair --store <path>` to record the loss"
            )
        # Every check passed: now cut the torn end, drop tail files already sealed, sync what we adopt.
        if torn is not None:
            log.warning("partition %d: cutting %d torn bytes from %s", self.partition, torn.torn_bytes, torn.path)
            with open(torn.path, "r+b") as f:
                f.truncate(torn.valid_end)
                os.fsync(f.fileno())
        for path in already_sealed:
            path.unlink()
            tail_keys.remove(path)
        for path, _rows in unsealed:
            fsync_file(path)  # adopted frames may be in the page cache only (a failed sync before a crash)
        fsync_dir(self.tail_dir)
        frames = {scan.path: scan.frames for scan in scans}
        lost_end = max((r.last for r in self.lost.of(self.partition)), default=0)
        self.next_position = max(expected, lost_end + 1)  # never hand out a position that may have been used
        # Every closed tail file waits for sealing; the newest one stays open for appends if the
        # log continues it.
        if unsealed and unsealed[-1][1] and unsealed[-1][1][-1][COL["position"]] == self.next_position - 1:
            *closed, (last_path, last_rows) = unsealed
            self._sealing.extend((p, r) for p, r in closed if r)
            self._current_rows: list[Row] = list(last_rows)
            self._writer = TailWriter(self.tail_dir, last_rows[0][COL["position"]], frames[last_path])
        else:
            closed = unsealed
            self._sealing.extend((p, r) for p, r in unsealed if r)
            for p, r in unsealed:
                if not r and p.name != tail_file_name(self.next_position):
                    p.unlink()
                    tail_keys.remove(p)
            self._current_rows = []
            self._writer = TailWriter(self.tail_dir, self.next_position)
        # Key files afresh (derived data: one a crash left may hold records of a frame cut back just now)
        for p, r in closed:
            if r and p != self._writer.path:
                tail_keys.rebuild_closed(p, first_position_of(p) or 0, frames[p])
        tail_keys.remove_orphans(self.tail_dir)

    def durable_snapshot(self, attempts: int = DEFAULT_ATTEMPTS) -> tuple[pa.Table, list[Row]]:
        """Every durable row, consistent while the sealer runs: (sealed table, unsealed rows after it).

        Reading the segments and then ``unsealed_rows()`` is not: the sealer (already
        running, e.g. on tail files a crash left unsealed) may move a file's rows from memory
        into a segment between the two calls, and the rows would be missing from both. Here
        both sides are taken under one lock; the sealer publishes a segment before dropping
        its rows from memory, so rows seen in both places are kept once (from the segment).
        """
        def read_once() -> tuple[pa.Table, list[Row]]:
            with self._mutex:
                segments = list(self.segments.segments)
                unsealed = [r for _p, rows in self._sealing for r in rows] + list(self._current_rows)
            sealed_last = segments[-1].last if segments else 0
            table = (  # FileNotFoundError: compaction replaced (and gc removed) a segment meanwhile
                ds.dataset([str(s.path) for s in segments], schema=ARROW_SCHEMA, format="parquet").to_table()
                if segments
                else ARROW_SCHEMA.empty_table()
            )
            return table, [r for r in unsealed if r[COL["position"]] > sealed_last]

        return read_consistently(read_once, f"partition {self.partition}: a durable snapshot", attempts)

    def unsealed_rows(self) -> list[Row]:
        with self._mutex:
            return [r for _p, rows in self._sealing for r in rows] + list(self._current_rows)

    # -- writes ---------------------------------------------------------------------------

    @property
    def failed(self) -> str | None:
        """Why this owner must stop writing (a failed fdatasync), or None. Survives a rotation."""
        return self._failed or self._writer.failed

    @property
    def durable_writes(self) -> int:
        """Group-commit frames written (each one write + one fdatasync) since this owner started."""
        return self._writer_frames_before + self._writer.frames_written

    def append(self, rows: list[Row]) -> None:
        """Durably append rows whose positions continue the log. Raises StorageError, log intact."""
        if rows[0][COL["position"]] != self.next_position:
            raise StoreCorrupted(f"append at {rows[0][COL['position']]} does not continue {self.next_position}")
        if self._failed is not None:
            raise StorageError(f"partition {self.partition}: {self._failed}; this owner writes nothing more")
        try:
            self._writer.append(rows)  # after a failed fdatasync: raises now and on every later call
        except StorageError:
            self._failed = self._writer.failed
            raise
        with self._mutex:
            self._current_rows.extend(rows)
            self.next_position += len(rows)
        assert self._mark is not None
        self._mark.publish(self.next_position - 1, self._writer.first_position,  # readers may now see them
                           self._writer.keys_published)
        if len(self._current_rows) >= self.config.seal_rows:
            try:
                self.rotate()
            except OSError as exc:
                # The rows are durable: this append succeeded and must not raise. Rotation is
                # upkeep; keep appending to the current tail file and retry after the next append.
                self.seal_error = f"cannot start a new tail file: {exc}"
                log.error("partition %d: %s", self.partition, self.seal_error)

    def rotate(self) -> None:
        """Close the current tail file and hand it to the sealer."""
        if not self._current_rows or self.failed is not None:
            return  # after a failed fdatasync nothing more is written, not even a new tail file
        new_writer = TailWriter(self.tail_dir, self.next_position)
        with self._mutex:
            old = self._writer
            self._writer_frames_before += old.frames_written
            self._sealing.append((old.path, self._current_rows))
            self._writer, self._current_rows = new_writer, []
            self._wake.notify_all()
        old.close(rotated=True)

    @property
    def sealed_segment_count(self) -> int:
        return len(self.segments.segments)

    @property
    def unsealed_count(self) -> int:
        with self._mutex:
            return len(self._current_rows) + sum(len(r) for _p, r in self._sealing)

    # -- reads ----------------------------------------------------------------------------

    def read_positions(self, first: int, last: int) -> list[Row]:
        """Rows first..last, from memory if unsealed, else from the segments."""
        with self._mutex:
            mem = [r for _p, rows in self._sealing for r in rows] + self._current_rows
            segments = list(self.segments.segments)
        found = [r for r in mem if first <= r[COL["position"]] <= last]
        if len(found) == last - first + 1:
            return found
        paths = [str(s.path) for s in segments if s.last >= first and s.first <= last]
        table = ds.dataset(paths, schema=ARROW_SCHEMA, format="parquet").to_table(
            filter=(ds.field("position") >= first) & (ds.field("position") <= last)
        )
        return table_to_rows(table)

    def read_at(self, positions: "np.ndarray | Sequence[int]", columns: list[str]) -> dict[str, list[Any]]:
        """Selected columns of the rows at ``positions`` (ascending), in that order.

        Rows still in memory are found by offset; sealed ones by reading only the row groups
        that hold them. Used to rehydrate one aggregate without scanning its partition.
        """
        pos = np.asarray(positions, dtype=np.int64)

        def read_once() -> dict[str, list[Any]]:
            with self._mutex:
                chunks = [(rows[0][COL["position"]], rows) for _p, rows in self._sealing if rows]
                if self._current_rows:
                    chunks.append((self._current_rows[0][COL["position"]], self._current_rows))
                segments = list(self.segments.segments)
            mem_first = chunks[0][0] if chunks else self.next_position
            out: dict[str, list[Any]] = {c: [] for c in columns}
            sealed = pos[pos < mem_first]
            if len(sealed):  # FileNotFoundError: compaction swapped and collected a segment
                self._read_sealed(segments, sealed, columns, out)
            rest = pos[pos >= mem_first]
            if len(rest):
                idx = [COL[c] for c in columns]
                starts = [c[0] for c in chunks]
                for p in rest.tolist():
                    k = bisect.bisect_right(starts, p) - 1
                    row = chunks[k][1][p - chunks[k][0]]
                    for c, i in zip(columns, idx):
                        out[c].append(row[i])
            return out

        return read_consistently(read_once, f"partition {self.partition}: reading positions")

    def _read_sealed(self, segments: list[Any], pos: np.ndarray, columns: list[str], out: dict[str, list[Any]]) -> None:
        firsts = np.array([s.first for s in segments], dtype=np.int64)
        which = np.searchsorted(firsts, pos, side="right") - 1
        for k in np.unique(which).tolist():
            seg = segments[k]
            offsets = pos[which == k] - seg.first
            pf = self._parquet_file(seg.path)
            bounds = np.cumsum([0] + [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)])
            groups = np.unique(np.searchsorted(bounds, offsets, side="right") - 1).tolist()
            table = pf.read_row_groups(groups, columns=columns)
            take = offsets - bounds[groups[0]]
            if len(groups) > 1:  # row groups read back to back: map offsets into the concatenation
                base, starts = 0, {}
                for g in groups:
                    starts[g] = base - bounds[g]
                    base += bounds[g + 1] - bounds[g]
                rg = np.searchsorted(bounds, offsets, side="right") - 1
                take = offsets + np.array([starts[g] for g in rg.tolist()], dtype=np.int64)
            picked = table.take(pa.array(take))
            for c in columns:
                out[c].extend(picked.column(c).to_pylist())

    def _parquet_file(self, path: Path) -> pq.ParquetFile:
        cache = self._pf_cache
        pf = cache.get(path)
        if pf is None:
            if len(cache) > 256:
                cache.clear()
            pf = cache[path] = pq.ParquetFile(path)
        return pf

    def index_columns(self) -> pa.Table:
        """(aggregate_type, aggregate_id, version, position) of every durable row, in position order."""
        cols = ["aggregate_type", "aggregate_id", "version", "position"]

        def read_once() -> pa.Table:
            with self._mutex:
                segments = list(self.segments.segments)
                unsealed = [r for _p, rows in self._sealing for r in rows] + list(self._current_rows)
            sealed_last = segments[-1].last if segments else 0
            parts = [pq.read_table(s.path, columns=cols) for s in segments]  # FileNotFoundError: look again
            tail = [r for r in unsealed if r[COL["position"]] > sealed_last]
            if tail:
                parts.append(
                    pa.table({c: pa.array([r[COL[c]] for r in tail], ARROW_SCHEMA.field(c).type) for c in cols})
                )
            schema = pa.schema([ARROW_SCHEMA.field(c) for c in cols])
            return pa.concat_tables([p.cast(schema) for p in parts]) if parts else schema.empty_table()

        return read_consistently(read_once, f"partition {self.partition}: the index columns")

    # -- sealing and compaction -----------------------------------------------------------

    def _seal_loop(self) -> None:
        backoff = 0.1
        while True:
            with self._mutex:
                while not self._sealing and not self._stopping and not self.stream_index.ready():
                    self._wake.wait(self.stream_index.wait_s())
                if not self._sealing:
                    if self._stopping:
                        return
                    job = None
                else:
                    job = self._sealing[0]
            if job is None:
                with self._upkeep:
                    self.stream_index.reconcile(list(self.segments.segments), self.lost, self._index_yields)
                continue
            path, rows = job
            try:
                with self._upkeep:
                    seg = self.segments.seal(rows)
                    path.unlink(missing_ok=True)
                    tail_keys.remove(path)
                    fsync_dir(self.tail_dir)
                    with self._mutex:
                        self._sealing.popleft()
                        self._wake.notify_all()
                    self.stream_index.after_seal(seg, self._index_yields)
                    if self.segments.compact(self.config.compact_small_rows, self.config.compact_min_run):
                        self.stream_index.due = True
                    self.segments.collect_garbage()
                self.seal_error, backoff = None, 0.1
            except Exception as exc:  # keep the tail (it is durable) and try again later
                self.seal_error = f"{type(exc).__name__}: {exc}"
                log.error("partition %d: sealing failed, will retry: %s", self.partition, self.seal_error)
                with self._mutex:
                    if self._stopping:
                        return  # the tail files are durable: the next owner seals them
                    self._wake.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _index_yields(self) -> bool:
        """Index upkeep yields to sealing and to close: it resumes on the next idle turn."""
        return self._stopping or bool(self._sealing)

    def seal_all(self, timeout_s: float = 60.0) -> None:
        """Seal everything durable so far (a clean close); plain readers then see every event."""
        self.rotate()
        deadline = time.monotonic() + timeout_s
        with self._mutex:
            while self._sealing:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"partition {self.partition}: sealing did not finish: {self.seal_error}")
                self._wake.wait(left)

    def compact(self) -> int:
        """Merge runs of small segments now (the sealer also does after each seal); returns how many."""
        with self._upkeep:
            merged = self.segments.compact(self.config.compact_small_rows, self.config.compact_min_run)
            self.segments.collect_garbage()
            if merged:
                self.stream_index.due = True  # the sealer reconciles the index (runs naming merged segments)
        if merged:
            with self._mutex:
                self._wake.notify_all()
        return merged

    def close(self) -> None:
        with self._mutex:
            self._stopping = True
            self._wake.notify_all()
        # Wait for a seal or compaction in progress however long it takes: releasing the lock
        # while it still writes would let a new owner work on the same files.
        self._sealer.join()
        self._writer.close()
        if self._mark is not None:
            self._mark.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1
