"""The durable tail of a partition log: checksummed frames appended to a local file.

One group commit is one frame: ``<u32 length><u32 crc32><JSON rows>``, written with one
``write`` and made durable with one ``fdatasync``. A torn or corrupt frame at the end (a
crash mid-write) is detected by its length or checksum and cut on recovery; readers stop
at the last whole frame, so nobody ever sees a partial record.

Tail files are named by the first position they hold. Sealing turns a closed tail file
into an immutable Parquet segment and then deletes the file.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any, Iterator

from ..errors import StorageError

_HEADER = struct.Struct("<II")
_SUFFIX = ".wal"
# Module-level so fault-injection tests can replace the raw write (e.g. to raise ENOSPC).
_write = os.write


def tail_file_name(first_position: int) -> str:
    return f"{first_position:020d}{_SUFFIX}"


def list_tail_files(directory: Path) -> list[tuple[int, Path]]:
    """Tail files in position order, as (first position, path)."""
    out = []
    for p in directory.glob(f"*{_SUFFIX}"):
        try:
            out.append((int(p.name[: -len(_SUFFIX)]), p))
        except ValueError:
            continue
    return sorted(out)


def encode_frame(rows: list[tuple[Any, ...]]) -> bytes:
    payload = json.dumps(rows, separators=(",", ":"), ensure_ascii=False).encode()
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def iter_frames(data: bytes) -> Iterator[tuple[int, list[list[Any]]]]:
    """Yield (end offset, rows) for each whole, checksummed frame; stop at the first bad one."""
    off, n = 0, len(data)
    while off + _HEADER.size <= n:
        length, crc = _HEADER.unpack_from(data, off)
        start, end = off + _HEADER.size, off + _HEADER.size + length
        if end > n:
            return
        payload = data[start:end]
        if zlib.crc32(payload) != crc:
            return
        try:
            rows = json.loads(payload)
        except ValueError:
            return
        yield end, rows
        off = end


def read_tail_file(path: Path) -> tuple[list[tuple[Any, ...]], int, int]:
    """Rows of every whole frame, the byte length they span, and the file's size."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], 0, 0
    rows: list[tuple[Any, ...]] = []
    valid = 0
    for end, frame_rows in iter_frames(data):
        rows.extend(tuple(r) for r in frame_rows)
        valid = end
    return rows, valid, len(data)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class TailWriter:
    """Appends group-commit frames to the open tail file; one fdatasync per frame."""

    def __init__(self, directory: Path, first_position: int) -> None:
        self.directory = directory
        self.first_position = first_position
        self.path = directory / tail_file_name(first_position)
        existed = self.path.exists()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.size = os.fstat(self._fd).st_size
        self.frames_written = 0
        if not existed:
            fsync_dir(directory)

    def append(self, rows: list[tuple[Any, ...]]) -> int:
        """Write one frame durably. On failure the file is cut back and StorageError raised."""
        frame = encode_frame(rows)
        try:
            written = 0
            while written < len(frame):
                written += _write(self._fd, frame[written:] if written else frame)
            os.fdatasync(self._fd)
        except OSError as exc:
            self._cut_back()
            reason = "disk full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else exc.strerror or str(exc)
            raise StorageError(
                f"durable write to {self.path} failed ({reason}); the batch was not acknowledged "
                "and the log is unchanged"
            ) from exc
        self.size += len(frame)
        self.frames_written += 1
        return len(frame)

    def _cut_back(self) -> None:
        try:
            os.ftruncate(self._fd, self.size)
            os.fdatasync(self._fd)
        except OSError:
            pass  # recovery cuts a torn frame by its checksum anyway

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
