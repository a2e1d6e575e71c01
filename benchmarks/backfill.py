"""Backfill bench: a projection version rebuilt from the 10M-event bank data set by parallel
Ray tasks (es_actors.jobs.backfill, ADR-016), beside DuckDB's own GROUP BY over the same files
and the projector's sequential catch-up.

- ``backfill_10m``: the ``Balances`` SQL projection (combining merge: tasks per range of
  positions) and the ``DailyTotals`` per-day totals projection (recorded_at spans 366 days in
  the data set), each with 1 and 2 workers (each task ``num_cpus=1``, DuckDB ``threads=1``).
  Rows: ``es_actors`` ``events_per_s_1w``, ``events_per_s_2w``, ``merge_s``, ``efficiency``
  (eps_2w / (2 x eps_1w)), ``merge_share`` (merge / replay + merge, 2 workers); the same with the
  suffix ``_daily`` for DailyTotals; ``es_actors_sequential`` ``events_per_s`` (the projector
  catching Balances up from zero, as ``project_sql_10m``); ``duckdb_raw`` ``events_per_s`` (one
  GROUP BY over read_parquet of the files, 2 threads) and ``events_per_s_daily``; with ``_1t`` the
  same at DuckDB ``threads=1`` (the CPU one worker holds).

events/s counts log positions replayed over the replay's wall time (tasks started to last task
done); merge_s is the install (parts combined into the read model, one transaction); both come
from the backfill's report. Every result is checked against the expected read model.
"""

from __future__ import annotations

import shutil
import statistics
import time
from typing import Any

from benchmarks.common import Context, log, scratch_dir
from benchmarks.datasets import clone
from benchmarks.projection import BALANCE_COLS, DUCKDB_SQL, PARTITIONS, Dataset, check_balances, es_catch_up, start_ray

BENCHES = ["backfill_10m"]

DAILY_SQL = """
CREATE TABLE daily_totals AS
SELECT CAST(timezone('UTC', recorded_at) AS DATE) AS day,
       sum(CASE WHEN event_type = 'MoneyDeposited' THEN (payload->>'amount')::BIGINT ELSE 0 END) AS deposited,
       sum(CASE WHEN event_type = 'MoneyWithdrawn' THEN (payload->>'amount')::BIGINT ELSE 0 END) AS withdrawn,
       count(*) AS events
FROM read_parquet({files})
WHERE event_type IN ('MoneyDeposited', 'MoneyWithdrawn')
GROUP BY 1
"""


def _read_built(root: Any, schema: str, sql: str) -> Any:
    import duckdb

    con = duckdb.connect(str(root / "readmodels" / "readmodels.duckdb"), read_only=True)
    try:
        return con.sql(sql.format(schema=schema)).to_arrow_table()
    finally:
        con.close()


def es_backfill(ds: Dataset, projection: type, workers: int, expected_daily: Any) -> dict[str, Any]:
    """One backfill of ``projection`` over a fresh working copy of ``ds`` with ``workers`` tasks at once."""
    from es_actors.examples.bank import BankAccount
    from es_actors.jobs.backfill import backfill

    start_ray()
    work = scratch_dir(f"es_actors_backfill_{projection.name}_")
    root = work / work.name
    try:
        clone(ds.store, root)
        report = backfill(root, projection, [BankAccount], parallelism=workers, progress=False)
        schema = report.instance
        if projection.name == "balances":
            check = check_balances("es_actors", _read_built(root, schema, f'SELECT {BALANCE_COLS} FROM "{{schema}}".balances'), ds)
        else:
            got = _read_built(root, schema, 'SELECT * FROM "{schema}".daily_totals ORDER BY day')
            if not got.cast(expected_daily.schema).equals(expected_daily):
                raise RuntimeError(f"es_actors: daily totals differ from DuckDB's GROUP BY ({got.num_rows} vs {expected_daily.num_rows} rows)")
            check = f"{got.num_rows} days, sum(events) {sum(got.column('events').to_pylist()):,}"
        return {"replay_s": report.replay_s, "merge_s": report.merge_s, "seconds": report.seconds, "tasks": report.tasks,
                "events": report.events, "check": check}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def duckdb_raw(ds: Dataset, sql: str, table: str, threads: int | None = None) -> tuple[float, Any]:
    import duckdb

    work = scratch_dir("duckdb_raw_backfill_")
    try:
        con = duckdb.connect(str(work / "raw.duckdb"), config={"threads": threads} if threads else {})
        con.execute("SET enable_progress_bar = false")
        files = "[" + ", ".join(f"'{f}'" for f in ds.files) + "]"
        t0 = time.perf_counter()
        con.execute(sql.format(files=files))
        dt = time.perf_counter() - t0
        out = con.sql(f"SELECT * FROM {table} ORDER BY 1").to_arrow_table()
        con.close()
        return dt, out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(ctx: Context, selected: list[str]) -> None:
    from es_actors.examples.bank_projections import Balances, DailyTotals

    if "backfill_10m" not in selected:
        return
    s = ctx.settings
    ds = Dataset("10m")
    log(f"backfill: data set {ds.dir.name}: {ds.describe()}")
    bench = "backfill_10m"
    raw_balances, raw_daily, raw1_balances, raw1_daily = [], [], [], []
    expected_daily = None
    for _ in range(s.repeats):
        dt, out = duckdb_raw(ds, DUCKDB_SQL, "balances")
        check_balances("duckdb_raw", out.select(BALANCE_COLS.split(", ")), ds)
        raw_balances.append(dt)
        dt, expected_daily = duckdb_raw(ds, DAILY_SQL, "daily_totals")
        raw_daily.append(dt)
        raw1_balances.append(duckdb_raw(ds, DUCKDB_SQL, "balances", threads=1)[0])
        raw1_daily.append(duckdb_raw(ds, DAILY_SQL, "daily_totals", threads=1)[0])
    assert expected_daily is not None
    for metric, runs in (("events_per_s_1t", raw1_balances), ("events_per_s_daily_1t", raw1_daily)):
        ctx.results.record(bench, "duckdb_raw", metric, ds.events / statistics.median(runs), unit="events/s",
                           notes=f"the same statements with DuckDB threads=1 (one worker's share of the CPU): {[round(x, 3) for x in runs]} s")
    raw_eps = ds.events / statistics.median(raw_balances)
    raw_daily_eps = ds.events / statistics.median(raw_daily)
    raw_note = (f"DuckDB in the bench process (default threads: 2 here): CREATE TABLE AS SELECT ... GROUP BY over read_parquet "
                f"of the {len(ds.files)} sealed files; runs {[round(x, 3) for x in raw_balances]} s (balances), "
                f"{[round(x, 3) for x in raw_daily]} s (daily totals, {expected_daily.num_rows} days)")
    ctx.results.record(bench, "duckdb_raw", "events_per_s", raw_eps, unit="events/s", notes=raw_note)
    ctx.results.record(bench, "duckdb_raw", "events_per_s_daily", raw_daily_eps, unit="events/s", notes=raw_note)
    log(f"  {bench} duckdb_raw {raw_eps:,.0f} events/s (balances), {raw_daily_eps:,.0f} (daily)")
    # One untimed 2-worker run first: each Ray worker's first task pays ~1 s of imports, which fell on
    # whichever timed run first needed that worker (a 2-worker run at a third of the speed of the next).
    warm = es_backfill(ds, Balances, 2, expected_daily)
    log(f"    {bench} warm-up (untimed, starts both workers): balances 2w replay {warm['replay_s']:.2f} s")
    for projection, suffix in ((Balances, ""), (DailyTotals, "_daily")):
        runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
        for rep in range(s.repeats):
            for workers in ((1, 2) if rep % 2 == 0 else (2, 1)):
                r = es_backfill(ds, projection, workers, expected_daily)
                runs[workers].append(r)
                log(f"    {bench} {projection.name} {workers}w: {ds.events / r['replay_s']:,.0f} events/s replay "
                    f"{r['replay_s']:.2f} s + merge {r['merge_s']:.2f} s, {r['tasks']} tasks")
        eps = {w: ds.events / statistics.median(r["replay_s"] for r in rs) for w, rs in runs.items()}
        merge2 = statistics.median(r["merge_s"] for r in runs[2])
        replay2 = statistics.median(r["replay_s"] for r in runs[2])
        notes = (f"{projection.__name__} ({projection.merge.split if projection.merge else 'no'} merge) over {ds.describe()}; "
                 f"backfill(parallelism=W): tasks num_cpus=1, DuckDB threads=1, default shares (parallelism x 4 "
                 f"ranges of at least 2M positions, cut at segments), checkpoints every 4M positions (the default; a share is one batch); after one untimed 2-worker run (the workers' imports); timed from the report: replay (tasks started "
                 f"to the last done) and merge (install in this process: no projector runs); result: {runs[2][0]['check']}; "
                 f"replay s 1w {[round(r['replay_s'], 2) for r in runs[1]]}, 2w {[round(r['replay_s'], 2) for r in runs[2]]}")
        ctx.results.record(bench, "es_actors", f"events_per_s_1w{suffix}", eps[1], unit="events/s", notes=notes)
        ctx.results.record(bench, "es_actors", f"events_per_s_2w{suffix}", eps[2], unit="events/s", notes=notes)
        ctx.results.record(bench, "es_actors", f"merge_s{suffix}", merge2, unit="s", notes=notes)
        ctx.results.record(bench, "es_actors", f"efficiency{suffix}", eps[2] / (2 * eps[1]), unit="ratio", notes=notes)
        ctx.results.record(bench, "es_actors", f"merge_share{suffix}", merge2 / (replay2 + merge2), unit="ratio", notes=notes)
        raw = raw_eps if not suffix else raw_daily_eps
        log(f"  {bench} {projection.name}: 1w {eps[1]:,.0f}, 2w {eps[2]:,.0f} events/s, efficiency {eps[2] / (2 * eps[1]):.2f}, "
            f"merge {merge2:.2f} s; 2w / duckdb_raw {eps[2] / raw:.2f}")
    seq = [es_catch_up(ds, Balances) for _ in range(max(1, min(2, s.repeats)))]
    secs = statistics.median(r["seconds"] for r in seq)
    ctx.results.record(bench, "es_actors_sequential", "events_per_s", ds.events / secs, unit="events/s",
                       notes=f"the projector catching Balances up from zero (as project_sql_10m), {len(seq)} runs: "
                             f"{[round(r['seconds'], 2) for r in seq]} s; {PARTITIONS} partitions, one actor")
    log(f"  {bench} es_actors_sequential {ds.events / secs:,.0f} events/s")
