"""Read-side benches: projections catching up from zero, and end-to-end projection lag.

- ``project_sql_1m`` / ``project_sql_10m``: the ``Balances`` SQL projection
  (``es_actors.examples.bank_projections``) catching up from zero over 1M / 10M bank events in 4
  partitions (sealed segments), beside ``duckdb_raw`` (one DuckDB GROUP BY over the same
  Parquet files, the floor) and ``postgres_sql`` (one GROUP BY statement over the same events
  in a PostgreSQL table).
- ``project_python_1m``: the ``BalancesPy`` Python projection over the 1M set, beside
  ``postgres`` fetch-and-fold (psycopg server-side cursor, the events validated into the same
  event classes and folded in Python, the balances written back).
- ``projection_lag``: command acknowledged -> visible in the ``Balances`` read model, under an
  open-loop load of Deposit commands at 5,000 commands/s.

Data sets: bank events for 100,000 accounts (an AccountOpened, then deposits and withdrawals,
one per account per round, each round shuffled), 10 per account (1M) and 100 per account
(10M), 4 partitions, written once as sealed segments (``benchmarks.datasets``) under
``$ES_ACTORS_BENCH_CACHE`` (default ``~/.cache/es_actors_bench``) with the expected read
model beside them. Every system's result is checked against it, row for row.
"""

from __future__ import annotations

import io
import os
import shutil
import statistics
import threading
import time
from collections import deque
from typing import Any, Callable

from benchmarks.common import Context, log, percentile, scratch_dir
from benchmarks.datasets import bank_dataset, bank_meta, clone

BENCHES = ["project_sql_1m", "project_sql_10m", "project_python_1m", "projection_lag"]


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


# Sizes; the environment overrides are for development only.
ACCOUNTS = _env_int("BENCH_PROJ_ACCOUNTS", 100_000)
PER_ACCOUNT = {"1m": _env_int("BENCH_PROJ_PER_1M", 10), "10m": _env_int("BENCH_PROJ_PER_10M", 100)}
PARTITIONS = 4
ES_REPS_10M = _env_int("BENCH_PROJ_ES_REPS_10M", 3)  # es_actors repetitions of the 10M case
POLL_S = 0.02  # projection_status() polling while a projection catches up
CATCHUP_TIMEOUT_S = 600.0
LAG_RATE = _env_int("BENCH_LAG_RATE", 5_000)  # commands/s offered
LAG_BURST = 50  # commands per submit_many_async call (every LAG_BURST / LAG_RATE s)
LAG_SAMPLE_EVERY = 25  # every n-th command is a lag sample
LAG_ACCOUNTS = 400
LAG_POLL_S = 0.01  # projection_status() polling of the lag poller
PG_SETTINGS = {
    "shared_buffers": "1GB",
    "work_mem": "256MB",  # the GROUP BY's hash table (100k groups) stays in memory
    "maintenance_work_mem": "1GB",
    "max_wal_size": "8GB",
    "wal_level": "minimal",  # with max_wal_senders=0: COPY into a table created in the same transaction skips WAL
    "max_wal_senders": "0",
}
BALANCE_COLS = "account, owner, balance, events, version"

# One statement per system, computing the read model of Balances (es_actors.examples.bank_projections)
# with the same JSON extraction: owner from AccountOpened, balance = deposits - withdrawals,
# events counted, the last version.
DUCKDB_SQL = """
CREATE TABLE balances AS
SELECT aggregate_id AS account,
       max(CASE WHEN event_type = 'AccountOpened' THEN payload->>'owner' END) AS owner,
       sum(CASE event_type WHEN 'MoneyDeposited' THEN (payload->>'amount')::BIGINT
                           WHEN 'MoneyWithdrawn' THEN -(payload->>'amount')::BIGINT ELSE 0 END) AS balance,
       count(*) AS events, max(version) AS version
FROM read_parquet({files})
WHERE event_type IN ('AccountOpened', 'MoneyDeposited', 'MoneyWithdrawn')
GROUP BY aggregate_id
"""
PG_SQL = """
CREATE TABLE {table} AS
SELECT stream_id AS account,
       max(CASE WHEN event_type = 'AccountOpened' THEN payload->>'owner' END) AS owner,
       sum(CASE event_type WHEN 'MoneyDeposited' THEN (payload->>'amount')::bigint
                           WHEN 'MoneyWithdrawn' THEN -(payload->>'amount')::bigint ELSE 0 END)::bigint AS balance,
       count(*) AS events, max(version) AS version
FROM events
WHERE event_type IN ('AccountOpened', 'MoneyDeposited', 'MoneyWithdrawn')
GROUP BY stream_id
"""
PG_EVENTS_DDL = """
CREATE TABLE events (
    partition   integer     NOT NULL,
    position    bigint      NOT NULL,
    stream_id   text        NOT NULL,
    version     bigint      NOT NULL,
    event_type  text        NOT NULL,
    payload     jsonb       NOT NULL,
    recorded_at timestamptz NOT NULL
)"""
# Constraint names carry the data set's key, so a data set's table can be renamed aside
# (events -> events_<key>) and back without its index names clashing with another's.
PG_EVENTS_INDEXES = [
    "ALTER TABLE events ADD CONSTRAINT pk_{key} PRIMARY KEY (partition, position)",
    "ALTER TABLE events ADD CONSTRAINT stream_version_{key} UNIQUE (stream_id, version)",
]


def start_ray() -> None:
    from benchmarks.append import start_ray as _start

    _start()


# -- data -----------------------------------------------------------------------------------------


class Dataset:
    """A cached bank data set: its store (sealed segments), expected balances, per-partition counts."""

    def __init__(self, size: str) -> None:
        import pyarrow.parquet as pq

        self.size = size
        self.dir = bank_dataset(ACCOUNTS, PER_ACCOUNT[size], PARTITIONS)
        self.meta = bank_meta(self.dir)
        self.events: int = self.meta["events"]
        self.counts = {p: n for p, n in enumerate(self.meta["partition_events"])}
        self.store = self.dir / "store"
        self.files = sorted(str(p) for p in (self.store / "log").glob("*/current/*.parquet"))
        self.expected = pq.read_table(self.dir / "expected.parquet").sort_by("account")

    @property
    def key(self) -> str:
        """A SQL-safe name of this data set (its cache directory)."""
        return "".join(c if c.isalnum() else "_" for c in self.dir.name).lower()

    def probe_ids(self) -> list[str]:
        from benchmarks.datasets import probe_id

        return [probe_id(i) for i in range(self.meta.get("probes", 0))]

    def describe(self) -> str:
        m = self.meta
        probes = f" + {m['probes']:,} probe accounts x {m['probe_events']}" if m.get("probes") else ""
        return (f"{m['events']:,} events ({m['accounts']:,} accounts x {m['events_per_account']}{probes}: "
                f"{m['opened']:,} AccountOpened, {m['deposits']:,} MoneyDeposited, {m['withdrawals']:,} MoneyWithdrawn), "
                f"{PARTITIONS} partitions, {len(self.files)} sealed segments")


def check_balances(system: str, table: Any, ds: Dataset) -> str:
    """The read model must equal the expected one row for row; returns 'count, sum' for notes."""
    import pyarrow as pa

    t = table.select(BALANCE_COLS.split(", "))
    t = t.cast(pa.schema([("account", pa.string()), ("owner", pa.string()), ("balance", pa.int64()),
                          ("events", pa.int64()), ("version", pa.int64())])).sort_by("account")
    if not t.equals(ds.expected):
        exp = ds.expected
        detail = f"{t.num_rows} rows vs {exp.num_rows} expected"
        if t.num_rows == exp.num_rows:
            for name in t.column_names:
                if not t.column(name).equals(exp.column(name)):
                    a, b = t.column(name).to_pylist(), exp.column(name).to_pylist()
                    i = next(i for i in range(len(a)) if a[i] != b[i])
                    detail += f"; first difference in {name} at {t.column('account')[i]}: {a[i]!r} vs {b[i]!r}"
                    break
        raise RuntimeError(f"{system}: the balances differ from the expected read model ({detail})")
    total = sum(t.column("balance").to_pylist())
    return f"{t.num_rows:,} accounts, sum(balance) {total:,}, sum(events) {sum(t.column('events').to_pylist()):,}"


# -- es_actors: a projection catching up from zero ------------------------------------------------------


_stall_seen: set[tuple[str, int]] = set()


def caught_up_at(store: Any, name: str, counts: dict[int, int], timeout_s: float = CATCHUP_TIMEOUT_S,
                 poll_s: float = POLL_S) -> tuple[float, int]:
    """Poll ``projection_status()`` until every partition's checkpoint is its head (the known
    event count); returns (perf_counter when the poll that saw it returned, polls made)."""
    deadline = time.perf_counter() + timeout_s
    polls = 0
    while True:
        rows = [r for r in store.projection_status() if r["projection"] == name]
        now = time.perf_counter()
        polls += 1
        cps = {r["partition"]: r["checkpoint"] for r in rows}
        if all(cps.get(p, 0) >= n for p, n in counts.items()):
            if any(cps[p] != n for p, n in counts.items()):
                raise RuntimeError(f"{name}: checkpoints {cps} past the log's heads {counts}")
            return now, polls
        # "stalled" without an error is what status() says of a partition that waits its turn
        # behind other partitions' long batches (no progress of its own for projection_stall_s);
        # only a halt, or a stall with an error (the loop died), ends the run.
        bad = [r for r in rows if r["status"] == "halted" or (r["status"] == "stalled" and r["last_error"])]
        if bad:
            raise RuntimeError(f"projection {name} is {bad[0]['status']}: {bad[0]['last_error']}")
        for r in rows:
            if r["status"] == "stalled" and (name, r["partition"]) not in _stall_seen:
                _stall_seen.add((name, r["partition"]))
                log(f"    note: {name} partition {r['partition']} shows 'stalled' while catching up "
                    f"(checkpoint {r['checkpoint']:,} of {counts[r['partition']]:,}, no error)")
        if now > deadline:
            raise RuntimeError(f"projection {name} did not catch up in {timeout_s:.0f} s: {cps} of {counts}")
        time.sleep(poll_s)


def es_catch_up(ds: Dataset, projection: type) -> dict[str, Any]:
    """One catch-up of ``projection`` over a fresh working copy of ``ds`` (local disk)."""
    work = scratch_dir(f"es_actors_{projection.name}_")
    root = work / work.name  # a directory name of its own: actor names derive from it and the (copied) store id
    try:
        clone(ds.store, root)
        return timed_catch_up(ds, projection, root, root)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def es_catch_up_s3(ds: Dataset, projection: type) -> dict[str, Any]:
    """One catch-up of ``projection`` over ``ds`` loaded into an S3 store on the local server (loaded
    once per run, read only here), its read model in a fresh local directory each time."""
    from es_actors.storage.layout import read_models_dir

    from benchmarks.s3_data import shared_bank_store

    s3 = shared_bank_store(ds.store, f"bank-{ds.size}")
    work = scratch_dir(f"es_actors_s3_{projection.name}_")
    try:
        r = timed_catch_up(ds, projection, s3.uri, read_models_dir(s3.store_id, str(work)), "es_actors_s3",
                           read_model_dir=str(work))
        return {**r, "load_s": s3.load_s}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def timed_catch_up(ds: Dataset, projection: type, uri: Any, rm_root: Any, system: str = "es_actors",
                   **settings: Any) -> dict[str, Any]:
    """The read model (at ``rm_root``) is created beforehand with the projection registered and *paused*
    (its tables empty, no checkpoint), so the projector actor starts (with Store.open) without
    projecting; the clock starts at ``store.resume()`` and stops when a status poll shows every
    partition's checkpoint at its head."""
    from es_actors import DomainRegistry, Store
    from es_actors.read.readmodel import ReadModel
    from es_actors.examples.bank import BankAccount

    start_ray()
    store = None
    try:
        rm = ReadModel(rm_root, DomainRegistry([BankAccount]), [projection])
        rm.set_paused(projection.name, True)
        rm.close()
        t = time.perf_counter()
        store = Store.open(uri, [BankAccount], partitions=PARTITIONS, projections=[projection], **settings)
        open_s = time.perf_counter() - t
        st = [r for r in store.projection_status() if r["projection"] == projection.name]
        if any(r["checkpoint"] for r in st) or any(r["status"] != "paused" for r in st):
            raise RuntimeError(f"{projection.name}: expected a paused projection at checkpoint 0, got {st}")
        t0 = time.perf_counter()
        store.resume(projection.name)
        t1, polls = caught_up_at(store, projection.name, ds.counts)
        tables = store.query(f"SELECT table_name FROM information_schema.tables WHERE table_schema = '{projection.name}'")
        (table,) = tables.column(0).to_pylist()  # the projection's one table, whatever its name
        check = check_balances(system, store.query(f'SELECT {BALANCE_COLS} FROM "{projection.name}"."{table}"'), ds)
        return {"seconds": t1 - t0, "open_s": open_s, "polls": polls, "check": check}
    finally:
        if store is not None:
            store.close()


# -- peers --------------------------------------------------------------------------------------------------


def duckdb_group_by(ds: Dataset) -> dict[str, Any]:
    """CREATE TABLE balances AS SELECT ... GROUP BY over read_parquet of the sealed files, in a fresh DuckDB file."""
    import duckdb

    work = scratch_dir("duckdb_raw_")
    try:
        con = duckdb.connect(str(work / "balances.duckdb"))
        con.execute("SET enable_progress_bar = false")
        files = "[" + ", ".join(f"'{f}'" for f in ds.files) + "]"
        sql = DUCKDB_SQL.format(files=files)
        t0 = time.perf_counter()
        con.execute(sql)
        dt = time.perf_counter() - t0
        check = check_balances("duckdb_raw", con.sql(f"SELECT {BALANCE_COLS} FROM balances").to_arrow_table(), ds)
        con.close()
        return {"seconds": dt, "check": check}
    finally:
        shutil.rmtree(work, ignore_errors=True)


_shared: "Pg | None" = None


def shared_pg() -> "Pg":
    """The run's one cluster, shared by every module that reads bank data sets (each data set is
    loaded once per run); stopped and removed at exit (PgCluster's atexit and signal handlers)."""
    global _shared
    if _shared is None or not _shared.cluster._started:
        _shared = Pg()
    return _shared


class Pg:
    """One throwaway cluster; ``events`` is the data set last asked for, the others wait beside it
    as ``events_<key>`` (a rename, not a reload, brings one back)."""

    def __init__(self) -> None:
        from benchmarks.pg import PgCluster

        self.cluster = PgCluster(settings=PG_SETTINGS)
        self.cluster.start()
        self.loaded: str | None = None
        self.parked: set[str] = set()
        self.runs = 0
        self.version = self.cluster.server_version()

    def load(self, ds: Dataset) -> None:
        """The data set's events into ``events`` (COPY in the creating transaction, then the
        primary key (partition, position), UNIQUE (stream_id, version), VACUUM ANALYZE). Not timed."""
        if self.loaded == ds.key:
            return
        if self.loaded is not None:
            self.cluster.execute(f"ALTER TABLE events RENAME TO events_{self.loaded}")
            self.parked.add(self.loaded)
            self.loaded = None
        if ds.key in self.parked:
            self.cluster.execute(f"ALTER TABLE events_{ds.key} RENAME TO events")
            self.parked.discard(ds.key)
            self.loaded = ds.key
            return
        import pyarrow as pa
        import pyarrow.csv as pacsv
        import pyarrow.dataset as pads

        from es_actors.codecs.rows import ARROW_SCHEMA

        t = time.monotonic()
        cols = ["partition", "position", "aggregate_id", "version", "event_type", "payload", "recorded_at"]
        with self.cluster.connect() as conn:
            conn.execute("DROP TABLE IF EXISTS events")
            conn.execute(PG_EVENTS_DDL)
            copy_sql = ("COPY events (partition, position, stream_id, version, event_type, payload, recorded_at) "
                        "FROM STDIN (FORMAT csv)")
            with conn.cursor().copy(copy_sql) as cp:
                scanner = pads.dataset(ds.files, schema=ARROW_SCHEMA, format="parquet").scanner(columns=cols)
                for rb in scanner.to_batches():
                    buf = io.BytesIO()
                    pacsv.write_csv(pa.Table.from_batches([rb]), buf, pacsv.WriteOptions(include_header=False))
                    cp.write(buf.getbuffer())
            conn.commit()
            t_copy = time.monotonic() - t
            for stmt in PG_EVENTS_INDEXES:
                conn.execute(stmt.format(key=ds.key))
            conn.commit()
        with self.cluster.connect(autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE events")
            n = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        if n != ds.events:
            raise RuntimeError(f"postgres: loaded {n} events, expected {ds.events}")
        self.loaded = ds.key
        log(f"postgres: loaded {ds.key} ({n:,} events) in {time.monotonic() - t:.1f} s (COPY {t_copy:.1f} s, "
            f"then indexes and VACUUM ANALYZE)")

    def group_by(self, ds: Dataset) -> dict[str, Any]:
        self.runs += 1
        table = f"balances_sql_{self.runs}"
        with self.cluster.connect(autocommit=True) as conn:
            t0 = time.perf_counter()
            conn.execute(PG_SQL.format(table=table))
            dt = time.perf_counter() - t0
            check = check_balances("postgres_sql", _pg_arrow(conn, f"SELECT {BALANCE_COLS} FROM {table}"), ds)
            conn.execute(f"DROP TABLE {table}")
        return {"seconds": dt, "check": check}

    def fetch_and_fold(self, ds: Dataset) -> dict[str, Any]:
        """Every event ORDER BY (partition, position) through a server-side cursor, 10,000 rows per
        fetch; each payload validated into its event class (model_validate_json) and folded into
        per-account [owner, balance, events, version] as BalancesPy does; the balances then written
        back (CREATE TABLE + COPY) in the same transaction."""
        from es_actors.examples.bank import AccountOpened, MoneyDeposited, MoneyWithdrawn

        models = {c.event_type: c for c in (AccountOpened, MoneyDeposited, MoneyWithdrawn)}
        self.runs += 1
        table = f"balances_py_{self.runs}"
        n = 0
        with self.cluster.connect() as conn:
            t0 = time.perf_counter()
            cur = conn.cursor(name="fold")
            cur.execute(
                "SELECT stream_id, version, event_type, payload::text FROM events "
                "WHERE event_type IN ('AccountOpened', 'MoneyDeposited', 'MoneyWithdrawn') ORDER BY partition, position"
            )
            acc: dict[str, list[Any]] = {}
            while rows := cur.fetchmany(10_000):
                n += len(rows)
                for stream_id, version, event_type, payload in rows:
                    e = models[event_type].model_validate_json(payload)
                    d = acc.get(stream_id)
                    if d is None:
                        d = acc[stream_id] = [None, 0, 0, 0]
                    match e:
                        case AccountOpened(owner=owner):
                            d[0] = owner
                        case MoneyDeposited(amount=amount):
                            d[1] += amount
                        case MoneyWithdrawn(amount=amount):
                            d[1] -= amount
                    d[2] += 1
                    d[3] = max(d[3], version)
            cur.close()
            conn.execute(f"CREATE TABLE {table} (account text PRIMARY KEY, owner text, balance bigint NOT NULL, "
                         "events bigint NOT NULL, version bigint NOT NULL)")
            with conn.cursor().copy(f"COPY {table} ({BALANCE_COLS}) FROM STDIN") as cp:
                for a, (owner, bal, cnt, ver) in acc.items():
                    cp.write_row((a, owner, bal, cnt, ver))
            conn.commit()
            dt = time.perf_counter() - t0
            check = check_balances("postgres", _pg_arrow(conn, f"SELECT {BALANCE_COLS} FROM {table}"), ds)
            conn.execute(f"DROP TABLE {table}")
            conn.commit()
        if n != ds.events:
            raise RuntimeError(f"postgres fold: fetched {n} events, expected {ds.events}")
        return {"seconds": dt, "check": check}

    def close(self) -> None:
        self.cluster.stop()


def _pg_arrow(conn: Any, sql: str) -> Any:
    import pyarrow as pa

    rows = conn.execute(sql).fetchall()
    names = BALANCE_COLS.split(", ")
    return pa.table({c: [r[i] for r in rows] for i, c in enumerate(names)})


# -- the catch-up benches ------------------------------------------------------------------------------------

RunFn = Callable[[Dataset], dict[str, Any]]


def run_catch_up(ctx: Context, bench: str, ds: Dataset, systems: list[tuple[str, RunFn, int]],
                 notes: dict[str, str]) -> None:
    """Repetitions interleaved across systems (order rotating); medians recorded per system.
    ``systems``: (name, run one, repetitions)."""
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _f, _r in systems}
    reps = max(r for _n, _f, r in systems) if systems else 0
    for rep in range(reps):
        present = [(n, f) for n, f, r in systems if rep < r]
        k = rep % len(present)
        for name, fn in present[k:] + present[:k]:
            r = fn(ds)
            results[name].append(r)
            log(f"    {bench:<18} {name:<13} {ds.events / r['seconds']:>13,.0f} events/s  {r['seconds']:7.3f} s"
                + (f"  (Store.open {r['open_s']:.1f} s, {r['polls']} polls)" if "open_s" in r else ""))
    medians = {name: statistics.median(r["seconds"] for r in rs) for name, rs in results.items() if rs}
    for name, rs in results.items():
        if not rs:
            continue
        secs = medians[name]
        extra: dict[str, Any] = {"events": ds.events, "runs": len(rs), "run_seconds": [round(r["seconds"], 3) for r in rs],
                                 "notes": f"{notes[name]}; result: {rs[0]['check']}"}
        if "open_s" in rs[0]:
            extra["open_s"] = round(statistics.median(r["open_s"] for r in rs), 3)
        if "load_s" in rs[0]:
            extra["load_s"] = round(rs[0]["load_s"], 1)
        if name == "es_actors_s3" and "es_actors" in medians:
            extra["vs_local"] = round(medians["es_actors"] / secs, 3)
            extra["notes"] += (f"; {extra['vs_local']:.2f}x the events/s of es_actors on local disk in this run "
                               f"({ds.events / secs:,.0f} vs {ds.events / medians['es_actors']:,.0f})")
        ctx.results.record(bench, name, "events_per_s", ds.events / secs, unit="events/s", **extra)
        ctx.results.record(bench, name, "seconds", secs, unit="s", **extra)
        per_run = ", ".join(f"{ds.events / r['seconds']:,.0f}" for r in rs)
        log(f"  {bench:<18} {name:<13} {ds.events / secs:>13,.0f} events/s  {secs:.3f} s  (runs: {per_run})")


def _sql_notes(ds: Dataset, pg: Pg | None) -> dict[str, str]:
    es = (
        f"Balances SQL projection (es_actors.examples.bank_projections) catching up from zero over {ds.describe()}; "
        "the read model is created beforehand with the projection paused (empty tables, no checkpoint), "
        "so Store.open (4 partition actors recovering their indexes + the projector actor starting, "
        "reported as open_s) is not timed; timed: store.resume() until a projection_status() poll "
        f"(every {POLL_S * 1000:.0f} ms, so up to ~{POLL_S * 1000:.0f} ms late) shows every partition's checkpoint "
        "at its head; the projector applies batches of up to 1M events per partition (one DuckDB transaction each: "
        "read_parquet of the segments + GROUP BY + upsert into a table with a primary key, + the checkpoint); "
        "target: >= 10M events/s catching up; the result checked row for row against the generated expected balances"
    )
    raw = (
        "DuckDB in the bench process: CREATE TABLE balances AS SELECT ... GROUP BY aggregate_id over read_parquet "
        "of the same sealed files, the same JSON extraction (payload->>'amount'), into a fresh DuckDB file "
        "(no primary key, no checkpoint): the floor"
    )
    pgn = (
        f"PostgreSQL {pg.version if pg else '?'}: events(partition, position, stream_id, version, event_type, "
        "payload jsonb, recorded_at) with PRIMARY KEY (partition, position) and UNIQUE (stream_id, version), "
        "loaded by COPY and VACUUM ANALYZEd beforehand (not timed); timed: one CREATE TABLE ... AS SELECT ... "
        "GROUP BY stream_id statement (payload->>'amount' on jsonb, autocommit); server: work_mem=256MB (the hash "
        "aggregate stays in memory), shared_buffers=1GB, wal_level=minimal (for the load), parallel query and JIT at "
        "their defaults (2 workers per gather)"
    )
    return {"es_actors": es, "duckdb_raw": raw, "postgres_sql": pgn}


def _python_notes(ds: Dataset, pg: Pg | None) -> dict[str, str]:
    es = (
        f"BalancesPy Python projection catching up from zero over {ds.describe()}; paused read model created "
        "beforehand, Store.open not timed (open_s); timed: store.resume() until a projection_status() poll "
        f"(every {POLL_S * 1000:.0f} ms) shows every checkpoint at its head; per batch (up to 1M events per partition) "
        "the projector reads the rows into Arrow, decodes them into typed events (bulk pydantic validation per "
        "event type), the handler folds them in Python and upserts the per-account deltas; "
        "target: >= 300k events/s; the result checked row for row against the generated expected balances"
    )
    pgn = (
        f"PostgreSQL {pg.version if pg else '?'} fetch-and-fold in Python (psycopg 3): SELECT stream_id, version, "
        "event_type, payload::text ORDER BY partition, position through a server-side cursor (fetchmany 10,000), "
        "each payload validated into its es_actors.examples.bank event class (model_validate_json, one event at a time), "
        "folded per account as BalancesPy does, then the balances written back (CREATE TABLE + COPY, one commit); "
        "same table and load as project_sql_1m"
    )
    return {"es_actors": es, "postgres": pgn}


def _s3_notes(es_notes: str) -> str:
    return (
        "the same events loaded (untimed, load_s) into an S3 store on the local S3-compatible server (moto's, "
        "in its own process on 127.0.0.1; the same segments of 50,000 rows), loaded once per run and read only; "
        "each repetition a fresh local read-model directory (read_model_dir); the projector's followers GET each "
        "segment object whole (boto3, CRC-32 checked, decoded by pyarrow) and hand the batch to DuckDB: figures of "
        "moto on this machine, not of AWS. Otherwise as es_actors: "
        + es_notes
    )


def run_catch_ups(ctx: Context, selected: list[str]) -> None:
    from es_actors.examples.bank_projections import Balances, BalancesPy

    s = ctx.settings
    pg: Pg | None = None
    wants_pg = any(b in selected for b in ("project_sql_1m", "project_sql_10m")) and s.wants("postgres_sql")
    wants_pg = wants_pg or ("project_python_1m" in selected and s.wants("postgres"))
    # postgres: the run's shared cluster (stays up for the other modules' benches; stopped at exit)
    if wants_pg:
        pg = shared_pg()
    for size in ("1m", "10m"):
        benches = [b for b in (f"project_sql_{size}", f"project_python_{size}") if b in selected]
        if not benches:
            continue
        ds = Dataset(size)
        log(f"projection: data set {ds.dir.name}: {ds.describe()}")
        if pg is not None:
            pg.load(ds)
        for bench in benches:
            systems: list[tuple[str, RunFn, int]] = []
            if bench.startswith("project_sql"):
                es_reps = ES_REPS_10M if size == "10m" else s.repeats
                notes = _sql_notes(ds, pg)
                if size == "10m" and es_reps < s.repeats:
                    notes["es_actors"] += f"; {es_reps} repetitions (the peers {s.repeats}) to keep the module short"
                if s.wants("es_actors"):
                    systems.append(("es_actors", lambda d: es_catch_up(d, Balances), min(es_reps, s.repeats)))
                if size == "1m" and s.wants("es_actors_s3"):
                    notes["es_actors_s3"] = _s3_notes(notes["es_actors"])
                    systems.append(("es_actors_s3", lambda d: es_catch_up_s3(d, Balances), s.repeats))
                if s.wants("duckdb_raw"):
                    systems.append(("duckdb_raw", duckdb_group_by, s.repeats))
                if pg is not None and s.wants("postgres_sql"):
                    systems.append(("postgres_sql", pg.group_by, s.repeats))
            else:
                notes = _python_notes(ds, pg)
                if s.wants("es_actors"):
                    systems.append(("es_actors", lambda d: es_catch_up(d, BalancesPy), s.repeats))
                if s.wants("es_actors_s3"):
                    notes["es_actors_s3"] = _s3_notes(notes["es_actors"])
                    systems.append(("es_actors_s3", lambda d: es_catch_up_s3(d, BalancesPy), s.repeats))
                if pg is not None and s.wants("postgres"):
                    systems.append(("postgres", pg.fetch_and_fold, s.repeats))
            log(f"projection: {bench}: {', '.join(n for n, _f, _r in systems)}")
            run_catch_up(ctx, bench, ds, systems, notes)


# -- projection_lag --------------------------------------------------------------------------------------


class LagRun:
    def __init__(self) -> None:
        self.lags_ms: list[float] = []
        self.ack_ms: list[float] = []  # submit -> acknowledged, of the samples
        self.acked = 0
        self.errors = 0
        self.first_error: BaseException | None = None
        self.offered = 0
        self.window_s = 0.0
        self.late_bursts = 0
        self.high_water: dict[int, int] = {}  # partition -> last position written

    @property
    def commands_per_s(self) -> float:
        return self.acked / self.window_s if self.window_s else 0.0


def lag_run(store: Any, accounts: list[str], duration_s: float, warmup_s: float, seed: int) -> LagRun:
    """Open loop: LAG_BURST Deposit commands every LAG_BURST / LAG_RATE s (submit_many_async, no
    expected version); every LAG_SAMPLE_EVERY-th command submitted inside the window is a sample.
    A poller thread calls projection_status() every LAG_POLL_S and marks a sample visible once its
    partition's checkpoint reaches the sample's position: lag = that poll's return - the ack."""
    import random

    from es_actors import Submission
    from es_actors.examples.bank import BankAccount, Deposit

    rng = random.Random(seed)
    run = LagRun()
    period = LAG_BURST / LAG_RATE
    pending: deque[tuple[int, int, float]] = deque()  # (partition, position, ack time) from ack callbacks
    waiting: list[tuple[int, int, float]] = []
    stop = threading.Event()
    acks: list[float] = []  # ack times of every command (list.append is atomic)
    lock = threading.Lock()

    def on_ack(fut: Any) -> None:
        acks.append(time.perf_counter())

    def on_sample(t_submit: float, fut: Any) -> None:
        t = time.perf_counter()
        exc = fut.exception()
        if exc is not None:
            with lock:
                run.errors += 1
                run.first_error = run.first_error or exc
            return
        p, pos = fut.result().positions[-1]
        run.ack_ms.append((t - t_submit) * 1000.0)
        pending.append((p, pos, t))

    def poller() -> None:
        while True:
            rows = store.projection_status()
            now = time.perf_counter()
            cps = {r["partition"]: r["checkpoint"] for r in rows if r["projection"] == "balances"}
            while pending:
                waiting.append(pending.popleft())
            still = []
            for p, pos, t_ack in waiting:
                if cps.get(p, 0) >= pos:
                    run.lags_ms.append((now - t_ack) * 1000.0)
                else:
                    still.append((p, pos, t_ack))
            waiting[:] = still
            if stop.is_set() and not waiting and not pending:
                return
            time.sleep(LAG_POLL_S)

    poll_thread = threading.Thread(target=poller, name="lag-poller", daemon=True)
    poll_thread.start()
    futures: list[Any] = []
    t_start = time.perf_counter()
    w0, w1 = t_start + warmup_s, t_start + warmup_s + duration_s
    k = 0
    j = 0
    try:
        while True:
            t_next = t_start + k * period
            if t_next >= w1:
                break
            now = time.perf_counter()
            if now < t_next:
                time.sleep(t_next - now)
            elif now - t_next > period:
                run.late_bursts += 1
            subs = [Submission(BankAccount, accounts[rng.randrange(len(accounts))], Deposit(amount=rng.randint(1, 10_000)))
                    for _ in range(LAG_BURST)]
            t_submit = time.perf_counter()
            futs = store.submit_many_async(subs)
            in_window = t_next >= w0
            for f in futs:
                if in_window and j % LAG_SAMPLE_EVERY == 0:
                    f.add_done_callback(lambda fut, ts=t_submit: on_sample(ts, fut))
                if in_window:
                    f.add_done_callback(on_ack)
                    run.offered += 1
                j += 1
            futures.extend(futs)
            k += 1
        for f in futures:
            try:
                p, pos = f.result(timeout=120).positions[-1]
                run.high_water[p] = max(run.high_water.get(p, 0), pos)
            except Exception as exc:
                if run.first_error is None:
                    run.first_error = exc
    finally:
        stop.set()
        poll_thread.join(timeout=120)
    run.window_s = duration_s
    run.acked = sum(1 for t in acks if t <= w1)
    if run.first_error is not None:
        log(f"  projection_lag: {run.errors} failed samples; first error: {run.first_error!r}")
    return run


def run_lag(ctx: Context) -> None:
    from es_actors import Store, Submission
    from es_actors.examples.bank import BankAccount, OpenAccount
    from es_actors.examples.bank_projections import Balances

    s = ctx.settings
    if not s.wants("es_actors"):
        return
    start_ray()
    work = scratch_dir("es_actors_lag_")
    store = None
    try:
        store = Store.open(work / "store", [BankAccount], partitions=PARTITIONS, projections=[Balances])
        accounts = [f"lag-{i:04d}" for i in range(LAG_ACCOUNTS)]
        results = store.submit_many([Submission(BankAccount, a, OpenAccount(owner=a), expected_version=0) for a in accounts])
        bad = [r for r in results if isinstance(r, Exception)]
        if bad:
            raise RuntimeError(f"opening accounts failed: {len(bad)} errors, first {bad[0]!r}")
        hw: dict[int, int] = {}
        for r in results:
            for p, pos in r.positions:
                hw[p] = max(hw.get(p, 0), pos)
        store.wait_for("balances", hw, timeout=60)
        runs: list[LagRun] = []
        for rep in range(s.repeats):
            r = lag_run(store, accounts, s.duration_s, s.warmup_s, s.seed + rep)
            runs.append(r)
            log(f"    projection_lag     es_actors  {r.commands_per_s:,.0f} commands/s acknowledged "
                f"({r.offered / s.duration_s:,.0f} offered); ack->visible p50 {percentile(r.lags_ms, 50):.1f} ms  "
                f"p99 {percentile(r.lags_ms, 99):.1f} ms  max {max(r.lags_ms, default=float('nan')):.1f} ms "
                f"(n={len(r.lags_ms)}); submit->ack p50 {percentile(r.ack_ms, 50):.1f} ms"
                + (f"; {r.late_bursts} bursts sent late" if r.late_bursts else ""))
        check = check_lag_store(store, runs)
        p50 = statistics.median(percentile(r.lags_ms, 50) for r in runs)
        p99 = statistics.median(percentile(r.lags_ms, 99) for r in runs)
        cps = statistics.median(r.commands_per_s for r in runs)
        notes = (
            f"Balances SQL projection live, 4 partitions, {LAG_ACCOUNTS} accounts opened beforehand; open-loop load of "
            f"Deposit commands offered at {LAG_RATE:,}/s ({LAG_BURST} per submit_many_async call every "
            f"{LAG_BURST / LAG_RATE * 1000:.0f} ms, random accounts, no expected version) from one thread; achieved "
            f"{cps:,.0f} commands/s acknowledged (median of runs: "
            f"{', '.join(f'{r.commands_per_s:,.0f}' for r in runs)}); every {LAG_SAMPLE_EVERY}th command is a sample: "
            "lag = from its acknowledgement (future done) to the return of the first projection_status() poll "
            f"(every {LAG_POLL_S * 1000:.0f} ms, one thread) showing its partition's checkpoint at or past its position "
            f"(resolution ~{LAG_POLL_S * 1000:.0f} ms + one status call); {s.duration_s:g} s windows after "
            f"{s.warmup_s:g} s warm-up, {len(runs)} runs on the same store, medians of the per-run percentiles; "
            f"submit->ack p50 {statistics.median(percentile(r.ack_ms, 50) for r in runs):.1f} ms; "
            f"target: p99 <= 500 ms; {check}"
        )
        extra = {"runs": len(runs), "commands_per_s": round(cps, 1), "offered_per_s": LAG_RATE,
                 "samples": sum(len(r.lags_ms) for r in runs), "errors": sum(r.errors for r in runs) or None,
                 "notes": notes}
        ctx.results.record("projection_lag", "es_actors", "p50_ms", p50, unit="ms", **extra)
        ctx.results.record("projection_lag", "es_actors", "p99_ms", p99, unit="ms", **extra)
        log(f"  projection_lag     es_actors  ack->visible p50 {p50:.1f} ms  p99 {p99:.1f} ms at {cps:,.0f} commands/s")
    finally:
        if store is not None:
            store.close()
        shutil.rmtree(work, ignore_errors=True)


def check_lag_store(store: Any, runs: list[LagRun]) -> str:
    """The live read model must equal the events relation's fold (every command landed once)."""
    hw: dict[int, int] = {}
    for r in runs:
        for p, pos in r.high_water.items():
            hw[p] = max(hw.get(p, 0), pos)
    store.wait_for("balances", hw, timeout=120)
    rows = store.query(
        "SELECT count(*) AS n, sum(balance) AS total, sum(events) AS events FROM balances"
    ).to_pylist()[0]
    truth = store.query(
        "SELECT count(DISTINCT aggregate_id) AS n, sum(CASE WHEN event_type = 'MoneyDeposited' "
        "THEN (payload->>'amount')::BIGINT ELSE 0 END) AS total, count(*) AS events FROM events"
    ).to_pylist()[0]
    if (rows["n"], rows["total"], rows["events"]) != (truth["n"], truth["total"], truth["events"]):
        raise RuntimeError(f"projection_lag: read model {rows} differs from the log {truth}")
    return f"read model checked against the log: {rows['n']} accounts, {rows['events']:,} events"


# -------------------------------------------------------------------------------------------------------------


def run(ctx: Context, selected: list[str]) -> None:
    catch_ups = [b for b in selected if b != "projection_lag"]
    if catch_ups:
        run_catch_ups(ctx, catch_ups)
    if "projection_lag" in selected:
        run_lag(ctx)
