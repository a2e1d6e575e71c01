"""Reading the write-ahead tail incrementally: parse each frame once per process, not per read.

A :class:`TailFileCursor` remembers, per tail file, the byte offset reached and the position the
next frame must start with; each :meth:`~TailFileCursor.advance` reads only the bytes added since.
Frames wholly before the position a reader needs are passed over by their header (first position,
row count, both checksums) without decoding their JSON. Frames past the writer's durable mark are
left for a later read. Damage raises StoreCorrupted by the same rules as ``wal.scan_*`` (a bad
frame with a valid one after it, or any bad bytes in a closed file, or a bad end below the durable
mark); a torn end of the newest file is simply not read yet.

A :class:`TailIndex` (one per process and partition, :func:`tail_index`) keeps the parsed
unsealed rows and a map (aggregate type, aggregate id) -> rows, so an aggregate read costs its own
rows plus the frames appended since the last read; rows are dropped once a reader sees them sealed.
The indexes of a process are bounded together (:data:`MAX_TAIL_ROWS`, least recently read evicted
whole: a later read parses that tail again) and released by ``Store.close`` (:func:`release`).
The follower (``follower.py``) and the aggregate read (``reader.py``) both use these cursors.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any, Iterable

from es_actors.codecs.rows import COL
from es_actors.storage import files
from es_actors.storage.local.wal import (
    FILE_HEADER_SIZE,
    FRAME_HEADER_SIZE,
    Damage,
    TailScan,
    checked_frame_at,
    damage_error,
    file_header_first,
    scan_frames,
    scan_tail_bytes,
)


Row = tuple[Any, ...]
_POS = COL["position"]


def _read_from(path: Path, offset: int, before: tuple[int, int] = (0, 0)) -> bytes:
    """The bytes of ``path`` from ``offset`` on, through the one opener tests can count; with
    ``before=(at, n)`` the ``n`` bytes at ``at`` come first (a frame header read before, checked again)."""
    f = files.open_input(path)
    try:
        head = b""
        if before[1]:
            f.seek(before[0])
            head = bytes(f.read(before[1]))
        if offset:
            f.seek(offset)
        return head + bytes(f.read())
    finally:
        f.close()


def _stat(path: Path) -> os.stat_result:
    return os.stat(path)


class TailFileReplaced(FileNotFoundError):
    """A tail file read before was replaced by another file of the same name (a repair or an
    upgrade rewrote it): rows read from it before are not to be trusted; read again from scratch."""


class TailFileCursor:
    """How far one tail file has been read: byte offset, next expected position, file format."""

    __slots__ = ("path", "first", "offset", "expected", "version", "identity", "last_frame_at", "last_header",
                 "seen")

    def __init__(self, path: Path, first: int) -> None:
        self.path = path
        self.first = first  # the position the file's name says it starts with
        self.offset = 0  # bytes read and accounted for (0: not even the file header yet)
        self.expected = first  # the position the frame at ``offset`` must start with
        self.version = 2
        self.identity: tuple[int, int] | None = None
        self.last_frame_at = 0  # where the last frame read starts, and its header: checked again on the
        self.last_header = b""  # next read, so a file replaced under the same name and inode is noticed
        self.seen: tuple[Any, ...] | None = None  # (size, mtime, ctime, newest, durable) after the last read

    def advance(self, newest: bool, durable: int | None, skip_before: int = 0) -> list[Row]:
        """Rows of the whole, durable frames added since the last call, in position order.

        Frames whose last position is below ``skip_before`` are checked but not decoded (their
        rows are not returned). FileNotFoundError if the file is gone (a seal moved it)."""
        st = _stat(self.path)
        ident = (st.st_dev, st.st_ino)
        if self.identity is not None and ident != self.identity:
            raise TailFileReplaced(str(self.path))
        self.identity = ident
        # Nothing written to the file since the last read (size and times unchanged: frames are only
        # appended) and the durable mark where it was: that read's answer stands, and it returned
        # every row it could. Readers ask per read; most find nothing new, so no open and read.
        seen = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, newest, durable)
        if seen == self.seen and self.version == 2 and self.offset:
            return []
        self.seen = None  # set again only once this read has completed
        if self.offset == 0 or self.version == 1:
            rows = self._from_start(newest, durable, skip_before)
        else:
            data = _read_from(self.path, self.offset, (self.last_frame_at, len(self.last_header)))
            if not data.startswith(self.last_header):
                raise TailFileReplaced(str(self.path))
            h = len(self.last_header)
            rows = self._frames(data, self.offset - h, h, newest, durable, skip_before)
        self.seen = seen
        return rows

    def _from_start(self, newest: bool, durable: int | None, skip_before: int) -> list[Row]:
        data = _read_from(self.path, 0)
        if file_header_first(data) == self.first and self.version == 2:
            self.offset = FILE_HEADER_SIZE
            return self._frames(data, 0, FILE_HEADER_SIZE, newest, durable, skip_before)
        # format 1, a damaged or unfinished header: the full classifier decides (format 1 frames
        # cannot be found mid-file, so such a file is re-read whole each time)
        scan = scan_tail_bytes(self.path, data, newest, self.first)
        self.version = scan.version
        if self.version == 2 and scan.size >= FILE_HEADER_SIZE and not scan.damage:
            self.offset = FILE_HEADER_SIZE
        return self._take(scan, durable, skip_before, data, 0)

    def _frames(self, data: bytes, base: int, off: int, newest: bool, durable: int | None, skip_before: int) -> list[Row]:
        """Frames of ``data`` (byte ``base`` of the file) from ``off``. The frames that check out
        (marker, header and payload checksums, positions in order) up to the durable mark are walked
        by their headers, and the rows of those needed are decoded together: the payloads are JSON
        arrays of rows, so they join into one array (a decode per frame costs more than its rows,
        ~2 us of call overhead each, a frame of one row being the usual). Anything else (the first
        frame that does not check out, rows that do not decode as their headers say) goes to
        ``wal.scan_frames``, which classifies it exactly."""
        n = len(data)
        expected = self.expected
        spans: list[tuple[int, int, int]] = []  # (payload start, payload end, first position) of frames decoded
        counts: list[int] = []
        end = last_off = off
        at_mark = False
        while end < n:
            checked, _why = checked_frame_at(data, end)
            if checked is None or checked[0] != expected:
                break
            first, count, start, stop = checked
            if durable is not None and count and first + count - 1 > durable:
                at_mark = True  # not durable yet: a later read takes it
                break
            if first + count - 1 >= skip_before and count:  # frames before what is needed: checked only
                spans.append((start, stop, first))
                counts.append(count)
            expected, last_off, end = first + count, end, stop
        rows = _decode(data, spans, counts)
        if rows is None:  # checked frames whose rows are not what their headers say: classify them all
            return self._take(scan_frames(TailScan(self.path, 2, 0), data, off, self.expected, newest, base=base),
                              durable, skip_before, data, base)
        if end > off:
            self.offset, self.expected = base + end, expected
            self.last_frame_at, self.last_header = base + last_off, data[last_off : last_off + FRAME_HEADER_SIZE]
        if at_mark or end >= n:
            return rows
        scan = scan_frames(TailScan(self.path, 2, 0), data, end, expected, newest, base=base)
        rows.extend(self._take(scan, durable, skip_before, data, base))
        return rows

    def _take(self, scan: TailScan, durable: int | None, skip_before: int, data: bytes, base: int) -> list[Row]:
        """Rows of a full scan's frames past ``offset``, up to the durable mark; damage raises."""
        if scan.damage:
            raise damage_error(scan.damage)
        out: list[Row] = []
        for frame in scan.frames:
            if frame.offset < self.offset:
                continue
            if durable is not None and frame.rows and frame.rows[-1][_POS] > durable:
                return out
            if frame.rows and frame.rows[-1][_POS] >= skip_before:
                out.extend(frame.rows)
            self.offset, self.expected = frame.end, frame.first_position + len(frame.rows)
            if scan.version == 2:
                at = frame.offset - base
                self.last_frame_at, self.last_header = frame.offset, data[at:at + FRAME_HEADER_SIZE]
        if scan.torn_bytes and durable is not None and self.expected - 1 < durable:
            # those positions were synced before the mark said so: damage, not a tear (wal.read_tail_rows)
            raise damage_error([Damage(scan.path, scan.valid_end, None, self.expected, durable,
                                       "the end fails its checks below the durable mark (DURABLE)")])
        return out


def _decode(data: bytes, spans: list[tuple[int, int, int]], counts: list[int]) -> list[Row] | None:
    """The rows of the frames whose payloads lie at ``spans`` (start, end, first position), in one
    JSON decode; None unless they are JSON rows, as many as ``counts`` and starting at those positions."""
    if not spans:
        return []
    try:
        rows = [tuple(r) for r in json.loads(b"[" + b",".join(data[a + 1 : b - 1] for a, b, _f in spans) + b"]")]
    except (ValueError, TypeError):
        return None
    if len(rows) != sum(counts):
        return None
    at = 0
    for (_a, _b, first), count in zip(spans, counts):
        if rows[at][1] != first:
            return None
        at += count
    return rows


class TailIndex:
    """The unsealed, durable rows of one partition seen by this process, with a map from each
    aggregate to its rows. :meth:`advance` reads only frames added since the last call."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # readers of one process share it: one advance at a time
        self._cursors: dict[Path, TailFileCursor] = {}
        self._rows: deque[Row] = deque()  # position order
        self._by_aggregate: dict[tuple[str, str], list[Row]] = {}  # lists: a deque costs ~600 bytes even for one row
        self.frames_parsed_to = 0  # the last position parsed (for tests and stats)
        self.key: tuple[str, int] | None = None  # its key in _indexes (None: not registered)
        self.counted = 0  # rows of it counted in _held_rows (under _indexes_lock)

    def reset(self) -> None:
        self._cursors.clear()
        self._rows.clear()
        self._by_aggregate.clear()
        self.frames_parsed_to = 0

    @property
    def last_position(self) -> int:
        return self._rows[-1][_POS] if self._rows else 0

    def advance(self, tails: list[tuple[int, Path]], sealed_last: int, durable: int | None) -> None:
        """Bring the index up to the listed tail files (read after ``durable``): drop rows now sealed
        (``<= sealed_last``), parse the frames added since. FileNotFoundError: a seal moved a file
        (the caller reads again); StoreCorrupted: damage."""
        try:
            self._advance(tails, sealed_last, durable)
        finally:
            _account(self)

    def _advance(self, tails: list[tuple[int, Path]], sealed_last: int, durable: int | None) -> None:
        live = {p for _f, p in tails}
        for p in [p for p in self._cursors if p not in live]:
            del self._cursors[p]
        self._drop_through(sealed_last)
        known_to = max(self.last_position, sealed_last)
        for i, (first, path) in enumerate(tails):
            next_first = tails[i + 1][0] if i + 1 < len(tails) else None
            if next_first is not None and next_first <= known_to + 1:
                continue  # wholly sealed or already held
            cur = self._cursors.get(path)
            if cur is None:
                if first <= self.last_position:  # a file new to us under positions we hold: rewritten
                    self.reset()  # (a store recreated at this path, a repair): start over; the caller reads again
                    raise TailFileReplaced(str(path))
                cur = self._cursors[path] = TailFileCursor(path, first)
            try:
                rows = cur.advance(next_first is None, durable, skip_before=known_to + 1)
            except TailFileReplaced:
                self.reset()  # rows held may come from the old file: start over (the caller reads again)
                raise
            self._add(r for r in rows if r[_POS] > known_to)
            known_to = max(known_to, self.last_position)

    def _add(self, rows: Iterable[Row]) -> None:
        t_col, i_col = COL["aggregate_type"], COL["aggregate_id"]
        for r in rows:
            if self._rows and r[_POS] <= self._rows[-1][_POS]:
                continue  # already held (a cursor re-reading a format-1 file)
            self._rows.append(r)
            key = (r[t_col], r[i_col])
            bucket = self._by_aggregate.get(key)
            if bucket is None:
                self._by_aggregate[key] = [r]
            else:
                bucket.append(r)
            self.frames_parsed_to = r[_POS]

    def _drop_through(self, sealed_last: int) -> None:
        t_col, i_col = COL["aggregate_type"], COL["aggregate_id"]
        rows = self._rows
        dropped: dict[tuple[str, str], int] = {}
        while rows and rows[0][_POS] <= sealed_last:
            r = rows.popleft()
            key = (r[t_col], r[i_col])
            dropped[key] = dropped.get(key, 0) + 1
        for key, n in dropped.items():
            bucket = self._by_aggregate[key]
            del bucket[:n]  # both are in position order: its first n rows are these
            if not bucket:
                del self._by_aggregate[key]

    def span(self) -> tuple[int, int, int]:
        """(first position, last position, row count) held; (0, 0, 0) when none."""
        if not self._rows:
            return 0, 0, 0
        return self._rows[0][_POS], self._rows[-1][_POS], len(self._rows)

    def rows_after(self, after: int) -> list[Row]:
        """Held rows with position > ``after``, in position order."""
        return [r for r in self._rows if r[_POS] > after]

    def aggregate(self, aggregate_type: str, aggregate_id: str, after: int) -> list[Row]:
        """Held rows of one aggregate with position > ``after``, in position order."""
        bucket = self._by_aggregate.get((aggregate_type, aggregate_id))
        return [r for r in bucket if r[_POS] > after] if bucket else []


# Rows all TailIndexes of this process hold together at most (a decoded row costs ~0.3-2 KB: its
# tuple and strings), but for the one index just read, which is kept whole. Past it the least
# recently read indexes are evicted whole; the next read of an evicted partition parses its tail again.
MAX_TAIL_ROWS = 1_000_000

# (resolved store root, partition) -> index, least recently read first; _held_rows: their rows counted.
_indexes: OrderedDict[tuple[str, int], TailIndex] = OrderedDict()
_indexes_lock = threading.Lock()
_held_rows = 0


def tail_index(root: Path, partition: int) -> TailIndex:
    """This process's :class:`TailIndex` of one partition of the store at ``root`` (keyed by the
    resolved path: a relative path or a symlink names the store it leads to now)."""
    key = (_resolve(root), partition)
    with _indexes_lock:
        index = _indexes.get(key)
        if index is None:
            index = _indexes[key] = TailIndex()
            index.key = key
        else:
            _indexes.move_to_end(key)
        return index


_resolved: dict[str, str] = {}  # absolute path -> its realpath (~13 us, per read otherwise); forgotten by release()


def resolved_root(root: Path) -> str:
    """The store's resolved path: the key of this process's per-store read caches."""
    return _resolve(root)


def _resolve(root: Path) -> str:
    """The store's resolved path, resolved once per process per absolute path (until released)."""
    text = os.fspath(root)
    absolute = text if text.startswith("/") and "/." not in text and "//" not in text else os.path.abspath(text)
    resolved = _resolved.get(absolute)  # (a normal absolute path is its own abspath: no call per read)
    if resolved is None:
        if len(_resolved) > 10_000:
            _resolved.clear()
        resolved = _resolved[absolute] = os.path.realpath(absolute)
    return resolved


def _account(index: TailIndex) -> None:
    """Count the rows ``index`` holds now and evict least recently read others past MAX_TAIL_ROWS."""
    global _held_rows
    with _indexes_lock:
        if index.key is None or _indexes.get(index.key) is not index:
            return  # evicted or released meanwhile: its holder's reference is the last one
        held = len(index._rows)
        _held_rows += held - index.counted
        index.counted = held
        for key in list(_indexes):
            if _held_rows <= MAX_TAIL_ROWS:
                break
            if _indexes[key] is not index:
                _evict(key)


def _evict(key: tuple[str, int]) -> None:
    """Forget one index (under _indexes_lock); clear its rows now unless a reader is inside it
    (then they go when that reader drops it). A later read starts a new index from the tail files."""
    global _held_rows
    index = _indexes.pop(key)
    _held_rows -= index.counted
    index.counted, index.key = 0, None
    if index.lock.acquire(blocking=False):
        try:
            index.reset()
        finally:
            index.lock.release()


def release(root: Path) -> None:
    """Drop this process's tail indexes of the store at ``root`` (Store.close)."""
    from es_actors.storage.local import tail_key_index  # it imports the stream index, which imports this module

    resolved = os.path.realpath(root)
    tail_key_index.release(resolved)
    with _indexes_lock:
        for key in [k for k in _indexes if k[0] == resolved]:
            _evict(key)
        for absolute in [a for a, r in _resolved.items() if r == resolved]:
            del _resolved[absolute]  # a symlink moved to another store is followed after a close


def held_rows() -> int:
    """Unsealed rows the tail indexes of this process hold (tests, stats)."""
    with _indexes_lock:
        return _held_rows
