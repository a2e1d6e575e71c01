"""What one commit costs on the S3 backend, on a local S3-compatible server (moto's, 127.0.0.1):
``python -m benchmarks.s3_commit_cost``. Prints p50/p99 of a 2 KB conditional PUT and of a 64-row
append through the whole-object log, with the S3 requests each commit makes. A cost probe for
ADR-019, not part of ``make bench`` (the S3 rows of issue 13's append benches will be)."""

from __future__ import annotations

import collections
import statistics
import time

from es_actors.config import StoreConfig
from es_actors.storage.objects import ObjectBackend
from es_actors.storage.objects.s3 import S3BlobStore
from es_actors.testing.local_s3 import start_local_s3_process as start_local_s3  # its own process: no GIL shared with the clients
from es_actors.testing.storage_conformance import EventLog

N = 200


def _pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    s3 = start_local_s3()
    client = s3.client()
    calls: collections.Counter[str] = collections.Counter()
    client.meta.events.register("before-call.s3.*", lambda model, **_kw: calls.update([model.name]))
    blobs = S3BlobStore(s3.bucket("es-actors-cost"), f"run-{time.time_ns()}", client=client)
    put = []
    for i in range(N):
        t0 = time.perf_counter()
        blobs.put_if_absent(f"probe/{i}", b"a" * 2000)
        put.append((time.perf_counter() - t0) * 1000)
    log = ObjectBackend(blobs).open_log(0, StoreConfig(seal_rows=10**6))
    ev, append = EventLog(), []
    calls.clear()
    for i in range(N):
        t0 = time.perf_counter()
        ev.append(log, [f"a{i % 10}"] * 64)
        append.append((time.perf_counter() - t0) * 1000)
    log.close()
    per_commit = {k: v / N for k, v in sorted(calls.items())}
    print(f"conditional PUT of 2 KB: p50 {statistics.median(put):.2f} ms, p99 {_pct(put, 0.99):.2f} ms")
    print(f"append of 64 rows: p50 {statistics.median(append):.2f} ms, p99 {_pct(append, 0.99):.2f} ms; "
          f"requests per commit: {per_commit}")
    s3.stop()


if __name__ == "__main__":
    main()
