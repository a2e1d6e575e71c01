"""The durable tail of a partition log: self-describing, checksummed frames in a local file.

Format 2 (``store.json`` ``format_version`` 2, ADR-009). A tail file starts with a
24-byte header (``ESWAL\\x00\\x02\\n``, its first position, a header checksum); one group
commit is one frame, written with one ``write`` and made durable with one ``fdatasync``::

    <u32 FRAME_MAGIC><u32 payload length><u64 first position><u32 row count>
    <u32 crc32(payload)><u32 crc32(the 24 bytes before)><JSON rows>

The magic, the header checksum and the first position make damage decidable: a frame that
fails its check while a complete, valid frame follows it is *corruption* (refused, every
byte kept); only a bad end with nothing valid after it, in the newest tail file, is a
*torn tail* left by a crash (cut on recovery). A zero-filled end fails the magic, so it
reads as torn, never as a frame (``crc32(b"") == 0`` cannot make an empty frame pass).

Format 1 files (no file header, frames ``<u32 len><u32 crc32><JSON rows>``) stay
readable; a writer refuses them until ``es-actors upgrade`` rewrites them (see upgrade.py).

Tail files are named by the first position they hold. Sealing turns a closed tail file
into an immutable Parquet segment and then deletes the file. The writer publishes how far
the log is durable in ``DURABLE`` (see :class:`DurableMark`); readers stop there.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from es_actors.errors import StorageError, StoreCorrupted
from es_actors.storage.local.durable_mark import DurableMark
from es_actors.storage.files import fsync_dir
from es_actors.storage.local.stat_cache import UnchangedCache

FILE_MAGIC = b"ESWAL\x00\x02\n"
_FILE_HEADER = struct.Struct("<8sQII")  # magic, first position, reserved (0), crc32 of the 20 bytes before
FILE_HEADER_SIZE = _FILE_HEADER.size  # 24 bytes
FRAME_MAGIC = 0x57AF_E5A1
_FRAME_MAGIC_BYTES = struct.pack("<I", FRAME_MAGIC)
_FRAME = struct.Struct("<IIQII")  # magic, payload length, first position, row count, payload crc
FRAME_HEADER_SIZE = _FRAME.size + 4  # + crc32 of the header
_SUFFIX = ".wal"
Row = tuple[Any, ...]
log = logging.getLogger(__name__)
# Module-level so fault-injection tests can replace the raw calls (ENOSPC, EIO, a held sync).
_write = os.write
_fdatasync = os.fdatasync


def tail_file_name(first_position: int) -> str:
    return f"{first_position:020d}{_SUFFIX}"


def list_tail_files(directory: Path) -> list[tuple[int, Path]]:
    """Tail files in position order, as (first position, path)."""
    out = []
    try:
        entries = list(directory.glob(f"*{_SUFFIX}"))
    except FileNotFoundError:
        return []
    for p in entries:
        try:
            out.append((int(p.name[: -len(_SUFFIX)]), p))
        except ValueError:
            continue
    return sorted(out)


_tail_listings: UnchangedCache[list[tuple[int, Path]]] = UnchangedCache(4096)


def list_tail_files_cached(directory: Path) -> list[tuple[int, Path]]:
    """:func:`list_tail_files`, reusing this process's last listing while the directory is unchanged
    (one stat instead of a glob: readers list per read). Tail files are created and removed (seal)
    in it, which changes its mtime; ``DURABLE`` and frames are written in place, which does not."""
    key = str(directory)
    try:
        st = os.stat(key)
    except FileNotFoundError:
        return []
    return list(_tail_listings.get(key, st, lambda: list_tail_files(directory)))


def file_header(first_position: int) -> bytes:
    head = FILE_MAGIC + struct.pack("<QI", first_position, 0)  # the 4 reserved bytes are checked too
    return head + struct.pack("<I", zlib.crc32(head))


def encode_frame(rows: list[Row] | list[list[Any]], first_position: int | None = None) -> bytes:
    """One format-2 frame; ``first_position`` defaults to the first row's position (column 1)."""
    payload = json.dumps(rows, separators=(",", ":"), ensure_ascii=False).encode()
    first = rows[0][1] if first_position is None and rows else (first_position or 0)
    head = _FRAME.pack(FRAME_MAGIC, len(payload), first, len(rows), zlib.crc32(payload))
    return head + struct.pack("<I", zlib.crc32(head)) + payload


# -- reading -------------------------------------------------------------------------------


@dataclass
class Frame:
    offset: int
    end: int
    first_position: int
    rows: list[Row]
    header_crc: int = 0  # the crc32 that ends a format-2 frame's header (the writer's key files name it)


@dataclass
class Damage:
    """Bytes of a tail file that fail their checks while valid data follows (or in a closed file)."""

    path: Path
    offset: int  # where the bad bytes start
    resume_offset: int | None  # the next valid frame, if any
    first_lost: int  # positions that cannot be read
    last_lost: int | None  # None: up to whatever the next file or frame starts with
    reason: str

    def describe(self) -> str:
        last = "?" if self.last_lost is None else str(self.last_lost)
        lost = ("no positions lost" if self.last_lost is not None and self.last_lost < self.first_lost
                else f"positions {self.first_lost}..{last} unreadable")
        return f"{self.path} at byte {self.offset}: {self.reason}; {lost}"


@dataclass
class TailScan:
    """What a tail file holds: whole frames, then either its end, a torn end, or damage."""

    path: Path
    version: int  # 1 or 2
    size: int
    frames: list[Frame] = field(default_factory=list)
    valid_end: int = 0  # bytes up to the end of the last good frame before any damage
    damage: list[Damage] = field(default_factory=list)
    torn_bytes: int = 0  # a bad end with nothing valid after it

    @property
    def rows(self) -> list[Row]:
        return [r for f in self.frames for r in f.rows]

    def rows_before_damage(self) -> list[Row]:
        first_bad = self.damage[0].offset if self.damage else None
        return [r for f in self.frames if first_bad is None or f.offset < first_bad for r in f.rows]


def checked_frame_at(data: bytes, off: int) -> tuple[tuple[int, int, int, int] | None, str]:
    """``(first position, row count, payload start, payload end)`` of a format-2 frame at ``off``
    whose marker, header checksum and payload checksum all pass (the payload is not decoded), or
    ``(None, why not)``. Readers that skip frames they do not need check them with this alone."""
    n = len(data)
    if off + FRAME_HEADER_SIZE > n:
        return None, "short frame header"
    magic, length, first, count, pcrc = _FRAME.unpack_from(data, off)
    if magic != FRAME_MAGIC:
        return None, "no frame marker"
    (hcrc,) = struct.unpack_from("<I", data, off + _FRAME.size)
    if zlib.crc32(data[off : off + _FRAME.size]) != hcrc:
        return None, "frame header checksum mismatch"
    start = off + FRAME_HEADER_SIZE
    end = start + length
    if end > n:
        return None, f"frame of {length} bytes runs past the end of the file"
    if zlib.crc32(data[start:end]) != pcrc:
        return None, "frame payload checksum mismatch"
    return (first, count, start, end), ""


def frame_header_crc(data: bytes, off: int = 0) -> int:
    """The crc32 that ends the header of the frame at ``off`` (it covers the payload's crc32)."""
    return int(struct.unpack_from("<I", data, off + _FRAME.size)[0])


def frame_rows(payload: bytes, first: int, count: int) -> tuple[list[Row] | None, str]:
    """A checked frame's rows, or ``(None, why not)`` if they are not JSON rows matching its header."""
    try:
        rows = [tuple(r) for r in json.loads(payload)]
    except (ValueError, TypeError):
        return None, "frame payload is not valid JSON rows"
    if len(rows) != count or (rows and rows[0][1] != first):
        return None, "frame rows do not match its header"
    return rows, ""


def file_header_first(data: bytes) -> int | None:
    """The first position a format-2 file header holds, or None if it is not a whole, checked header."""
    if len(data) < FILE_HEADER_SIZE:
        return None
    magic, first, _reserved, hcrc = _FILE_HEADER.unpack_from(data, 0)
    return first if magic == FILE_MAGIC and zlib.crc32(data[:20]) == hcrc else None


def _frame_at(data: bytes, off: int) -> tuple[Frame | None, str]:
    """A valid format-2 frame at ``off``, or (None, why not)."""
    checked, why = checked_frame_at(data, off)
    if checked is None:
        return None, why
    first, count, start, end = checked
    rows, why = frame_rows(data[start:end], first, count)
    if rows is None:
        return None, why
    return Frame(off, end, first, rows, frame_header_crc(data, off)), ""


def _next_valid_frame(data: bytes, off: int) -> Frame | None:
    """Resynchronise: the first valid frame starting after ``off``."""
    k = data.find(_FRAME_MAGIC_BYTES, off + 1)
    while k >= 0:
        frame, _why = _frame_at(data, k)
        if frame is not None:
            return frame
        k = data.find(_FRAME_MAGIC_BYTES, k + 1)
    return None


def scan_tail_bytes(path: Path, data: bytes, newest: bool, expected_first: int | None = None) -> TailScan:
    """Classify every byte of a tail file: frames, a torn end (newest file only) or damage.

    ``expected_first`` is the position the file should start with (from its name). Every
    frame must continue the positions of the one before; a frame that does not is damage.
    """
    if not data:  # created, nothing written yet: only the newest file may be like that
        scan = TailScan(path, 2, 0)
        if not newest:
            scan.damage.append(Damage(path, 0, None, expected_first or 0, None, "closed tail file is empty"))
        return scan
    if len(data) < FILE_HEADER_SIZE and (FILE_MAGIC.startswith(data[:8]) or not data.strip(b"\x00")):
        # created, header not yet whole: harmless in the newest file, damage in a closed one
        scan = TailScan(path, 2, len(data))
        if newest:
            scan.torn_bytes = len(data)
        else:
            scan.damage.append(Damage(path, 0, None, expected_first or 0, None, "closed tail file has no whole header"))
        return scan
    if not data.startswith(FILE_MAGIC) and _next_valid_frame(data, -1) is None:
        from es_actors.storage.local.wal_v1 import scan_v1  # format 1: readable until upgraded

        return scan_v1(path, data, newest, expected_first)
    scan = TailScan(path, 2, len(data))
    magic, first, _reserved, hcrc = _FILE_HEADER.unpack_from(data.ljust(FILE_HEADER_SIZE, b"\x00"), 0)
    header_ok = magic == FILE_MAGIC and zlib.crc32(data[:20]) == hcrc
    if not header_ok:
        # The frames carry their own positions: the header's damage loses none of them.
        known = expected_first if expected_first is not None else 0
        scan.damage.append(Damage(path, 0, FILE_HEADER_SIZE, known, known - 1, "tail file header is damaged"))
        first = known
    elif expected_first is not None and first != expected_first:  # a checked header outranks a name
        scan.damage.append(Damage(path, 0, FILE_HEADER_SIZE, first, first - 1,
                                  f"tail file named for position {expected_first} holds position {first}"))
    scan.valid_end = 0 if scan.damage else FILE_HEADER_SIZE
    return scan_frames(scan, data, FILE_HEADER_SIZE, first, newest)


def scan_frames(scan: TailScan, data: bytes, off: int, expected: int, newest: bool, base: int = 0) -> TailScan:
    """Frames of ``data`` from ``off`` on (``data`` starts at byte ``base`` of the file), the
    first expected to hold position ``expected``; fills ``scan`` as :func:`scan_tail_bytes`."""
    n = len(data)
    path = scan.path
    while off < n:
        frame, why = _frame_at(data, off)
        if frame is not None and frame.first_position != expected:  # checks out, but out of place:
            scan.damage.append(Damage(path, base + off, base + frame.end, expected, expected - 1,  # kept, so
                                      f"frame holds position {frame.first_position} where {expected} was expected"))
            expected = frame.first_position  # a repair can still put it in its place
        if frame is not None:
            frame.offset, frame.end = base + frame.offset, base + frame.end
            scan.frames.append(frame)
            expected += len(frame.rows)
            off = frame.end - base
            if not scan.damage:
                scan.valid_end = frame.end
            continue
        following = _next_valid_frame(data, off)
        if following is None:
            if newest:
                scan.torn_bytes = n - off  # a crash mid-write: only the end is bad
            else:
                scan.damage.append(Damage(path, base + off, None, expected, None,
                                          why + " in a closed tail file (only the newest file can be torn)"))
            return scan
        scan.damage.append(Damage(path, base + off, base + following.offset, expected,
                                  following.first_position - 1, why + "; valid frames follow"))
        off = following.offset
        expected = following.first_position
    return scan


def scan_tail_file(path: Path, newest: bool, expected_first: int | None = None) -> TailScan:
    """:func:`scan_tail_bytes` of a file; FileNotFoundError if it is gone (a seal moved it)."""
    return scan_tail_bytes(path, path.read_bytes(), newest, expected_first)


def damage_error(damage: list[Damage], what: str = "the write-ahead tail") -> StoreCorrupted:
    lines = "; ".join(d.describe() for d in damage)
    return StoreCorrupted(
        f"{what} is damaged: {lines}. Every byte was left as it was; run `es-actors repair --store <path>` "
        "to quarantine the damage, keep every valid frame and record the lost positions (see the README)"
    )


def read_tail_rows(path: Path, newest: bool, durable_last: int | None = None) -> list[Row]:
    """Rows of a tail file that a reader may see: whole frames up to the durable mark.

    Damage raises :class:`StoreCorrupted` naming the file, offset and positions; a torn end is
    simply not returned. FileNotFoundError if the file vanished (a seal moved it: read again).
    """
    scan = scan_tail_file(path, newest, first_position_of(path))
    if scan.damage:
        raise damage_error(scan.damage)
    rows = scan.rows
    if scan.torn_bytes and durable_last is not None:
        kept = rows[-1][1] if rows else (first_position_of(path) or 1) - 1
        if kept < durable_last:  # those positions were synced before the mark said so: not a tear
            raise damage_error([Damage(path, scan.valid_end, None, kept + 1, durable_last,
                                       "the end fails its checks below the durable mark (DURABLE)")])
    if durable_last is not None and rows and rows[-1][1] > durable_last:
        rows = [r for r in rows if r[1] <= durable_last]
    return rows


def first_position_of(path: Path) -> int | None:
    """The first position a tail file's name says it holds (None for a foreign name)."""
    try:
        return int(path.name[: -len(_SUFFIX)])
    except ValueError:
        return None


def read_tail_file(path: Path) -> tuple[list[Row], int, int]:
    """Rows of every whole frame before any damage, the byte length they span, and the file's size."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], 0, 0
    scan = scan_tail_bytes(path, data, newest=True, expected_first=first_position_of(path))
    return scan.rows_before_damage(), scan.valid_end, len(data)


def high_water(durable: int | None, tails: list[tuple[int, Path]]) -> int:
    """The highest position the tail shows was ever used (0 if none): the durable mark, or the
    name of the newest tail file minus one (a file is named by the next position when created).
    Fewer readable positions than this means files went missing, never a torn write."""
    return max([durable or 0, *(first - 1 for first, _p in tails)])


def tail_high_water(directory: Path) -> int:
    """:func:`high_water` of a tail directory as it is now."""
    return high_water(DurableMark.read(directory), list_tail_files(directory))


class TailWriter:
    """Appends group-commit frames to the open tail file; one fdatasync per frame.

    After a failed ``fdatasync`` the page cache's state is unknown (Linux may have dropped the
    dirty pages and will not report it again): the writer refuses every later append, so the
    owner stops and recovers from disk (:attr:`failed`).
    """

    def __init__(self, directory: Path, first_position: int, frames: list[Frame] | None = None) -> None:
        """``frames``: the frames an existing file holds (recovery), for its key file (tail_keys.py)."""
        from es_actors.storage.local.tail_keys import KeysWriter  # it imports the stream index, which imports this

        self.directory = directory
        self.first_position = first_position
        self.path = directory / tail_file_name(first_position)
        self.failed: str | None = None
        existed = self.path.exists()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.size = os.fstat(self._fd).st_size
        self.frames_written = 0
        if not existed or self.size == 0:
            header = file_header(first_position)
            try:
                os.write(self._fd, header)
                os.fdatasync(self._fd)
            except OSError:
                os.close(self._fd)
                self.path.unlink(missing_ok=True)
                raise
            self.size = len(header)
        if not existed:
            fsync_dir(directory)
        self._keys = KeysWriter(self.path, first_position, frames or ())

    @property
    def keys_published(self) -> tuple[int, int]:
        """(length, crc32) of the key file, for the durable mark."""
        return self._keys.published

    def append(self, rows: list[Row]) -> int:
        """Write one frame durably. On failure StorageError; after a failed sync the writer is dead."""
        if self.failed is not None:
            raise StorageError(f"{self.path}: {self.failed}; the partition restarts and recovers from disk")
        frame = encode_frame(rows)
        written = 0
        keys_before = self._keys.published
        try:
            while written < len(frame):
                written += _write(self._fd, frame[written:] if written else frame)
        except OSError as exc:
            if not self._cut_back():  # a partial frame may stay, unsynced: nothing more can be trusted
                self.failed = f"write failed ({exc.strerror or exc}) and could not be cut back"
            reason = "disk full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else exc.strerror or str(exc)
            raise StorageError(
                f"durable write to {self.path} failed ({reason}); the batch was not acknowledged "
                "and the log is unchanged"
            ) from exc
        self._keys.append(rows, self.size, frame)  # published with the durable mark, after the sync
        try:
            _fdatasync(self._fd)
        except OSError as exc:
            self._keys.cut_back(*keys_before)
            cut = self._cut_back()
            self.failed = f"fdatasync failed ({exc.strerror or exc})"
            outcome = ("the frame was cut back; the batch was not acknowledged" if cut else
                       "the outcome is unknown: resubmit with the same command ids to learn it")
            raise StorageError(
                f"durable write to {self.path} failed: {self.failed}; {outcome}. The partition stops "
                "writing and recovers from disk"
            ) from exc
        self.size += len(frame)
        self.frames_written += 1
        return len(frame)

    def _cut_back(self) -> bool:
        try:
            os.ftruncate(self._fd, self.size)
            _fdatasync(self._fd)
            return True
        except OSError:
            return False  # recovery cuts a torn end by its checks anyway

    def close(self, rotated: bool = False) -> None:
        """Close the file; ``rotated``: no more appends will come (its key file gets its trailer)."""
        if rotated:
            self._keys.finish()
        self._keys.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
