"""A new process's first read of one aggregate from a long unsealed tail (ADR-015, the key files).

    python -m benchmarks.cold_tail_read [--frames 50000] [--runs 3]

Builds a one-partition store whose tail holds ``--frames`` one-row frames over 5,000 aggregates
(nothing sealed; no Ray), then, in a fresh Python process per run, times the first and a second
``aggregate_rows`` of one aggregate (wall and CPU), after importing what the read path imports.
What a CLI ``history``, a job's task or any new reader pays. Not part of ``make bench``. Compare
code by running it from two checkouts.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build(root: Path, frames: int) -> None:
    from es_actors.storage.layout import StoreLayout
    from es_actors.storage.local.backend import LocalBackend
    from es_actors.testing.storage_conformance import EventLog, small_config

    StoreLayout(root).create_or_check(1, 1)
    ev = EventLog()
    log = LocalBackend(root).open_log(0, small_config().model_copy(update={"seal_rows": 10**7}))
    try:
        for i in range(frames):
            ev.append(log, [f"a{i % 5000}"])
    finally:
        log.close()


def probe(root: str) -> None:
    import importlib

    from es_actors.storage.backends import aggregate_rows
    from es_actors.storage.layout import StoreLayout

    for module in ("pyarrow.dataset", "es_actors.storage.local.aggregate_read"):  # what the read path
        importlib.import_module(module)  # imports on first use: not what is measured

    t, c = time.perf_counter(), time.process_time()
    rows = aggregate_rows(StoreLayout(Path(root)), 0, "Account", "a7")
    first_ms, first_cpu = (time.perf_counter() - t) * 1e3, (time.process_time() - c) * 1e3
    t = time.perf_counter()
    aggregate_rows(StoreLayout(Path(root)), 0, "Account", "a8")
    print(f"{first_ms:.2f} {first_cpu:.2f} {(time.perf_counter() - t) * 1e3:.3f} {len(rows)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=50_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--probe", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe:
        probe(args.probe)
        return
    root = Path(tempfile.mkdtemp(prefix="es_actors_cold_tail_")) / "store"
    build(root, args.frames)
    out = [subprocess.run([sys.executable, "-m", "benchmarks.cold_tail_read", "--probe", str(root)],
                          check=True, capture_output=True, text=True).stdout.split() for _ in range(args.runs)]
    first = statistics.median(float(o[0]) for o in out)
    cpu = statistics.median(float(o[1]) for o in out)
    second = statistics.median(float(o[2]) for o in out)
    print(f"cold_tail_read: first read {first:.1f} ms ({cpu:.1f} ms CPU), second read {second:.2f} ms, "
          f"{out[0][3]} rows, tail of {args.frames:,} one-row frames (medians of {args.runs} fresh processes)")


if __name__ == "__main__":
    main()
