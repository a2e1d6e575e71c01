"""Durable file operations on local disk: fsync a file or a directory's entries, and replace a
file whole (readers see the old bytes or the new, never a mix); the one opener of the files
the read paths read (:func:`open_input`, :func:`map_input`, :func:`open_fd`)."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa


def fsync_file(path: Path) -> None:
    """fsync a file (or, opened the same way, a directory: its entries) by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: Path) -> None:
    """Make a directory's entries (a create, rename or unlink in it) durable."""
    fsync_file(directory)


def replace_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to a temp name beside ``path``, fsync, rename over ``path``: readers see the
    old bytes or the new, whole. The caller syncs the directory (once for several files)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def open_input(path: "Path | str") -> pa.NativeFile:
    """Open a file a read path reads with plain reads (segments, tail files: a tail file can be cut
    back by its writer, which a memory map must never see). The one opener of such files, so a test
    can replace it and count the files opened and the bytes read."""
    return pa.OSFile(str(path), "rb")


def map_input(path: "Path | str") -> pa.NativeFile:
    """Memory-map an immutable file a read path reads (stream index runs: slices cost no copy).
    Replaceable by a test like :func:`open_input`."""
    return pa.memory_map(str(path), "r")


def open_fd(path: "Path | str") -> int:
    """Open a file a reader keeps open across reads (a tail file, its key file), read only. The one
    opener of such files, so a test can replace it and count the files opened."""
    return os.open(path, os.O_RDONLY)


def pread_fd(fd: int, length: int, offset: int) -> bytes:
    """``length`` bytes at ``offset`` of a file :func:`open_fd` opened (short at its end). The one
    positioned read of kept files, so a test can replace it and count the reads and bytes."""
    return os.pread(fd, length, offset)
