"""``DURABLE``: how far a partition's tail is durable, published by its writer after each sync."""

from __future__ import annotations

import logging
import os
import struct
import zlib
from pathlib import Path

log = logging.getLogger(__name__)

_MARK = struct.Struct("<QQI")  # last durable position, tail file first position, crc32


class DurableMark:
    """How far the log is durable, published by the writer after each ``fdatasync``.

    A frame is visible in the page cache as soon as it is written, before it is durable; a
    reader that used it could keep an event that a machine crash then takes away. The writer
    overwrites 20 bytes of ``DURABLE`` (``pwrite``, no sync: if they are lost, a reader sees
    less, never more, because they are written only after the frame's sync) and readers stop
    at the position it names. The writer's recovery republishes it from what it recovered.
    """

    NAME = "DURABLE"

    def __init__(self, directory: Path) -> None:
        self.path = directory / self.NAME
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)

    def publish(self, last_position: int, tail_first: int) -> None:
        head = struct.pack("<QQ", last_position, tail_first)
        os.pwrite(self._fd, head + struct.pack("<I", zlib.crc32(head)), 0)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    @classmethod
    def damage(cls, directory: Path) -> str | None:
        """Why ``DURABLE`` cannot be trusted, or None (it checks out, it is absent, or a writer has
        just created it and not yet published: empty)."""
        path = directory / cls.NAME
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            return f"{cls.NAME} cannot be read ({exc})"
        if not data:
            return None
        if len(data) < _MARK.size:
            return f"{cls.NAME} holds {len(data)} bytes, a mark is {_MARK.size}: how far the tail was durable is unknown"
        if zlib.crc32(data[:16]) != _MARK.unpack_from(data, 0)[2]:
            return f"{cls.NAME} fails its checksum: how far the tail was durable is unknown"
        return None

    @classmethod
    def read(cls, directory: Path, attempts: int = 50) -> int | None:
        """The last durable position, or None if no writer of format 2 ever published one."""
        return cls.read_at(os.path.join(directory, cls.NAME), attempts)

    @classmethod
    def read_at(cls, path: str, attempts: int = 50) -> int | None:
        """:meth:`read` of the mark at ``path`` (a reader that keeps the joined path: per read)."""
        for _ in range(attempts):  # plain os calls: readers do this once per read
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                return None
            try:
                data = os.read(fd, 64)
            finally:
                os.close(fd)
            if len(data) < _MARK.size:
                return None
            last, first, crc = _MARK.unpack_from(data, 0)
            if zlib.crc32(data[:16]) == crc:
                return int(last)
            # a read racing the writer's pwrite: look again
        # Damaged: it is evidence, not data. Readers then see every whole frame (as in format 1)
        # and the next writer rewrites it from what it recovers.
        log.warning("%s fails its checksum; ignoring it", path)
        return None
