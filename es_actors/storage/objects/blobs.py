"""Whole-object operations on a local directory: the one class an S3 (or GCS) client replaces.

``put_if_absent`` opens the final name with ``O_CREAT | O_EXCL`` (of two writers of one key,
exactly one creates it), writes the bytes, fsyncs, then writes a 16-byte completion mark and
fsyncs again. There is no append to an existing object, no rename and no overwrite. ``get``
returns an object only once its mark is there, so, as with an object store's PUT, an
object is seen whole and durable or not at all (:class:`ObjectIncomplete` while it is being
written or after a crash tore it). A failed put deletes what it began.
"""

from __future__ import annotations

import os
from pathlib import Path

from es_actors.storage.api import Capabilities, ObjectIncomplete

# Module-level so fault-injection tests can replace the raw calls (ENOSPC, EIO, a crash mid-write).
_write = os.write
_fsync = os.fsync
_COMPLETE = b"\x00ES-OBJECT-DONE\n"  # written after the data's fsync: the object is whole and durable

DIRECTORY_BLOB_CAPABILITIES = Capabilities(
    can_append=False, can_rename=False, can_fsync=True, can_lock=False, atomic_put=True,
    injects_write_faults=True, background_sealing=False,
)


def ends_with_completion_mark(path: Path) -> bool:
    """Whether a file was written by :meth:`DirectoryBlobStore.put_if_absent` and finished (to tell a
    whole-object store's files from another backend's)."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        if size < len(_COMPLETE):
            return False
        f.seek(size - len(_COMPLETE))
        return f.read() == _COMPLETE


class DirectoryBlobStore:
    """:class:`~es_actors.storage.api.BlobStore` on a local directory (keys are relative paths)."""

    capabilities = DIRECTORY_BLOB_CAPABILITIES

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"{key!r} is not a relative object key")
        return self.root / key

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)  # a "directory" is only a key prefix
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        try:
            for part in (data, _COMPLETE):
                view = memoryview(part)
                written = 0
                while written < len(view):
                    written += _write(fd, view[written:])
                _fsync(fd)
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)  # not acknowledged: take back what was begun
            raise
        except BaseException:
            os.close(fd)  # e.g. a simulated crash: the partial object stays, as after a real one
            raise
        os.close(fd)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)  # the new name is durable too
        finally:
            os.close(dfd)
        return True

    def get(self, key: str) -> bytes:
        data = self._path(key).read_bytes()
        if not data.endswith(_COMPLETE):
            raise ObjectIncomplete(f"{key}: being written, or torn by a crash")
        return data[: -len(_COMPLETE)]

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        try:
            names = os.listdir(base)
        except FileNotFoundError:
            return []
        stem = prefix if prefix.endswith("/") or not prefix else prefix + "/"
        return sorted(stem + n for n in names if not (base / n).is_dir())

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)
