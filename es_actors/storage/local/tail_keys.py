"""The tail's key files: which frame holds each unsealed position, kept by the writer (ADR-015).

Every reader process used to parse every frame of a partition's tail to find one aggregate's
unsealed rows, so the tail cost frames x reader processes (ADR-015, "The tail's cost under
writes"). Beside each tail file ``N.wal`` the writer keeps ``N.wal.keys``: a 32-byte header (magic,
the tail file's inode and first position, a crc32), then one 32-byte record per row it appends
(position, stream hash, offset, length and header crc32 of the frame holding it), written with the frame and
never synced. Readers take the records in bulk (numpy, :mod:`tail_key_index`) and check them with
one crc32 per read:

- the newest file's records are covered by a running crc32 that the writer publishes in
  ``DURABLE`` with the durable position (:class:`~durable_mark.KeysMark`), written after the
  frame's sync: a reader takes exactly the published bytes, and they must match;
- a closed file (rotated, waiting for the sealer) ends with a trailer record (position -1, the
  running crc32 and the length before it).

The key files are derived data: recovery rebuilds them from the tail files it adopts, a seal
removes them with their tail file, and a lost, short, stale or damaged key file costs a reader
speed (it parses the tail as before), never a row.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from es_actors.codecs.rows import COL
from es_actors.storage.local.stream_index import runs
from es_actors.storage.local.wal import Frame, frame_header_crc

Row = tuple[Any, ...]
log = logging.getLogger(__name__)
SUFFIX = ".keys"
MAGIC = b"ESKEYS03"  # the format, stream_hash's function included: a change to either needs a new magic
_HEADER = struct.Struct("<8sQQ")  # magic, tail file inode, tail file first position; + crc32 + 4 reserved
HEADER_SIZE = 32
# The frame's header crc32 binds a record to the frame's bytes, not only to its place: a file of
# another store at the same path, inode and offsets (ext4 hands freed inodes back) is told apart.
RECORD = np.dtype([("position", "<i8"), ("hash", "<u8"), ("offset", "<u8"), ("length", "<u4"), ("crc", "<u4")])
RECORD_SIZE = RECORD.itemsize  # 32
RECORD_STRUCT = struct.Struct("<qQQII")  # the same record, for a few at a time
TRAILER_POSITION = -1  # a closed file's last record: (-1, running crc32, length before it, 0, 0)
_POS, _TYPE, _ID = COL["position"], COL["aggregate_type"], COL["aggregate_id"]


def keys_path(tail_path: Path) -> Path:
    return tail_path.with_name(tail_path.name + SUFFIX)


def header(inode: int, first: int) -> bytes:
    head = _HEADER.pack(MAGIC, inode, first)
    return head + struct.pack("<II", zlib.crc32(head), 0)


def parse_header(data: bytes) -> tuple[int, int] | None:
    """(tail inode, first position) of a whole, checked header, else None."""
    if len(data) < HEADER_SIZE or zlib.crc32(data[:24]) != struct.unpack_from("<I", data, 24)[0]:
        return None
    magic, inode, first = _HEADER.unpack_from(data, 0)
    return (inode, first) if magic == MAGIC else None


def encode_records(rows: Iterable[Row], frame_offset: int, frame_length: int, frame_crc: int) -> bytes:
    """The records of one frame's rows; ``frame_crc``: the crc32 that ends the frame's header."""
    hash_of = runs.stream_hash  # looked up per call, as the reader does (a test may replace it)
    return b"".join(RECORD_STRUCT.pack(r[_POS], hash_of(r[_TYPE], r[_ID]), frame_offset, frame_length, frame_crc)
                    for r in rows)


def trailer(crc: int, length: int) -> bytes:
    return RECORD_STRUCT.pack(TRAILER_POSITION, crc, length, 0, 0)


class KeysWriter:
    """The writer's key file of one tail file. Any failure turns it off (published as length 0):
    readers then parse the tail, and the next recovery writes it afresh."""

    def __init__(self, tail_path: Path, first: int, frames: Iterable[Frame] = ()) -> None:
        """``frames``: the frames the tail file already holds (recovery: as its scan found them)."""
        self.path = keys_path(tail_path)
        self._fd = -1
        self.size = 0
        self.crc = 0
        try:
            data = header(os.stat(tail_path).st_ino, first) + b"".join(
                encode_records(f.rows, f.offset, f.end - f.offset, f.header_crc) for f in frames)
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                _write_all(fd, data)
                os.rename(tmp, self.path)  # a reader never sees a key file half rewritten
            except BaseException:
                os.close(fd)
                tmp.unlink(missing_ok=True)
                raise
            self._fd = fd
            self.size, self.crc = len(data), zlib.crc32(data)
        except Exception:  # derived data: whatever fails turns it off, never the writer's recovery
            self.close()

    @property
    def published(self) -> tuple[int, int]:
        """(length, crc32) for the durable mark; (0, 0) once turned off."""
        return (self.size, self.crc) if self._fd >= 0 else (0, 0)

    def append(self, rows: list[Row], frame_offset: int, frame: bytes) -> None:
        if self._fd < 0:
            return
        try:
            data = encode_records(rows, frame_offset, len(frame), frame_header_crc(frame))
            _write_all(self._fd, data)
            self.size += len(data)
            self.crc = zlib.crc32(data, self.crc)
        except Exception:  # never an append's failure: the frame is written and about to be synced
            self.close()

    def cut_back(self, size: int, crc: int) -> None:
        """Back to ``size`` bytes (a frame was cut back), or off if that fails."""
        if self._fd < 0:
            return
        try:
            os.ftruncate(self._fd, size)
            self.size, self.crc = size, crc
        except OSError:
            self.close()

    def finish(self) -> None:
        """The file is closed for appends (rotation): end it with its trailer, then close."""
        if self._fd >= 0:
            try:
                _write_all(self._fd, trailer(self.crc, self.size))
            except OSError:
                pass  # no trailer: readers parse this file's frames until it is sealed
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def rebuild_closed(tail_path: Path, first: int, frames: Iterable[Frame]) -> None:
    """Write a closed tail file's key file afresh from its frames, with its trailer (recovery)."""
    KeysWriter(tail_path, first, frames).finish()


def remove(tail_path: Path) -> None:
    """Remove a tail file's key file (the tail file was sealed, dropped or rewritten). Never raises:
    a key file that cannot be removed is left (readers check it; a seal or a recovery goes on)."""
    try:
        keys_path(tail_path).unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot remove %s: %s", keys_path(tail_path), exc)


def remove_orphans(tail_dir: Path) -> None:
    """Remove key files whose tail file is gone (a crash between the two unlinks of a seal) and
    temporary ones a crash left mid-rewrite (recovery, with no writer at work)."""
    try:
        names = os.listdir(tail_dir)
    except FileNotFoundError:
        return
    for name in names:
        orphan = name.endswith(SUFFIX) and name[: -len(SUFFIX)] not in names
        if orphan or (name.startswith(".") and name.endswith(SUFFIX + ".tmp")):
            try:
                os.unlink(tail_dir / name)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot remove %s: %s", tail_dir / name, exc)
