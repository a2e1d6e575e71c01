"""One writer of the two-process fencing test (tests/test_s3_fencing.py): opens partition 0 of a
whole-object log on S3 (credentials and endpoint from the environment, as a deployment has them),
waits until the start file holds enough acknowledged ids (the other writer's output), appends one-event batches until fenced or done, and writes each
acknowledged event id to its output file as soon as the append returns."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from es_actors.errors import StorageError, WriterFenced
from es_actors.storage.objects import ObjectBackend
from es_actors.storage.objects.s3 import S3BlobStore
from es_actors.testing.storage_conformance import EventLog, small_config


def _released(start_file: str, after_acks: int) -> bool:
    """The start file exists and holds at least ``after_acks`` acknowledged ids (the other writer's output)."""
    try:
        with open(start_file) as f:
            return sum(1 for line in f if not line.startswith("fenced")) >= after_acks
    except FileNotFoundError:
        return False


def main(bucket: str, prefix: str, tag: str, count: int, start_file: str, after_acks: int, out: str) -> None:
    backend = ObjectBackend(S3BlobStore(bucket, prefix))
    ev = EventLog(tag=tag)
    deadline = time.monotonic() + 20
    while not _released(start_file, after_acks) and time.monotonic() < deadline:
        time.sleep(0.002)
    with open(out, "a") as f:
        try:
            log = backend.open_log(0, small_config())
        except WriterFenced:
            f.write("fenced-at-open\n")
            return
        try:
            for i in range(count):
                rows = ev.append(log, [f"{tag}{i % 3}"])
                f.write(rows[0][7] + "\n")  # the event id, once acknowledged
                f.flush()
        except (WriterFenced, StorageError) as exc:
            f.write(f"fenced: {type(exc).__name__}\n")
        finally:
            log.close()


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], a[1], a[2], int(a[3]), a[4], int(a[5]), a[6])
