"""A reader's index of a partition's unsealed tail, taken in bulk from the writer's key files.

One :class:`TailKeyIndex` per process and partition (:func:`tail_key_index`) holds the records of
the key files (:mod:`tail_keys`) as numpy arrays: each read takes the bytes published since the
last (one positioned read, one crc32, one ``frombuffer``) and finds an aggregate's positions with
one vectorised compare. Only the frames that hold the aggregate are read and decoded, with their
own checksums, and each row is checked against the position and aggregate asked for. So a reader
no longer parses every frame the writers append (ADR-015, "The tail's cost under writes").

Whatever does not check out (no key file, a crc or header mismatch, positions that do not
continue, a frame or row that is not what its record says) makes :meth:`TailKeyIndex.aggregate_rows`
answer None: the caller then reads the tail by parsing it (``tail_cursor.TailIndex``), and this
index rests (:data:`RETRY_AFTER_S`, doubled after each failure in a row up to :data:`RETRY_MAX_S`).
A key file can cost speed, never a row.
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
from es_actors.storage.local import tail_keys
from es_actors.storage.local.durable_mark import KeysMark
from es_actors.storage.local.stream_index import runs
from es_actors.storage.local.wal import checked_frame_at, frame_header_crc, frame_rows

Row = tuple[Any, ...]
_POS, _TYPE, _ID = COL["position"], COL["aggregate_type"], COL["aggregate_id"]
RECORD, HEADER, REC = tail_keys.RECORD, tail_keys.HEADER_SIZE, tail_keys.RECORD_SIZE
RETRY_AFTER_S = 1.0
RETRY_MAX_S = 60.0  # (a closed file left without its trailer stays so until it is sealed)
#: Records one index holds at most (32 bytes each); a tail longer than this is read by parsing it.
MAX_RECORDS = 4_000_000
MAX_FRAME_BYTES = 1 << 30
MAX_DECODED = 100_000  # rows kept decoded per index (all cleared past it)


class KeysUnusable(Exception):
    """The key files do not check out for this read: parse the tail instead."""


class _KeyFile:
    """How far one tail file's key file has been taken."""

    __slots__ = ("first", "inode", "length", "crc", "next_position", "closed")

    def __init__(self, first: int) -> None:
        self.first = first
        self.inode = -1
        self.length = 0  # bytes taken (header included)
        self.crc = 0  # crc32 of those bytes
        self.next_position = first
        self.closed = False  # its trailer was taken: nothing more will come


class TailKeyIndex:
    """The records of one partition's unsealed, durable tail: position -> (stream hash, frame)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # readers of one process share it
        self.retry_at = 0.0
        self.failures = 0  # in a row
        self.reset()

    def reset(self) -> None:
        self._files: dict[int, _KeyFile] = {}  # by the tail file's first position
        self._recs = np.empty(1024, RECORD)  # as the key files hold them
        self._hash = np.empty(1024, np.uint64)  # their stream hashes again, contiguous: one compare per read
        self._start = self._n = 0  # records [start, n) are held
        self.last = 0  # the last position taken (0: none yet)
        self._floor = 0  # the last sealed position seen: records at or below it are not kept
        self._decoded: dict[int, Row] = {}  # position -> row read and checked (an aggregate read again)

    def held(self) -> int:
        return self._n - self._start

    def aggregate_rows(self, tails: list[tuple[int, Path]], sealed_last: int, durable: int | None,
                       mark: KeysMark | None, aggregate: tuple[str, str]) -> list[Row] | None:
        """The aggregate's rows at positions ``sealed_last+1..durable``, or None if the key files
        cannot answer (the caller parses the tail). FileNotFoundError: a seal moved a file."""
        if durable is None or mark is None or mark.length < HEADER or time.monotonic() < self.retry_at:
            return None
        try:
            self._advance(tails, sealed_last, durable, mark)
            if durable <= sealed_last:
                return []
            if self.held() == 0 or self._recs["position"][self._start] != sealed_last + 1 or self.last != durable:
                raise KeysUnusable("the records do not cover the unsealed positions")
            rows = self._rows_of(tails, aggregate)
        except KeysUnusable:
            self.reset()
            self.retry_at = time.monotonic() + min(RETRY_AFTER_S * 2**self.failures, RETRY_MAX_S)
            self.failures += 1
            return None
        self.failures = 0
        return rows

    # -- taking records ------------------------------------------------------------------------

    def _advance(self, tails: list[tuple[int, Path]], sealed_last: int, durable: int, mark: KeysMark) -> None:
        self._drop_through(sealed_last)
        live = {first for first, _p in tails}
        for first in [f for f in self._files if f not in live]:
            del self._files[first]
        for i, (first, path) in enumerate(tails):
            next_first = tails[i + 1][0] if i + 1 < len(tails) else None
            if first > durable or (next_first is not None and next_first <= max(sealed_last, self.last) + 1):
                continue  # nothing durable in it yet, or wholly sealed or held
            kf = self._files.get(first)
            if kf is None:
                kf = self._files[first] = _KeyFile(first)
            if first == mark.tail_first:
                self._take(kf, path, mark.length, mark.crc, None)
            elif next_first is not None and not kf.closed:
                self._take(kf, path, -1, 0, next_first)
            elif not kf.closed:
                raise KeysUnusable(f"{path} is not the file the durable mark names")

    def _take(self, kf: _KeyFile, tail: Path, length: int, crc: int, next_first: int | None) -> None:
        """Records of one key file past what was taken: up to ``length`` bytes whose crc32 is
        ``crc`` (the newest file, as published), or to its trailer (``length`` -1: a closed file)."""
        if length >= 0 and length == kf.length:
            if crc != kf.crc:
                raise KeysUnusable(f"{tail}: key file replaced")
            return
        if length >= 0 and length < kf.length:
            raise KeysUnusable(f"{tail}: key file shorter than taken")
        kp = tail_keys.keys_path(tail)
        try:
            _inode, (data,) = files.pread_input(kp, [(kf.length, length - kf.length if length >= 0 else -1)])
        except FileNotFoundError:
            if tail.exists():
                raise KeysUnusable(f"{kp} is missing") from None
            raise  # sealed meanwhile: the caller reads again
        except OSError as exc:  # not a readable file (a directory, no permission, EIO): derived data
            raise KeysUnusable(f"{kp} cannot be read: {exc}") from None
        if kf.length == 0:
            head = tail_keys.parse_header(data)
            if head is None or head[1] != kf.first:
                raise KeysUnusable(f"{kp}: no valid header for this tail file")
            kf.inode = os.stat(tail).st_ino  # FileNotFoundError: sealed meanwhile
            if head[0] != kf.inode:
                raise KeysUnusable(f"{kp}: made for another file than {tail}")
        if length >= 0:
            body_end = len(data)
            if body_end != length - kf.length or zlib.crc32(data, kf.crc) != crc:
                raise KeysUnusable(f"{kp}: does not match the durable mark")
        else:
            if len(data) < REC:
                raise KeysUnusable(f"{kp}: closed without its trailer")
            trailer = np.frombuffer(data[-REC:], RECORD)[0]
            body_end, crc = len(data) - REC, int(trailer["hash"])  # the trailer: (-1, crc32, length before it)
            if (int(trailer["position"]) != tail_keys.TRAILER_POSITION or int(trailer["offset"]) != kf.length + body_end
                    or zlib.crc32(data[:body_end], kf.crc) != crc):
                raise KeysUnusable(f"{kp}: closed without a valid trailer")
        body = data[HEADER if kf.length == 0 else 0 : body_end]
        if len(body) % REC:
            raise KeysUnusable(f"{kp}: a partial record")
        recs = np.frombuffer(body, RECORD)
        if len(recs):
            pos = recs["position"]
            if not np.array_equal(pos, np.arange(kf.next_position, kf.next_position + len(recs), dtype=np.int64)):
                raise KeysUnusable(f"{kp}: positions do not continue")
            kf.next_position += len(recs)
            recs = recs[pos > max(self.last, self._floor)]  # held already, or sealed
            if len(recs):
                if self.held() and int(recs["position"][0]) != self.last + 1:
                    raise KeysUnusable(f"{kp}: positions do not continue the file before")
                self._append(recs)
        if length < 0:
            if next_first is not None and kf.next_position != next_first:
                raise KeysUnusable(f"{kp}: records end at {kf.next_position - 1}, the next file starts at {next_first}")
            kf.closed = True
        kf.length += len(data)
        kf.crc = crc  # (checked above: the crc32 of every byte taken but a trailer)

    def _append(self, recs: np.ndarray) -> None:
        k = len(recs)
        if self._n + k > len(self._recs):
            self._grow(self._n + k)
        n = self._n
        self._recs[n : n + k] = recs
        self._hash[n : n + k] = recs["hash"]
        self._n = n + k
        self.last = int(recs["position"][-1])

    def _grow(self, need: int) -> None:
        held = self._n - self._start
        if need - self._start > MAX_RECORDS:
            raise KeysUnusable("the tail holds more records than one index keeps")
        cap = max(1024, 2 * (need - self._start))
        for name in ("_recs", "_hash"):
            old = getattr(self, name)
            new = np.empty(cap, old.dtype)
            new[:held] = old[self._start : self._n]
            setattr(self, name, new)
        self._start, self._n = 0, held

    def _drop_through(self, sealed_last: int) -> None:
        self._floor = max(self._floor, sealed_last)
        positions = self._recs["position"]
        if self.held() and positions[self._start] <= sealed_last:
            self._start += int(np.searchsorted(positions[self._start : self._n], sealed_last, side="right"))
            self._decoded = {p: r for p, r in self._decoded.items() if p > sealed_last}  # once per seal

    # -- answering -----------------------------------------------------------------------------

    def _rows_of(self, tails: list[tuple[int, Path]], aggregate: tuple[str, str]) -> list[Row]:
        h = runs.stream_hash(*aggregate)
        s, n = self._start, self._n
        hits = np.flatnonzero(self._hash[s:n] == np.uint64(h)) + s
        if not len(hits):
            return []
        firsts = [f for f, _p in tails]
        by_file: dict[int, list[tuple[int, int, int, int]]] = {}  # (position, frame offset, length, header crc32)
        out: list[Row] = []
        decoded = self._decoded
        for pos, _h, off, length, crc in self._recs[hits].tolist():
            row = decoded.get(pos)
            if row is not None:
                if (row[_TYPE], row[_ID]) == aggregate:
                    out.append(row)
                continue
            i = bisect.bisect_right(firsts, pos) - 1
            if i < 0:
                raise KeysUnusable(f"position {pos} is in no tail file listed")
            by_file.setdefault(i, []).append((pos, off, length, crc))
        if len(decoded) > MAX_DECODED:
            decoded.clear()
        for i, wanted in by_file.items():
            first, path = tails[i]
            kf = self._files.get(first)
            frames = sorted({(off, length, crc) for _p, off, length, crc in wanted})
            if kf is None or any(length > MAX_FRAME_BYTES for _o, length, _c in frames):
                raise KeysUnusable(f"{path}: no records taken for it")
            try:
                inode, datas = files.pread_input(path, [(off, length) for off, length, _c in frames])
            except FileNotFoundError:
                raise  # sealed meanwhile: the caller reads again
            except OSError as exc:  # the parsing path meets it too, and reports it as the read's error
                raise KeysUnusable(f"{path} cannot be read: {exc}") from None
            if inode != kf.inode:
                raise KeysUnusable(f"{path} was replaced")
            for (off, _length, crc), data in zip(frames, datas):
                frame_first, rows = _frame(data, off, path, crc)
                for k, r in enumerate(rows):  # a frame's other rows are kept too: a frame of a batch
                    if r[_POS] != frame_first + k:  # append may hold many aggregates, decoded once here
                        raise KeysUnusable(f"{path}: a frame whose rows do not continue its first position")
                    decoded[r[_POS]] = r
            for pos, off, _length, _crc in wanted:
                row = decoded.get(pos)
                if row is None:
                    raise KeysUnusable(f"{path}: the frame at {off} does not hold position {pos}")
                if (row[_TYPE], row[_ID]) == aggregate:
                    out.append(row)
                elif runs.stream_hash(row[_TYPE], row[_ID]) != h:
                    raise KeysUnusable(f"{path}: the record of position {pos} names another stream")
        out.sort(key=lambda r: r[_POS])
        return out


def _frame(data: bytes, at: int, path: Path, crc: int) -> tuple[int, list[Row]]:
    """(first position, rows) of a whole frame read where a record points (byte ``at``), its
    checksums checked (its header's against the record's ``crc``: the frame the record was written for)."""
    checked, why = checked_frame_at(data, 0)
    if checked is None or checked[3] != len(data):
        raise KeysUnusable(f"{path} at byte {at}: {why or 'the frame is not the length its record says'}")
    if frame_header_crc(data) != crc:
        raise KeysUnusable(f"{path} at byte {at}: not the frame its record was written for")
    first, count, start, end = checked
    rows, why = frame_rows(data[start:end], first, count)
    if rows is None:
        raise KeysUnusable(f"{path} at byte {at}: {why}")
    return first, rows


_indexes: dict[tuple[str, int], TailKeyIndex] = {}
_indexes_lock = threading.Lock()


def tail_key_index(root: str, partition: int) -> TailKeyIndex:
    """This process's :class:`TailKeyIndex` of one partition of the store at ``root`` (a resolved path)."""
    key = (root, partition)
    with _indexes_lock:
        index = _indexes.get(key)
        if index is None:
            if len(_indexes) > 4096:
                _indexes.clear()
            index = _indexes[key] = TailKeyIndex()
        return index


def release(root: str) -> None:
    """Forget the indexes of the store at ``root`` (``Store.close``)."""
    with _indexes_lock:
        for key in [k for k in _indexes if k[0] == root]:
            del _indexes[key]
