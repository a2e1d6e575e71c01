"""One unsealed tail file and its key file as a reader keeps them open (:mod:`tail_key_index`).

Kept open across reads, so a read costs positioned reads, not opens. A descriptor reads the file it
was opened on: the pair is bound to both files' (device, inode) when opened, and a pair opened again
(after :mod:`kept_files` closed it past the process's budget) must find the same files, else the
index starts over.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from es_actors.storage import files
from es_actors.storage.local import tail_keys

Identity = tuple[int, int, int, int]  # (device, inode) of the key file, then of the tail file


class KeysUnusable(Exception):
    """The key files do not check out for this read: parse the tail instead."""


def identity(tail: Path) -> Identity | None:
    """The :data:`Identity` of a tail file and its key file at their paths now (None: one is gone)."""
    try:
        ks, ts = os.stat(tail_keys.keys_path(tail)), os.stat(tail)
    except OSError:
        return None
    return ks.st_dev, ks.st_ino, ts.st_dev, ts.st_ino


class KeyFile:
    """One tail file and its key file, kept open, and how far the key file has been taken."""

    __slots__ = ("first", "length", "crc", "next_position", "closed", "keys_fd", "tail_fd", "ident")

    def __init__(self, first: int) -> None:
        self.first = first
        self.length = 0  # bytes taken (header included)
        self.crc = 0  # crc32 of those bytes
        self.next_position = first
        self.closed = False  # its trailer was taken: nothing more will come
        self.keys_fd = self.tail_fd = -1
        self.ident: Identity | None = None  # of the files as first opened

    @property
    def inode(self) -> int:
        """The tail file's inode, as the key file's header must name it (-1: not opened yet)."""
        return self.ident[3] if self.ident is not None else -1

    def open(self, tail: Path) -> None:
        """Open the tail file and its key file. KeysUnusable: the key file is missing, unreadable
        or not the one first opened; FileNotFoundError: the tail file was sealed meanwhile."""
        kp = tail_keys.keys_path(tail)
        try:
            try:
                self.keys_fd = files.open_fd(kp)
            except FileNotFoundError:
                if tail.exists():
                    raise KeysUnusable(f"{kp} is missing") from None
                raise  # sealed meanwhile: the caller reads again
            except OSError as exc:  # not a readable file (a directory, no permission, EIO): derived data
                raise KeysUnusable(f"{kp} cannot be opened: {exc}") from None
            self.tail_fd = files.open_fd(tail)  # FileNotFoundError: sealed meanwhile
            ks, ts = os.fstat(self.keys_fd), os.fstat(self.tail_fd)
            ident = (ks.st_dev, ks.st_ino, ts.st_dev, ts.st_ino)
            if self.ident is not None and ident != self.ident:  # opened again (closed past the budget)
                raise KeysUnusable(f"{tail}: replaced since its records were taken")
            self.ident = ident
        except BaseException:
            self.close()
            raise

    def close(self, _close: Any = os.close) -> None:  # (bound here: __del__ may run at exit, os gone)
        for fd in (self.keys_fd, self.tail_fd):
            if fd >= 0:
                _close(fd)
        self.keys_fd = self.tail_fd = -1
