"""``query_events_1m``: SQL over the ``events`` relation through ``store.query``, on local disk and on S3.

The 1M bank set of ``projection.py`` (sealed segments of 50,000 rows, 4 partitions), opened read only
(no Ray, no projector: the query runs in the bench process), once as a hard-linked local copy
(``es_actors``) and once loaded into an S3 store on the local S3-compatible server
(``es_actors_s3``, ``benchmarks.s3_data``; the same store as ``project_*_1m``'s, loaded once per run).
On S3 the relation's sealed part is a pyarrow dataset over the segment objects (ADR-019), so a query
reads through pyarrow's S3 filesystem only the columns and row groups it needs.

- ``seconds``: a GROUP BY over the whole log (events and summed amounts per event type).
- ``seconds_range``: a position range, ``RANGE_ROWS`` positions of every partition in the middle of
  the log (row-group statistics prune the rest).

Both answers are checked against the data set (counts per event type from its meta) and between
systems. Repetitions interleaved, order alternating, after one untimed query per store and form.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from typing import Any

from benchmarks.common import Context, log, scratch_dir

BENCHES = ["query_events_1m"]

#: Timed queries per system and form (the median is reported): a query is short, so more than --repeats.
MIN_REPEATS = 5
RANGE_ROWS = int(os.environ.get("BENCH_QUERY_RANGE_ROWS", 10_000))
AMOUNT = "coalesce((payload->>'amount')::BIGINT, 0)"
GROUP_SQL = f"SELECT event_type, count(*) AS events, sum({AMOUNT}) AS amount FROM events GROUP BY event_type ORDER BY event_type"
RANGE_SQL = (f"SELECT partition, count(*) AS events, sum({AMOUNT}) AS amount FROM events "
             "WHERE position BETWEEN ? AND ? GROUP BY partition ORDER BY partition")


def _time(store: Any, sql: str, params: list[Any] | None) -> tuple[float, list[dict[str, Any]]]:
    t0 = time.perf_counter()
    rows = store.query(sql, params).to_pylist()
    return time.perf_counter() - t0, rows


def run(ctx: Context, selected: list[str]) -> None:
    from es_actors import Store
    from es_actors.examples.bank import BankAccount

    from benchmarks.datasets import clone
    from benchmarks.projection import Dataset
    from benchmarks.s3_data import shared_bank_store, stop_shared

    s = ctx.settings
    if "query_events_1m" not in selected:
        return
    ds = Dataset("1m")
    lo = max(1, min(ds.counts.values()) // 2 - RANGE_ROWS // 2)
    rng = [lo, lo + RANGE_ROWS - 1]
    work = scratch_dir("es_actors_query_events_")
    stores: dict[str, Any] = {}
    load_s = None
    try:
        if s.wants("es_actors"):
            root = work / "local"
            clone(ds.store, root)
            stores["es_actors"] = Store.open(root, [BankAccount], read_only=True)
        if s.wants("es_actors_s3"):
            s3 = shared_bank_store(ds.store, f"bank-{ds.size}")
            load_s = s3.load_s
            stores["es_actors_s3"] = Store.open(s3.uri, [BankAccount], read_only=True, read_model_dir=str(work / "rm"))
        forms = {"seconds": (GROUP_SQL, None), "seconds_range": (RANGE_SQL, rng)}
        first: dict[tuple[str, str], float] = {}
        answers: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for name, store in stores.items():
            for metric, (sql, params) in forms.items():
                first[name, metric], answers[name, metric] = _time(store, sql, params)
        _check(ds, answers, rng)
        times: dict[tuple[str, str], list[float]] = {k: [] for k in first}
        for rep in range(max(MIN_REPEATS, s.repeats)):
            order = list(stores) if rep % 2 == 0 else list(reversed(stores))
            for name in order:
                for metric, (sql, params) in forms.items():
                    dt, rows = _time(stores[name], sql, params)
                    if rows != answers[name, metric]:
                        raise RuntimeError(f"query_events_1m {name} {metric}: the answer changed between runs")
                    times[name, metric].append(dt)
        _record(ctx, ds, stores, times, first, rng, load_s)
    finally:
        for store in stores.values():
            store.close()
        shutil.rmtree(work, ignore_errors=True)
        stop_shared()  # the last bench of the run that reads the S3 copy (projection.py runs before)


def _check(ds: Any, answers: dict[tuple[str, str], list[dict[str, Any]]], rng: list[int]) -> None:
    """The GROUP BY must count the data set's events per type; both systems must agree on both forms."""
    m = ds.meta
    want = {"AccountOpened": m["opened"], "MoneyDeposited": m["deposits"], "MoneyWithdrawn": m["withdrawals"]}
    for (name, metric), rows in answers.items():
        if metric == "seconds":
            got = {r["event_type"]: r["events"] for r in rows}
            if got != want:
                raise RuntimeError(f"query_events_1m {name}: events per type {got}, expected {want}")
        elif [r["events"] for r in rows] != [rng[1] - rng[0] + 1] * len(ds.counts):
            raise RuntimeError(f"query_events_1m {name}: range {rng} gave {rows}")
    for metric in ("seconds", "seconds_range"):
        distinct = {str(rows) for (_n, m_), rows in answers.items() if m_ == metric}
        if len(distinct) > 1:
            raise RuntimeError(f"query_events_1m {metric}: the systems' answers differ")


def _record(ctx: Context, ds: Any, stores: dict[str, Any], times: dict[tuple[str, str], list[float]],
            first: dict[tuple[str, str], float], rng: list[int], load_s: float | None) -> None:
    med = {k: statistics.median(v) for k, v in times.items()}
    what = {
        "seconds": f"{GROUP_SQL} (every event of {ds.describe()})",
        "seconds_range": f"{RANGE_SQL} with positions {rng[0]:,}..{rng[1]:,} ({RANGE_ROWS:,} events per partition, "
                         f"{RANGE_ROWS * len(ds.counts):,} in all)",
    }
    for (name, metric), secs in med.items():
        notes = (f"store.query on a read-only store (no projector: the query runs in the bench process), "
                 f"{len(times[name, metric])} timed runs interleaved with the other system's after one untimed "
                 f"(first_s); {what[metric]}")
        extra: dict[str, Any] = {"events": ds.events, "runs": len(times[name, metric]),
                                 "run_seconds": [round(t, 4) for t in times[name, metric]],
                                 "first_s": round(first[name, metric], 4)}
        if name == "es_actors_s3":
            notes += ("; the same events loaded (untimed, load_s) into an S3 store on the local S3-compatible server "
                      "(moto's, own process, 127.0.0.1), segments read as a pyarrow dataset over S3: figures of moto "
                      "on this machine, not of AWS")
            extra["load_s"] = round(load_s or 0.0, 1)
            if ("es_actors", metric) in med:
                extra["vs_local"] = round(secs / med["es_actors", metric], 2)
                notes += f"; {extra['vs_local']:.2f}x the seconds of es_actors on local disk in this run"
        ctx.results.record("query_events_1m", name, metric, secs, unit="s", notes=notes, **extra)
        log(f"  query_events_1m {name:<13} {metric:<14} {secs * 1000:9.1f} ms  (first {first[name, metric] * 1000:.0f} ms; "
            f"runs: {', '.join(f'{t * 1000:.0f}' for t in times[name, metric])})")
