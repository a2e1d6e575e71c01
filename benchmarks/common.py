"""Shared benchmark plumbing: settings, the JSONL result writer, closed-loop load, the table.

Every bench module exposes ``BENCHES`` (the bench names it can produce) and
``run(ctx, selected)`` where ``selected`` is the subset of its names to run and ``ctx`` a
:class:`Context` carrying the settings and the :class:`ResultWriter`.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
RESULTS_PATH = RESULTS_DIR / "latest.jsonl"
CACHE_DIR = BENCH_DIR / ".cache"  # generated data sets and scratch stores (git-ignored)

# Metrics where a smaller number is better; the table says so beside the ratio.
LOWER_IS_BETTER = {"p50_ms", "p99_ms", "seconds", "rss_mb", "read_p50_ms", "read_p99_ms", "write_p50_ms", "write_p99_ms",
                   "merge_s", "merge_share", "reader_cpu_us_per_read_open"}
UNITS = {"events_per_s": "events/s", "p50_ms": "ms", "p99_ms": "ms", "seconds": "s", "rss_mb": "MB",
         "reads_per_s": "reads/s", "writes_per_s": "writes/s", "read_p50_ms": "ms", "read_p99_ms": "ms",
         "write_p50_ms": "ms", "write_p99_ms": "ms", "reader_cpu_us_per_read_open": "us"}
PRIMARY_SYSTEM = "es_actors"
# A variant of a metric (e.g. p50_ms_snapshot, p50_ms_1m, writes_per_s_no_readers): same unit, same direction.
METRIC_SUFFIXES = ("_snapshot", "_1m", "_tail", "_no_readers", "_open_readers", "_daily_1t", "_daily", "_1t", "_range")


def base_metric(metric: str) -> str:
    """The metric a variant is of: ``p50_ms_snapshot`` -> ``p50_ms``."""
    for suffix in METRIC_SUFFIXES:
        if metric.endswith(suffix):
            return metric[: -len(suffix)]
    return metric


def setup_env() -> None:
    """Environment every bench needs before Ray or a peer is imported."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    from es_actors.testing.local_s3 import LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY, REGION

    # The es_actors_s3 systems' actors read credentials from the environment, as a deployment's do;
    # Ray's workers inherit it from here. Values for the local server on 127.0.0.1 only.
    os.environ.update(AWS_ACCESS_KEY_ID=LOCAL_ACCESS_KEY, AWS_SECRET_ACCESS_KEY=LOCAL_SECRET_KEY, AWS_DEFAULT_REGION=REGION)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def scratch_dir(prefix: str) -> Path:
    """A fresh directory under benchmarks/.cache/tmp (outside git); the caller removes it."""
    base = CACHE_DIR / "tmp"
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


# -- settings ---------------------------------------------------------------------------------


@dataclass
class Settings:
    duration_s: float = 8.0  # measured window of one load run
    warmup_s: float = 1.5  # load before the window, not counted
    repeats: int = 3  # runs per configuration, interleaved across systems; the median is reported
    seed: int = 20240611
    systems: set[str] | None = None  # None: every system a bench knows

    def wants(self, system: str) -> bool:
        return self.systems is None or system in self.systems


# -- results ----------------------------------------------------------------------------------


class ResultWriter:
    """Appends one JSON object per measurement to ``path`` and keeps them for the table."""

    def __init__(self, path: Path = RESULTS_PATH, truncate: bool = False) -> None:
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if truncate:
            self.path.write_text("")
        self.records: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def record(self, bench: str, system: str, metric: str, value: float, unit: str | None = None, **extra: Any) -> dict[str, Any]:
        row: dict[str, Any] = {
            "bench": bench,
            "system": system,
            "metric": metric,
            "value": round(float(value), 3),
            "unit": unit or UNITS.get(base_metric(metric), ""),
        }
        row.update({k: v for k, v in extra.items() if v is not None})
        with self._lock:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            self.records.append(row)
        return row


@dataclass
class Context:
    settings: Settings
    results: ResultWriter
    started: float = field(default_factory=time.monotonic)


def machine_notes() -> str:
    return f"{platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}"


# -- closed-loop load -------------------------------------------------------------------------


@dataclass
class LoadRun:
    """One closed-loop run: what completed inside the measured window."""

    writers: int
    window_s: float
    ops: int
    events: int
    errors: int
    latencies_ms: list[float]

    @property
    def events_per_s(self) -> float:
        return self.events / self.window_s if self.window_s > 0 else 0.0

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies_ms, 50)

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies_ms, 99)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100.0 * len(s)) - 1))
    return s[k]


def closed_loop(
    writers: int,
    make_op: Callable[[int], Callable[[], int]],
    duration_s: float,
    warmup_s: float,
) -> LoadRun:
    """Run ``writers`` threads, each calling its op back to back (it returns events written).

    ``make_op(i)`` is called in the calling thread for each writer (set-up, not timed). An op
    that raises counts as an error; the first exception of each kind is re-raised at the end if
    nothing at all succeeded. Ops that complete inside [start+warmup, start+warmup+duration]
    are counted, with their latency.
    """
    ops = [make_op(i) for i in range(writers)]
    lat: list[list[float]] = [[] for _ in range(writers)]
    counts = [[0, 0, 0] for _ in range(writers)]  # ops, events, errors (inside the window)
    first_error: list[BaseException] = []
    stop = threading.Event()
    ready = threading.Barrier(writers + 1)
    window: list[float] = [0.0, 0.0]

    def loop(i: int) -> None:
        op, my_lat, my_counts = ops[i], lat[i], counts[i]
        clock = time.perf_counter
        ready.wait()
        while not stop.is_set():
            t0 = clock()
            try:
                n = op()
            except Exception as exc:  # counted; the run goes on
                t1 = clock()
                if window[0] <= t1 <= window[1]:
                    my_counts[2] += 1
                if not first_error:
                    first_error.append(exc)
                time.sleep(0.001)
                continue
            t1 = clock()
            if window[0] <= t1 <= window[1]:
                my_counts[0] += 1
                my_counts[1] += n
                my_lat.append((t1 - t0) * 1000.0)

    threads = [threading.Thread(target=loop, args=(i,), name=f"writer-{i}", daemon=True) for i in range(writers)]
    for t in threads:
        t.start()
    now = time.perf_counter()
    window[0], window[1] = now + warmup_s, now + warmup_s + duration_s
    try:
        ready.wait()
        time.sleep(max(0.0, window[1] - time.perf_counter()))
    finally:  # also on Ctrl-C / SIGTERM: let the writers finish their op before clean-up
        stop.set()
        ready.abort()
    for t in threads:
        t.join(timeout=120)
    if any(t.is_alive() for t in threads):
        raise RuntimeError("closed_loop: writers did not stop within 120 s")
    ops_n = sum(c[0] for c in counts)
    errors = sum(c[2] for c in counts)
    if first_error and ops_n == 0:
        raise first_error[0]
    if first_error:
        log(f"  warning: {errors} failed ops in the window; first: {first_error[0]!r}")
    return LoadRun(
        writers=writers,
        window_s=duration_s,
        ops=ops_n,
        events=sum(c[1] for c in counts),
        errors=errors,
        latencies_ms=[x for xs in lat for x in xs],
    )


def median_run(runs: Iterable[LoadRun]) -> dict[str, float]:
    """Median of each metric over repeated runs (each metric on its own)."""
    runs = list(runs)
    return {
        "events_per_s": statistics.median(r.events_per_s for r in runs),
        "p50_ms": statistics.median(r.p50_ms for r in runs),
        "p99_ms": statistics.median(r.p99_ms for r in runs),
    }


def record_load(
    ctx: Context, bench: str, system: str, runs: list[LoadRun], *, batch: int | None = None, notes: str | None = None
) -> None:
    """Write events_per_s, p50_ms, p99_ms (medians over ``runs``) for one bench and system."""
    if not runs:
        return
    med = median_run(runs)
    extra = {
        "writers": runs[0].writers,
        "batch": batch,
        "runs": len(runs),
        "events": int(statistics.median(r.events for r in runs)),
        "errors": sum(r.errors for r in runs) or None,
        "notes": notes,
    }
    for metric in ("events_per_s", "p50_ms", "p99_ms"):
        ctx.results.record(bench, system, metric, med[metric], **extra)
    per_run = ", ".join(f"{r.events_per_s:,.0f}" for r in runs)
    log(
        f"  {bench:<18} {system:<21} {med['events_per_s']:>10,.0f} ev/s  p50 {med['p50_ms']:.2f} ms"
        f"  p99 {med['p99_ms']:.2f} ms   (runs: {per_run})"
    )


# -- the table --------------------------------------------------------------------------------


def _fmt(v: float) -> str:
    if v != v:  # NaN
        return "n/a"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.1f}"
    return f"{v:.2f}"


def table_rows(records: list[dict[str, Any]]) -> list[list[str]]:
    """One row per (bench, metric, peer): es_actors, the peer, and es_actors/peer."""
    keyed: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    order: list[tuple[str, str]] = []
    for r in records:
        key = (r["bench"], r["metric"])
        if key not in keyed:
            keyed[key] = {}
            order.append(key)
        keyed[key][r["system"]] = r
    rows: list[list[str]] = []
    for bench, metric in order:
        systems = keyed[(bench, metric)]
        mine = systems.get(PRIMARY_SYSTEM)
        peers = [s for s in systems if s != PRIMARY_SYSTEM]
        unit = (mine or next(iter(systems.values())))["unit"]
        better = "lower" if base_metric(metric) in LOWER_IS_BETTER else "higher"
        label = f"{metric} ({unit})"
        if not peers:
            rows.append([bench, label, _fmt(mine["value"]) if mine else "-", "-", "-", "-", better, "-"])
        for peer in peers:
            pv = systems[peer]["value"]
            mv = mine["value"] if mine else float("nan")
            ratio = mv / pv if mine and pv else float("nan")
            rows.append([
                bench, label, _fmt(mv) if mine else "-", peer, _fmt(pv),
                f"{ratio:.2f}x" if ratio == ratio else "-", better, verdict(ratio, better == "lower"),
            ])
    return rows


def verdict(ratio: float, lower_is_better: bool) -> str:
    """'3.10x better' / '2.00x worse' for es_actors, whichever way the metric goes."""
    if ratio != ratio or ratio <= 0:
        return "-"
    gain = 1 / ratio if lower_is_better else ratio
    if 0.995 <= gain <= 1.005:
        return "same"
    return f"{gain:.2f}x better" if gain > 1 else f"{1 / gain:.2f}x worse"


TABLE_HEADER = ["bench", "metric", "es_actors", "peer", "peer value", "es_actors/peer", "better", "es_actors is"]


def format_table(records: list[dict[str, Any]], markdown: bool = False) -> str:
    rows = table_rows(records)
    if markdown:
        out = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "|".join(" --- " for _ in TABLE_HEADER) + "|"]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(out)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(TABLE_HEADER)]
    right = {2, 4, 5}

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [line(TABLE_HEADER), line(["-" * w for w in widths])]
    prev = None
    for r in rows:
        if prev is not None and r[0] != prev:
            out.append("")
        out.append(line(r))
        prev = r[0]
    out.append("")
    out.append("es_actors/peer is the plain ratio of the two figures; 'better' says which way is good for the metric.")
    return "\n".join(out)
