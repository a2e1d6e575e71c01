"""How the storage conformance suite drives each shipped backend: its factory and its fault hooks.

The hooks reach into a backend's own files (a byte flipped in a tail frame, half a commit
object left behind) or its raw write calls; they are test tools, never used by the library.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Callable, Iterator

from es_actors.storage.local import wal
from es_actors.storage.local.backend import LocalBackend
from es_actors.storage.objects import ObjectBackend
from es_actors.storage.objects import blobs, records
from es_actors.testing.storage_conformance import BackendUnderTest, SimulatedCrash


def _failing(code: int) -> Callable[..., Any]:
    def fail(*_args: Any) -> Any:
        raise OSError(code, os.strerror(code))

    return fail


@contextlib.contextmanager
def _patched(owner: Any, name: str, replacement: Callable[..., Any]) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, replacement)
    try:
        yield
    finally:
        setattr(owner, name, original)


# -- local disk ---------------------------------------------------------------------------


def _local_fail_writes(code: int, stage: str) -> contextlib.AbstractContextManager[None]:
    return _patched(wal, "_write" if stage == "write" else "_fdatasync", _failing(code))


def _local_crash_mid_write(stage: str) -> contextlib.AbstractContextManager[None]:
    if stage == "sync":  # the whole frame is written; the process dies before its fdatasync returns
        def no_sync(_fd: int) -> None:
            raise SimulatedCrash("the process died before the write was synced")

        return _patched(wal, "_fdatasync", no_sync)

    def half(fd: int, data: bytes) -> int:
        os.write(fd, bytes(data[: len(data) // 2]))
        raise SimulatedCrash("the process died half-way through a write")

    return _patched(wal, "_write", half)


def _newest_tail(root: Path, partition: int) -> Path:
    files = wal.list_tail_files(root / "tail" / f"p{partition:04d}")
    assert files, "no tail file to damage"
    return files[-1][1]


def _local_tear_tail(root: Path, partition: int) -> None:
    path = _newest_tail(root, partition)
    frame = wal.encode_frame([[partition, 10**6, "Account", "x", 1]])
    with open(path, "ab") as f:
        f.write(frame[: len(frame) // 2])


def _local_damage_middle(root: Path, partition: int) -> None:
    path = _newest_tail(root, partition)
    data = bytearray(path.read_bytes())
    at = wal.FILE_HEADER_SIZE + wal.FRAME_HEADER_SIZE + 3  # inside the first frame's payload
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def local_kit() -> BackendUnderTest:
    return BackendUnderTest(
        "local disk",
        make=LocalBackend,
        fail_writes=_local_fail_writes,
        crash_mid_write=_local_crash_mid_write,
        tear_tail=_local_tear_tail,
        damage_middle=_local_damage_middle,
        why_not={"damage_newest_whole": "a local tail frame is appended in place: a damaged last frame followed "
                 "by nothing cannot be told from a write torn by a crash, so recovery cuts it (ADR-009)"},
    )


# -- whole objects on a directory -----------------------------------------------------------


def _object_fail_writes(code: int, stage: str) -> contextlib.AbstractContextManager[None]:
    return _patched(blobs, "_write" if stage == "write" else "_fsync", _failing(code))


def _object_crash_mid_write(stage: str) -> contextlib.AbstractContextManager[None]:
    if stage == "sync":  # every byte is written; the process dies before the first fsync returns
        def no_sync(_fd: int) -> None:
            raise SimulatedCrash("the process died before the put was synced")

        return _patched(blobs, "_fsync", no_sync)

    def half(fd: int, data: Any) -> int:
        os.write(fd, bytes(data[: len(data) // 2]))
        raise SimulatedCrash("the process died half-way through a put")

    return _patched(blobs, "_write", half)


def _tail_slots(root: Path, partition: int) -> list[Path]:
    return sorted((root / f"p{partition:04d}" / "tail").iterdir())


def _object_tear_tail(root: Path, partition: int) -> None:
    newest = _tail_slots(root, partition)[-1]
    torn = newest.with_name(f"{int(newest.name) + 1:020d}")
    data = records.encode({"slot": int(torn.name), "kind": "rows", "epoch": 1, "first": 10**6, "rows": [],
                           "after_slot": 0})
    torn.write_bytes(data[: len(data) // 2])


def _object_damage_middle(root: Path, partition: int) -> None:
    store = blobs.DirectoryBlobStore(root)
    for path in _tail_slots(root, partition):
        if records.Commit.decode(store.get(str(path.relative_to(root)))).kind == "rows":
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0xFF  # inside the commit's JSON: its checksum no longer matches
            path.write_bytes(bytes(data))
            return
    raise AssertionError("no commit object to damage")


def _object_damage_newest_whole(root: Path, partition: int) -> None:
    newest = _tail_slots(root, partition)[-1]
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the commit's JSON; the completion mark stays: a whole, damaged object
    newest.write_bytes(bytes(data))


def object_kit() -> BackendUnderTest:
    return BackendUnderTest(
        "whole objects (blobdir)",
        make=ObjectBackend.on_directory,
        fail_writes=_object_fail_writes,
        crash_mid_write=_object_crash_mid_write,
        tear_tail=_object_tear_tail,
        damage_middle=_object_damage_middle,
        damage_newest_whole=_object_damage_newest_whole,
    )
