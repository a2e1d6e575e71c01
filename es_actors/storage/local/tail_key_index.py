"""A reader's index of a partition's unsealed tail, taken from the writer's key files.

One :class:`TailKeyIndex` per process and partition (:func:`tail_key_index`) keeps the tail files
and their key files (:mod:`tail_keys`) open and holds their records by stream hash: a hash-sorted
array for records taken in bulk (a new reader of a long tail: one ``frombuffer``, one sort) and a
dict for the few taken per read after that. So a read costs one positioned read of the records
published since the last, a lookup, and the frames that hold the aggregate, each decoded once per
process: never the frames of other aggregates, and no cost that grows with the tail (ADR-015,
"The tail's cost under writes").

Every record is trusted only as far as the writer's durable mark vouches for it (the running crc32
of the key file's bytes, or a closed file's trailer), positions must run gaplessly, every frame
read is checked against its record's header crc32, and every row against the position and
aggregate asked for. Whatever does not check out makes :meth:`TailKeyIndex.aggregate_rows` answer
None: the caller then reads the tail by parsing it (``tail_cursor.TailIndex``), and this index
rests (:data:`RETRY_AFTER_S`, doubled after each failure in a row up to :data:`RETRY_MAX_S`). A key
file can cost speed, never a row.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from es_actors.codecs.rows import COL
from es_actors.storage import files
from es_actors.storage.local import kept_files, tail_keys
from es_actors.storage.local.durable_mark import KeysMark
from es_actors.storage.local.tail_key_file import KeyFile, KeysUnusable, identity
from es_actors.storage.local.stream_index import runs
from es_actors.storage.local.wal import checked_frame_at, frame_header_crc, frame_rows

Row = tuple[Any, ...]
Record = tuple[int, int, int, int, int]  # position, stream hash, frame offset, frame length, frame header crc32
_POS, _TYPE, _ID = COL["position"], COL["aggregate_type"], COL["aggregate_id"]
RECORD, HEADER, REC = tail_keys.RECORD, tail_keys.HEADER_SIZE, tail_keys.RECORD_SIZE
_UNPACK = tail_keys.RECORD_STRUCT.iter_unpack
RETRY_AFTER_S = 1.0
RETRY_MAX_S = 60.0  # (a closed file left without its trailer stays so until it is sealed)
#: Records one index holds at most (32 bytes each); a tail longer than this is read by parsing it.
MAX_RECORDS = 4_000_000
MAX_FRAME_BYTES = 1 << 30
MAX_DECODED = 100_000  # rows kept decoded per index (all cleared past it)
#: Records taken at once up to this many go to the dict one by one; more are taken in bulk.
SMALL_INTAKE = 256
#: Records the dict holds at most before they join the sorted array (one sort per this many).
MAX_RECENT = 16_384


class TailKeyIndex:
    """The records of one partition's unsealed, durable tail, by stream hash."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # readers of one process share it
        self.retry_at = 0.0
        self.failures = 0  # in a row
        self.released = False  # by release() or an eviction: no longer this process's index of the partition
        self._files: dict[int, KeyFile] = {}
        self.reset()

    def reset(self) -> None:
        """Forget every record and close every file (a failure, a release)."""
        for kf in self._files.values():
            kf.close()
        kept_files.forget(self)
        self._files = {}  # by the tail file's first position
        self._bulk = np.empty(0, RECORD)  # sorted by hash
        self._bulk_hash = np.empty(0, np.uint64)  # its hashes, contiguous: one binary search per read
        self._recent: dict[int, list[Record]] = {}  # records taken since the sort, by hash, in position order
        self._recent_n = 0
        self._first = 0  # the first position held (records run gaplessly from it to ``last``)
        self.last = 0  # the last position taken (0: none yet)
        self._floor = 0  # the last sealed position seen: records at or below it are not answered
        self._tails: object = None  # the tail listing the files were last matched against
        self._firsts: list[int] = []
        self._decoded: dict[int, Row] = {}  # position -> row read and checked (an aggregate read again)

    def close(self) -> None:
        """Close the files and forget the records for good (release, eviction): a reader that took
        this index before still reads through it, but keeps no file open after."""
        with self.lock:
            self.released = True
            self.reset()

    def __del__(self) -> None:
        self.close_files()

    def close_files(self) -> None:
        """Close the files kept open but keep the records (:mod:`kept_files`: past the process's
        budget); a later read opens them again, and only if they are the same files."""
        for kf in self._files.values():
            kf.close()

    def _note_kept(self) -> None:
        if self.released:  # (released while its reader waited for the lock: kept, no one would close them)
            self.close_files()
            return
        kept_files.note(self, sum((kf.keys_fd >= 0) + (kf.tail_fd >= 0) for kf in self._files.values()))

    def held(self) -> int:
        """Positions held past the last seal seen."""
        return max(self.last - max(self._first, self._floor + 1) + 1, 0) if self.last else 0

    def aggregate_rows(self, tails: list[tuple[int, Path]], sealed_last: int, durable: int | None,
                       mark: KeysMark | None, aggregate: tuple[str, str]) -> list[Row] | None:
        """The aggregate's rows at positions ``sealed_last+1..durable``, or None if the key files
        cannot answer (the caller parses the tail). FileNotFoundError: a seal moved a file."""
        if durable is None or mark is None or mark.length < HEADER or time.monotonic() < self.retry_at:
            return None
        try:
            if durable < self.last and self._floor <= sealed_last < self._first + 1 and self._same_files(tails):
                # A mark older than the records taken, the same tail files: another thread of this
                # process read a newer mark and took the lock first. The records taken answer.
                return [r for r in self._rows_of(tails, aggregate) if sealed_last < r[_POS] <= durable]
            self._advance(tails, sealed_last, durable, mark)
            if durable <= sealed_last:
                return []
            if self.held() == 0 or self._first > sealed_last + 1 or self.last != durable:
                raise KeysUnusable("the records do not cover the unsealed positions")
            rows = self._rows_of(tails, aggregate)
        except KeysUnusable:
            self.reset()
            self.retry_at = time.monotonic() + min(RETRY_AFTER_S * 2**self.failures, RETRY_MAX_S)
            self.failures += 1
            return None
        finally:
            self._note_kept()
        self.failures = 0
        return rows

    def _same_files(self, tails: list[tuple[int, Path]]) -> bool:
        """``tails`` lists the files held open under the same names (not a store made again there)."""
        if tails != self._tails:
            return False
        return all(kf.ident is not None and identity(path) == kf.ident
                   for first, path in tails if (kf := self._files.get(first)) is not None)

    # -- taking records ------------------------------------------------------------------------

    def _advance(self, tails: list[tuple[int, Path]], sealed_last: int, durable: int, mark: KeysMark) -> None:
        known = self._tails
        if not isinstance(known, list) or len(known) != len(tails) or any(a is not b for a, b in zip(known, tails)):
            self._relist(tails, sealed_last)  # (a cached listing holds the same tuples while unchanged)
        if sealed_last > self._floor:
            self._drop_through(sealed_last)
        for i, (first, path) in enumerate(tails):
            next_first = tails[i + 1][0] if i + 1 < len(tails) else None
            if first > durable or (next_first is not None and next_first <= max(sealed_last, self.last) + 1):
                continue  # nothing durable in it yet, or wholly sealed or held
            kf = self._files.get(first)
            if kf is None:
                kf = self._files[first] = KeyFile(first)
            if first == mark.tail_first:
                self._take(kf, path, mark.length, mark.crc, None)
            elif next_first is not None and not kf.closed:
                self._take(kf, path, -1, 0, next_first)
            elif not kf.closed:
                raise KeysUnusable(f"{path} is not the file the durable mark names")

    def _relist(self, tails: list[tuple[int, Path]], sealed_last: int) -> None:
        """A new listing of the tail files: close the files no longer listed, and start over if a
        listed name is no longer the file held open under it, or a file new to us holds positions
        held (the store was deleted and created again at its path, a recovery rewrote a file): the
        files kept open would otherwise go on answering for the old ones."""
        live = {first for first, _p in tails}
        for first in [f for f in self._files if f not in live]:
            self._files.pop(first).close()
        floor = max(self._floor, sealed_last)
        held_to = self.last if self.last > floor else 0
        for i, (first, path) in enumerate(tails):
            kf = self._files.get(first)
            if kf is None:
                next_first = tails[i + 1][0] if i + 1 < len(tails) else None
                if first <= held_to and (next_first is None or next_first - 1 > floor):
                    self.reset()
                    break
            elif kf.ident is not None and identity(path) != kf.ident:
                self.reset()
                break
        self._tails, self._firsts = tails, [f for f, _p in tails]

    def _take(self, kf: KeyFile, tail: Path, length: int, crc: int, next_first: int | None) -> None:
        """Records of one key file past what was taken: up to ``length`` bytes whose crc32 is
        ``crc`` (the newest file, as published), or to its trailer (``length`` -1: a closed file)."""
        if length >= 0 and length == kf.length:
            if crc != kf.crc:
                raise KeysUnusable(f"{tail}: key file replaced")
            return
        if length >= 0 and length < kf.length:
            raise KeysUnusable(f"{tail}: key file shorter than taken")
        if kf.keys_fd < 0:
            kf.open(tail)
        try:
            size = length if length >= 0 else os.fstat(kf.keys_fd).st_size
            data = files.pread_fd(kf.keys_fd, max(size - kf.length, 0), kf.length)
        except OSError as exc:
            raise KeysUnusable(f"{tail_keys.keys_path(tail)} cannot be read: {exc}") from None
        if length >= 0:
            body_end = len(data)
            if body_end != length - kf.length or zlib.crc32(data, kf.crc) != crc:
                raise KeysUnusable(f"{tail_keys.keys_path(tail)}: does not match the durable mark")
        else:
            if len(data) < REC:
                raise KeysUnusable(f"{tail_keys.keys_path(tail)}: closed without its trailer")
            t_pos, crc, t_len, _l, _c = tail_keys.RECORD_STRUCT.unpack_from(data, len(data) - REC)
            body_end = len(data) - REC  # the trailer: (-1, crc32, length before it)
            if (t_pos != tail_keys.TRAILER_POSITION or t_len != kf.length + body_end
                    or zlib.crc32(data[:body_end], kf.crc) != crc):
                raise KeysUnusable(f"{tail_keys.keys_path(tail)}: closed without a valid trailer")
        if kf.length == 0 and tail_keys.parse_header(data) != (kf.inode, kf.first):
            raise KeysUnusable(f"{tail_keys.keys_path(tail)}: no valid header for {tail} (made for another file?)")
        body = data[HEADER if kf.length == 0 else 0 : body_end]
        if len(body) % REC:
            raise KeysUnusable(f"{tail_keys.keys_path(tail)}: a partial record")
        if body:
            self._intake(kf, body, tail)
        if length < 0:
            if next_first is not None and kf.next_position != next_first:
                raise KeysUnusable(f"{tail}: records end at {kf.next_position - 1}, the next file starts at {next_first}")
            kf.closed = True
        kf.length += len(data)
        kf.crc = crc  # (checked above: the crc32 of every byte taken but a trailer)

    def _intake(self, kf: KeyFile, body: bytes, tail: Path) -> None:
        """Hold a key file's new records (whole, checked against the durable mark), after checking
        that their positions continue those before: a few one by one, many in bulk."""
        k, start = len(body) // REC, kf.next_position
        skip = max(self.last, self._floor) - start + 1  # held already, or sealed
        if k <= SMALL_INTAKE:
            recs = list(_UNPACK(body))
            if recs[0][0] != start or recs[-1][0] != start + k - 1 or any(
                    r[0] != start + j for j, r in enumerate(recs)):
                raise KeysUnusable(f"{tail}: the key file's positions do not continue")
            new: list[Record] | np.ndarray = recs[skip:] if skip > 0 else recs
            first = new[0][0] if new else None
        else:
            arr = np.frombuffer(body, RECORD)
            if not np.array_equal(arr["position"], np.arange(start, start + k, dtype=np.int64)):
                raise KeysUnusable(f"{tail}: the key file's positions do not continue")
            new = arr[skip:] if skip > 0 else arr
            first = int(new["position"][0]) if len(new) else None
        kf.next_position = start + k
        if first is None:
            return
        if self.last > self._floor:  # records held: the new ones must continue them
            if first != self.last + 1:
                raise KeysUnusable(f"{tail}: the key file's positions do not continue the file before")
        else:
            self._first = first
        if first + len(new) - 1 - max(self._first, self._floor + 1) >= MAX_RECORDS:
            raise KeysUnusable("the tail holds more records than one index keeps")
        if isinstance(new, list) and self._recent_n + len(new) <= MAX_RECENT:
            recent = self._recent
            for r in new:
                hits = recent.get(r[1])
                if hits is None:
                    recent[r[1]] = [r]
                else:
                    hits.append(r)
            self._recent_n += len(new)
        else:
            self._sort_in(np.asarray(new, RECORD) if isinstance(new, list) else new)
        self.last = first + len(new) - 1

    def _sort_in(self, new: np.ndarray) -> None:
        """Merge the dict's records and ``new`` into the sorted array (dropping sealed ones)."""
        parts = [self._bulk[self._bulk["position"] > self._floor]]
        if self._recent_n:
            parts.append(np.array([r for hits in self._recent.values() for r in hits], RECORD))
        parts.append(new)
        recs = np.concatenate(parts)
        recs = recs[np.argsort(recs["hash"])]  # (not stable: a lookup sorts its few hits by position)
        self._bulk, self._bulk_hash = recs, np.ascontiguousarray(recs["hash"])
        self._recent, self._recent_n = {}, 0

    def _drop_through(self, sealed_last: int) -> None:
        """A seal: records and decoded rows at or below ``sealed_last`` are not needed again."""
        self._floor = sealed_last
        if sealed_last >= self.last:  # all of it (the usual seal: the whole closed file)
            self._bulk, self._bulk_hash = np.empty(0, RECORD), np.empty(0, np.uint64)
            self._recent, self._recent_n = {}, 0
            self._decoded = {}
            return
        if len(self._bulk):  # (a filter keeps the order: no sort)
            self._bulk = self._bulk[self._bulk["position"] > sealed_last]
            self._bulk_hash = np.ascontiguousarray(self._bulk["hash"])
        if self._recent_n:
            kept = {h: [r for r in hits if r[0] > sealed_last] for h, hits in self._recent.items()}
            self._recent = {h: hits for h, hits in kept.items() if hits}
            self._recent_n = sum(len(hits) for hits in self._recent.values())
        self._decoded = {p: r for p, r in self._decoded.items() if p > sealed_last}

    # -- answering -----------------------------------------------------------------------------

    def _records_of(self, h: int) -> list[Record]:
        """The held records of stream hash ``h`` past the last seal, in position order."""
        found: list[Record] = []
        if len(self._bulk_hash):
            key = np.uint64(h)
            lo = int(self._bulk_hash.searchsorted(key, "left"))
            hi = int(self._bulk_hash.searchsorted(key, "right"))
            if hi > lo:
                found = sorted(self._bulk[lo:hi].tolist())  # by position (the records' first field)
        found += self._recent.get(h, ())
        floor = self._floor
        return [r for r in found if r[0] > floor]

    def _rows_of(self, tails: list[tuple[int, Path]], aggregate: tuple[str, str]) -> list[Row]:
        h = runs.stream_hash(*aggregate)
        records = self._records_of(h)
        if not records:
            return []
        out: list[Row] = []
        decoded = self._decoded
        if len(decoded) > MAX_DECODED:
            decoded.clear()
        for pos, _h, off, length, crc in records:
            row = decoded.get(pos)
            if row is None:
                self._decode_frame(tails, pos, off, length, crc)
                row = decoded.get(pos)
                if row is None:
                    raise KeysUnusable(f"the frame at {off} does not hold position {pos}")
            if (row[_TYPE], row[_ID]) == aggregate:
                out.append(row)
            elif runs.stream_hash(row[_TYPE], row[_ID]) != h:  # (the same hash: a collision, read around)
                raise KeysUnusable(f"the record of position {pos} names another stream")
        return out

    def _decode_frame(self, tails: list[tuple[int, Path]], pos: int, off: int, length: int, crc: int) -> None:
        """Read, check and decode the frame a record points at; keep all its rows decoded (a frame
        of a batch append may hold many aggregates)."""
        i = bisect.bisect_right(self._firsts, pos) - 1
        kf = self._files.get(self._firsts[i]) if i >= 0 else None
        if kf is None or kf.ident is None or length > MAX_FRAME_BYTES:
            raise KeysUnusable(f"position {pos}: no records taken for its tail file")
        path = tails[i][1]
        if kf.tail_fd < 0:
            kf.open(path)  # closed past the budget (FileNotFoundError: sealed meanwhile)
        try:
            data = files.pread_fd(kf.tail_fd, length, off)
        except OSError as exc:  # the parsing path meets it too, and reports it as the read's error
            raise KeysUnusable(f"{path} cannot be read: {exc}") from None
        checked, why = checked_frame_at(data, 0)
        if checked is None or checked[3] != len(data):
            raise KeysUnusable(f"{path} at byte {off}: {why or 'the frame is not the length its record says'}")
        if frame_header_crc(data) != crc:
            raise KeysUnusable(f"{path} at byte {off}: not the frame its record was written for")
        first, count, start, end = checked
        rows, why = frame_rows(data[start:end], first, count)
        if rows is None:
            raise KeysUnusable(f"{path} at byte {off}: {why}")
        for k, r in enumerate(rows):
            if r[_POS] != first + k:
                raise KeysUnusable(f"{path}: a frame whose rows do not continue its first position")
            self._decoded[r[_POS]] = r


_indexes: dict[tuple[str, int], TailKeyIndex] = {}
_indexes_lock = threading.Lock()


def tail_key_index(root: str, partition: int) -> TailKeyIndex:
    """This process's :class:`TailKeyIndex` of one partition of the store at ``root`` (a resolved path)."""
    key = (root, partition)
    with _indexes_lock:
        index = _indexes.get(key)
        if index is None:
            if len(_indexes) > 4096:
                for old in _indexes.values():
                    old.close()
                _indexes.clear()
            index = _indexes[key] = TailKeyIndex()
        return index


def release(root: str) -> None:
    """Forget the indexes of the store at ``root`` and close their files (``Store.close``)."""
    with _indexes_lock:
        for key in [k for k in _indexes if k[0] == root]:
            _indexes.pop(key).close()
