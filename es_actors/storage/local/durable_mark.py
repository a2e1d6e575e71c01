"""``DURABLE``: how far a partition's tail is durable, published by its writer after each sync."""

from __future__ import annotations

import logging
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_MARK = struct.Struct("<QQI")  # last durable position, tail file first position, crc32
# Since session 22, 16 more bytes: how far the newest tail file's key file is published (tail_keys.py):
# its length and running crc32, then a crc32 of the 32 bytes before (base and key fields). Readers of
# the 20-byte mark read the same first 20 bytes; a mark without the extension names no key file.
_KEYS = struct.Struct("<QI")
_EXT_SIZE = _MARK.size + _KEYS.size + 4  # 36 bytes


@dataclass(frozen=True, slots=True)
class KeysMark:
    """The newest tail file's key file as its writer published it with the durable mark."""

    tail_first: int  # the tail file (named by its first position) whose key file this is
    length: int  # bytes of the key file that describe durable frames (0: the writer keeps none)
    crc: int  # crc32 of those bytes


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

    def publish(self, last_position: int, tail_first: int, keys: tuple[int, int] = (0, 0)) -> None:
        """Publish the mark; ``keys``: (length, crc32) of the tail file's key file so far."""
        head = struct.pack("<QQ", last_position, tail_first)
        mark = head + struct.pack("<I", zlib.crc32(head)) + _KEYS.pack(*keys)
        os.pwrite(self._fd, mark + struct.pack("<I", zlib.crc32(mark)), 0)

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
        return cls.read_with_keys_at(path, attempts)[0]

    @classmethod
    def read_with_keys_at(cls, path: str, attempts: int = 50) -> tuple[int | None, KeysMark | None]:
        """The last durable position and, if the writer published one with it, its :class:`KeysMark`."""
        held: int | None = None
        ext_misses = 0
        for _ in range(attempts):  # plain os calls: readers do this once per read
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                return None, None
            try:
                data = os.read(fd, 64)
            finally:
                os.close(fd)
            if len(data) < _MARK.size:
                return None, None
            last, first, crc = _MARK.unpack_from(data, 0)
            if zlib.crc32(data[:16]) != crc:
                continue  # a read racing the writer's pwrite: look again
            if len(data) < _EXT_SIZE:
                return int(last), None  # a writer of before session 22: no key file
            if zlib.crc32(data[:32]) == struct.unpack_from("<I", data, 32)[0]:
                length, kcrc = _KEYS.unpack_from(data, _MARK.size)
                return int(last), KeysMark(int(first), int(length), int(kcrc))
            # torn against a pwrite, or an older writer's 20-byte marks over a newer one's 36 bytes
            held, ext_misses = int(last), ext_misses + 1
            if ext_misses >= 3:
                return held, None
        if held is not None:
            return held, None
        # Damaged: it is evidence, not data. Readers then see every whole frame (as in format 1)
        # and the next writer rewrites it from what it recovers.
        log.warning("%s fails its checksum; ignoring it", path)
        return None, None
