"""Stream index cost (ADR-015), without Ray: build and merge throughput, and the latency of reading one
aggregate's 100 events from a partition of N sealed events. Not part of ``make bench`` (WS4's
read_history benches measure the whole read path); run by hand to pick the merge factor:

    .venv/bin/python -m benchmarks.stream_index --events 1000000 --factors 4 8 16 --block-rows 64 256 1024

A lookup's latency is reported twice: each probe aggregate's first lookup in the process (the blocks
holding its rows are CRC-checked then) and the repeats (checked blocks are cached per process).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from es_actors.codecs.rows import ARROW_SCHEMA
from es_actors.storage.layout import StoreLayout
from es_actors.storage.lost_ranges import LostRanges
from es_actors.storage.local.segments import SegmentSet, list_segments, resolve_current, write_segment
from es_actors.storage.local.stream_index import StreamIndex, build_index, index_dir, reading
from es_actors.storage.local.stream_index import runs as run_format

SEG_ROWS = 50_000
PROBES = 100  # aggregates with exactly 100 events each, spread evenly over the positions


def write_store(root: Path, events: int, seed: int = 7) -> None:
    """One partition of ``events`` rows sealed as 50k-row segments: bulk aggregates of ~10 events and
    PROBES probe aggregates of 100 events each, their events spread evenly over the positions."""
    layout = StoreLayout(root)
    layout.create_or_check(1, 1)
    rng = np.random.default_rng(seed)
    agg = rng.integers(0, max(1, events // 10), events).astype(np.int64)
    probe_slots = np.linspace(0, events - 1, PROBES * 100).astype(np.int64)
    agg[probe_slots] = -1 - (np.arange(PROBES * 100) % PROBES)  # probe k: id -1-k
    ids = np.where(agg < 0, np.char.add("probe-", (-1 - agg).astype(str)), np.char.add("acct-", agg.astype(str)))
    order = np.argsort(agg, kind="stable")
    versions = np.empty(events, dtype=np.int64)
    sorted_agg = agg[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_agg)) + 1]
    run_ids = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, events]))
    versions[order] = np.arange(events) - starts[run_ids] + 1
    seg_set = SegmentSet(layout.log_dir(0), lost=LostRanges(), partition=0)
    notes = [rng.bytes(90).hex() for _ in range(1024)]  # ~200-byte payloads that compress like real ones
    for first in range(0, events, SEG_ROWS):
        n = min(SEG_ROWS, events - first)
        sl = slice(first, first + n)
        pos = np.arange(first + 1, first + n + 1, dtype=np.int64)
        table = pa.Table.from_arrays([
            pa.array(np.zeros(n, np.int32)), pa.array(pos), pa.array(["Account"] * n), pa.array(ids[sl].tolist()),
            pa.array(versions[sl]), pa.array(["Deposited"] * n), pa.array(np.ones(n, np.int32)),
            pa.array([f"e{p}" for p in pos.tolist()]), pa.array([f"c{p}" for p in pos.tolist()]), pa.array(["d"] * n),
            pa.nulls(n, pa.string()), pa.nulls(n, pa.string()), pa.nulls(n, pa.string()),
            pa.array(pos * 1000, pa.timestamp("us", tz="UTC")), pa.array([f'{{"amount": {p % 997}, "note": "{notes[p % 1024]}"}}' for p in pos.tolist()]), pa.array(["{}"] * n),
        ], schema=ARROW_SCHEMA)
        seg_set.segments.append(write_segment(table, seg_set.gen_dir, first + 1, first + n))


def measure(root: Path, factor: int, lookups: int) -> dict[str, float]:
    layout = StoreLayout(root)
    shutil.rmtree(index_dir(layout, 0), ignore_errors=True)
    reading._cache.clear()
    t0 = time.perf_counter()
    runs = build_index(layout, 0, merge_factor=factor)
    build_s = time.perf_counter() - t0
    lost = LostRanges()
    segments = list_segments(resolve_current(layout.log_dir(0)), lost, 0)
    events = segments[-1].last
    index = StreamIndex(layout, 0)
    reading._cache.clear()
    t0 = time.perf_counter()
    index.view(segments, lost)  # a fresh process: open every run, check its key CRC
    first_view_ms = (time.perf_counter() - t0) * 1e3
    lat = []
    for k in range(lookups):
        t0 = time.perf_counter()
        table = index.view(segments, lost).aggregate("Account", f"probe-{k % PROBES}")
        lat.append(time.perf_counter() - t0)
        assert table.num_rows == 100, table.num_rows
    first_ms = np.array(lat[:PROBES]) * 1e3  # each probe's first lookup in the process: its blocks' CRCs checked
    lat_ms = np.array(lat[PROBES:] or lat) * 1e3
    block_crc_s = 0.0
    for path in sorted(index_dir(layout, 0).glob("run-*.arrow")):  # the writer's share: block CRCs of every run
        batch = run_format.open_run(path).batch
        t0 = time.perf_counter()
        run_format.block_crcs(batch.columns, run_format.BLOCK_ROWS)
        block_crc_s += time.perf_counter() - t0
    size = sum(p.stat().st_size for p in index_dir(layout, 0).iterdir())
    seg_size = sum(s.path.stat().st_size for s in segments)
    return {"events": events, "factor": factor, "runs": runs, "build_rows_per_s": events / build_s,
            "block_crc_rows_per_s": events / max(block_crc_s, 1e-9), "block_rows": run_format.BLOCK_ROWS,
            "first_view_ms": first_view_ms, "first_lookup_p50_ms": float(np.percentile(first_ms, 50)),
            "first_lookup_p99_ms": float(np.percentile(first_ms, 99)), "p50_ms": float(np.percentile(lat_ms, 50)),
            "p99_ms": float(np.percentile(lat_ms, 99)), "index_bytes_per_event": size / events,
            "index_vs_segments": size / seg_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--factors", type=int, nargs="+", default=[8])
    parser.add_argument("--lookups", type=int, default=2_000)
    parser.add_argument("--block-rows", type=int, nargs="+", default=[run_format.BLOCK_ROWS],
                        help="rows per block CRC (runs.BLOCK_ROWS, a multiple of 8)")
    args = parser.parse_args()
    for events in args.events:
        with tempfile.TemporaryDirectory(prefix="es-index-bench-") as tmp:
            t0 = time.perf_counter()
            write_store(Path(tmp), events)
            print(f"# wrote {events} events in {time.perf_counter() - t0:.1f}s", flush=True)
            for factor, block_rows in ((f, b) for f in args.factors for b in args.block_rows):
                run_format.BLOCK_ROWS = block_rows
                r = measure(Path(tmp), factor, args.lookups)
                print("  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()), flush=True)


if __name__ == "__main__":
    main()
