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


# -- whole objects on S3 (a real S3-compatible server on 127.0.0.1) -------------------------

S3_TEST_BUCKET = "es-actors-conformance"


def _s3_prefix(root: Path) -> str:
    """One key prefix per test directory (a restart on the same directory finds the same objects)."""
    import hashlib

    return "t-" + hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:20]


def _s3_blobs(root: Path) -> Any:
    from es_actors.storage.objects.s3 import S3BlobStore
    from es_actors.testing.local_s3 import shared_local_s3

    s3 = shared_local_s3()
    return S3BlobStore(s3.bucket(S3_TEST_BUCKET), _s3_prefix(root), client=s3.client())


def _s3_make(root: Path) -> ObjectBackend:
    return ObjectBackend(_s3_blobs(root))


def _s3_failing_put(after_send: bool) -> Callable[..., Any]:
    """A PUT the server answers with 500 having stored nothing (``after_send``: the body was sent)."""
    from es_actors.storage.objects import s3

    def fail(self: Any, key: str, data: bytes) -> Any:
        raise s3.ObjectStorageError(f"s3://{self.bucket}/{self._key(key)}: conditional put failed: InternalError "
                                    f"(HTTP 500){' after the body was sent' if after_send else ''}")

    return fail


def _s3_fail_writes(code: int, stage: str) -> contextlib.AbstractContextManager[None]:
    from es_actors.storage.objects.s3 import S3BlobStore

    # S3 has no fsync: both stages are a PUT that fails with nothing stored (errno does not apply)
    return _patched(S3BlobStore, "_put", _s3_failing_put(stage == "sync"))


def _s3_crash_mid_write(stage: str) -> contextlib.AbstractContextManager[None]:
    from es_actors.storage.objects.s3 import S3BlobStore

    original = S3BlobStore._put

    def crash(self: Any, key: str, data: bytes) -> Any:
        if stage == "sync":  # S3 stored the object; the process died before the answer came back
            original(self, key, data)
            raise SimulatedCrash("the process died before the put's answer arrived")
        raise SimulatedCrash("the process died while sending the put (S3 stores nothing of a partial PUT)")

    return _patched(S3BlobStore, "_put", crash)


def _s3_overwrite(root: Path, key: str, data: bytes) -> None:
    blobs = _s3_blobs(root)
    blobs.client.put_object(Bucket=blobs.bucket, Key=blobs._key(key), Body=data)  # unconditional: damage


def _s3_slots(root: Path, partition: int) -> list[str]:
    return _s3_blobs(root).list(f"p{partition:04d}/tail/")


def _s3_damage_middle(root: Path, partition: int) -> None:
    blobs = _s3_blobs(root)
    for key in _s3_slots(root, partition):
        data = blobs.get(key)
        if records.Commit.decode(data).kind == "rows":
            damaged = bytearray(data)
            damaged[len(damaged) // 2] ^= 0xFF  # inside the commit's JSON: its checksum no longer matches
            _s3_overwrite(root, key, bytes(damaged))
            return
    raise AssertionError("no commit object to damage")


def _s3_damage_newest_whole(root: Path, partition: int) -> None:
    key = _s3_slots(root, partition)[-1]
    damaged = bytearray(_s3_blobs(root).get(key))
    damaged[len(damaged) // 2] ^= 0xFF
    _s3_overwrite(root, key, bytes(damaged))


def _s3_tree_bytes(root: Path) -> dict[str, bytes]:
    blobs = _s3_blobs(root)
    out: dict[str, bytes] = {}
    for page in blobs.client.get_paginator("list_objects_v2").paginate(Bucket=blobs.bucket, Prefix=blobs.prefix):
        for o in page.get("Contents", ()):
            out[o["Key"]] = blobs.client.get_object(Bucket=blobs.bucket, Key=o["Key"])["Body"].read()
    return out


def s3_kit() -> BackendUnderTest:
    return BackendUnderTest(
        "whole objects (S3, local server)",
        make=_s3_make,
        fail_writes=_s3_fail_writes,
        crash_mid_write=_s3_crash_mid_write,
        damage_middle=_s3_damage_middle,
        damage_newest_whole=_s3_damage_newest_whole,
        tree_bytes=_s3_tree_bytes,
        why_not={"tear_tail": "an S3 PUT is atomic: no object is ever left half-written for recovery to cut"},
    )
