"""A mixed read/write workload: ``mixed_8w8r`` (issue 11).

The shape of the open eventstore-benchmarks suite's balanced mixed workload: 5,000 streams
pre-populated with 10,000 events (two each), then 8 writers appending one 256-byte event per
command (``benchmarks.mixed_domain.Stream``: ``Append`` -> ``Appended``, the stored JSON
payload exactly 256 bytes) and 8 readers each reading up to 50 events of a random stream, at
the same time, closed loop (each waits for its answer before the next).

- Writers: 8 threads in the bench process, each owning a disjoint slice of the streams (625),
  picking uniformly within it (seeded) and sending the expected version it tracks (no
  conflicts). ``es_actors``: ``handle.submit(Append(...), expected_version=v)`` on a writable
  store (4 partitions, local Ray; the direct link of ADR-007); ``postgres``: one psycopg 3
  connection per writer, one autocommit ``INSERT`` per event at version = expected + 1 into
  ``mixed_events(stream_id, version, event_type, payload jsonb, recorded_at, UNIQUE(stream_id,
  version))`` (``synchronous_commit=on``).
- Readers: 8 **processes** (multiprocessing, spawn), for both systems. A read decodes its events
  in Python (pydantic), so 8 reader threads beside the 8 writer threads would contend for one
  GIL and measure the bench process rather than either system; processes give every system's
  readers the machine's cores the same way. ``es_actors``: ``Store.open(root, [Stream],
  read_only=True)`` (no Ray) in each process, ``store.history("Stream", id)`` (with ``limit=50``
  where the store offers it, else the first 50 of the history); ``postgres``: a psycopg 3
  connection each, ``SELECT version, event_type, payload::text ... WHERE stream_id = %s ORDER BY
  version LIMIT 50`` on the unique (stream_id, version) index, ``model_validate_json`` per row.

Runs (``--warmup`` + ``--duration`` each, ``--repeats`` rounds, configurations interleaved with
the order rotating; medians; every run starts from the same pre-populated state): closed loop for ``es_actors`` and ``postgres`` -> ``reads_per_s``,
``writes_per_s``, ``read_p50_ms``, ``read_p99_ms``, ``write_p50_ms``, ``write_p99_ms``; for
``es_actors`` also the writers with readers open-loop at 2,000 reads/s in all (250/s per
process, on a fixed schedule, latency from the scheduled time) -> ``writes_per_s_open_readers``,
and with no readers -> ``writes_per_s_no_readers``. Every run starts from the pre-populated state:
es_actors a fresh clone of a sealed template store (segments and index runs hard-linked), its
streams hydrated, PostgreSQL the table truncated and loaded again, so a run's streams hold the same
events on both sides whatever the runs before wrote (before, one store and one table grew by every
run's writes, and es_actors' readers decoded up to twice as many events per read as PostgreSQL's).
Time added to ``make bench``: 4 configurations x repeats x (warm-up + window + ~3-5 s starting the
reader processes and opening the run's store): ~3 min with the defaults.
"""

from __future__ import annotations

import inspect
import multiprocessing as mp
import random
import shutil
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from benchmarks.common import Context, closed_loop, log, percentile, scratch_dir
from benchmarks.pg import events_ddl

BENCHES = ["mixed_8w8r"]

STREAMS = 5_000
PREPOPULATED = 10_000  # events in all, PER_STREAM per stream
PER_STREAM = PREPOPULATED // STREAMS
WRITERS = 8
READERS = 8
READ_MAX = 50
OPEN_READS_PER_S = 2_000  # in all, for writes_per_s_open_readers
PARTITIONS = 4
PG_TABLE = "mixed_events"
PG_DDL = events_ddl(PG_TABLE)  # dropped first: created fresh for each run


def stream_id(i: int) -> str:
    return f"stream-{i:05d}"


# -- readers (separate processes) -----------------------------------------------------------


def _es_read_fn(root: str) -> Callable[[str], int]:
    from es_actors import Store

    from benchmarks.mixed_domain import Stream

    store = Store.open(root, [Stream], read_only=True)
    if "limit" in inspect.signature(store.history).parameters:  # range reads (issue 11)
        limit: dict[str, Any] = {"limit": READ_MAX}

        def read(sid: str) -> int:
            return len(store.history("Stream", sid, **limit))
    else:
        def read(sid: str) -> int:
            return len(store.history("Stream", sid)[:READ_MAX])
    return read


def _pg_read_fn(dsn: str) -> Callable[[str], int]:
    import psycopg

    from benchmarks.mixed_domain import Appended

    conn = psycopg.connect(dsn, autocommit=True)
    sql = f"SELECT version, event_type, payload::text FROM {PG_TABLE} WHERE stream_id = %s ORDER BY version LIMIT {READ_MAX}"

    def read(sid: str) -> int:
        rows = conn.execute(sql, (sid,)).fetchall()
        return len([Appended.model_validate_json(p) for _v, _t, p in rows])

    return read


def _cpu_read_fn(us: str) -> Callable[[str], int]:
    """A stand-in reader that reads nothing and spends ``us`` microseconds of CPU per read
    (``benchmarks.reader_budget``: what a read may cost the machine for a given write ratio)."""
    budget = float(us) / 1e6

    def read(sid: str) -> int:
        end = time.thread_time() + budget
        while time.thread_time() < end:
            pass
        return 0

    return read


READ_FNS: dict[str, Callable[[str], Callable[[str], int]]] = {
    "es_actors": _es_read_fn, "postgres": _pg_read_fn, "cpu": _cpu_read_fn}


def reader_main(system: str, target: str, seed: int, rate: float | None, go: Any, start_at: Any,
                ready: Any, out: Any, warmup_s: float, duration_s: float) -> None:
    """One reader process: set up, say ready, wait for ``go``, read until the window ends
    (closed loop, or open loop at ``rate`` reads/s), send (reads, latencies, errors, first error,
    CPU seconds of this process per read: warm-up and window)."""
    try:
        read = READ_FNS[system](target)
        rng = random.Random(seed)
        read(stream_id(0))  # first open of files / connection warm
    except BaseException as exc:
        ready.put(repr(exc))
        return
    ready.put("ok")
    go.wait(120)
    t0 = start_at.value
    w0, w1 = t0 + warmup_s, t0 + warmup_s + duration_s
    lat: list[float] = []
    errors, first_error = 0, None
    k = done = 0
    clock = time.time
    cpu0 = time.process_time()
    while True:
        if rate:
            due = t0 + k / rate
            k += 1
            now = clock()
            if due > now:
                time.sleep(due - now)
            t_start = due  # open loop: latency from the scheduled time (no coordinated omission)
        else:
            t_start = clock()
        if t_start >= w1 or clock() >= w1:  # (an open loop that falls behind stops at the window's end too)
            break
        try:
            read(stream_id(rng.randrange(STREAMS)))
        except Exception as exc:
            errors += 1
            first_error = first_error or repr(exc)
            continue
        done += 1
        t_end = clock()
        if w0 <= t_end <= w1:
            lat.append((t_end - t_start) * 1000.0)
    out.put((len(lat), lat, errors, first_error, (time.process_time() - cpu0) / max(done, 1)))


# -- one run ------------------------------------------------------------------------------------


@dataclass
class MixedRun:
    config: str
    writes_per_s: float
    write_p50_ms: float
    write_p99_ms: float
    reads_per_s: float = 0.0
    read_p50_ms: float = float("nan")
    read_p99_ms: float = float("nan")
    read_errors: int = 0
    reader_cpu_us: float = float("nan")  # CPU of a reader process per read (its sleeps and wake-ups included)
    extra: dict[str, Any] = field(default_factory=dict)


def one_run(system: str, target: str, make_write: Callable[[int], Callable[[], int]], readers: str,
            warmup_s: float, duration_s: float, seed: int) -> MixedRun:
    """Writers closed loop in threads; ``readers``: 'closed', 'open' (OPEN_READS_PER_S in all) or 'none'."""
    ctx = mp.get_context("spawn")
    procs = []
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    start_at = ctx.Value("d", 0.0)
    if readers != "none":
        rate = OPEN_READS_PER_S / READERS if readers == "open" else None
        for i in range(READERS):
            p = ctx.Process(target=reader_main, name=f"mixed-reader-{i}", daemon=True,
                            args=(system, target, seed * 100 + i, rate, go, start_at, ready, out, warmup_s, duration_s))
            p.start()
            procs.append(p)
    try:
        for _ in procs:
            msg = ready.get(timeout=120)
            if msg != "ok":
                raise RuntimeError(f"mixed_8w8r: a {system} reader failed to start: {msg}")
        start_at.value = time.time()
        go.set()
        load = closed_loop(WRITERS, make_write, duration_s, warmup_s)
        results = [out.get(timeout=60 + duration_s) for _ in procs]
    finally:
        go.set()
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
    run = MixedRun(readers, load.events_per_s, load.p50_ms, load.p99_ms)
    if results:
        lat = [x for r in results for x in r[1]]
        run.reads_per_s = sum(r[0] for r in results) / duration_s
        run.read_p50_ms, run.read_p99_ms = percentile(lat, 50), percentile(lat, 99)
        run.read_errors = sum(r[2] for r in results)
        run.reader_cpu_us = statistics.median(r[4] for r in results) * 1e6
        errs = [r[3] for r in results if r[3]]
        if errs:
            log(f"  warning: {run.read_errors} failed reads; first: {errs[0]}")
        if not lat:
            raise RuntimeError(f"mixed_8w8r: {system} readers completed no read ({errs[:1]})")
    log(f"  mixed_8w8r {system:<9} readers {readers:<6} writes {run.writes_per_s:8,.0f}/s p50 {run.write_p50_ms:.2f} "
        f"p99 {run.write_p99_ms:.2f} ms | reads {run.reads_per_s:8,.0f}/s p50 {run.read_p50_ms:.2f} "
        f"p99 {run.read_p99_ms:.2f} ms | reader CPU {run.reader_cpu_us:,.0f} us/read")
    return run


# -- systems -----------------------------------------------------------------------------------------


def writer_slices(seed: int) -> list[list[str]]:
    ids = [stream_id(i) for i in range(STREAMS)]
    return [ids[w::WRITERS] for w in range(WRITERS)]


class EsSide:
    """The es_actors side: a pre-populated, sealed template store, cloned afresh for every run
    (segments and index runs hard-linked, the rest copied), so every run starts from the same
    10,000 events as PostgreSQL's table does."""

    def __init__(self, seed: int) -> None:
        from es_actors import Store, Submission

        from benchmarks.mixed_domain import DATA, Append, Stream
        from benchmarks.projection import start_ray

        start_ray()
        self.work = scratch_dir("es_actors_mixed_")
        self.template = self.work / "template"
        store = Store.open(self.template, [Stream], partitions=PARTITIONS)
        try:
            subs = [Submission(Stream, stream_id(i), Append(data=DATA)) for _ in range(PER_STREAM)
                    for i in range(STREAMS)]
            for s in range(0, len(subs), 1_000):
                for r in store.submit_many(subs[s : s + 1_000]):
                    if isinstance(r, Exception):
                        raise RuntimeError(f"mixed_8w8r: pre-population failed: {r!r}")
            store.seal()
        finally:
            store.close()
        self.store: Any = None
        self.root = self.work / "run"
        self.slices = writer_slices(seed)
        self.seed = seed
        self.rounds = 0

    def start_round(self) -> None:
        """A fresh clone of the template, opened writable: the run's store."""
        from es_actors import Store

        from benchmarks.datasets import clone
        from benchmarks.mixed_domain import Stream

        self.end_round()
        clone(self.template, self.root)
        self.store = Store.open(self.root, [Stream], partitions=PARTITIONS)
        # Every stream in memory, as in a store that has been serving them (the template's writer
        # had them; a fresh open hydrates each on its first command, ~5,000 log reads in the window).
        self.store.hydrate()
        self.versions = {stream_id(i): PER_STREAM for i in range(STREAMS)}

    def make_write(self, w: int) -> Callable[[], int]:
        from benchmarks.mixed_domain import DATA, Append, Stream

        rng = random.Random(self.seed * 1000 + self.rounds * 10 + w)
        handles = {sid: self.store.aggregate(Stream, sid) for sid in self.slices[w]}
        ids = self.slices[w]
        versions = self.versions
        command = Append(data=DATA)

        def op() -> int:
            sid = ids[rng.randrange(len(ids))]
            handles[sid].submit(command, expected_version=versions[sid])
            versions[sid] += 1
            return 1

        return op

    def end_round(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None
        shutil.rmtree(self.root, ignore_errors=True)

    def close(self) -> None:
        self.end_round()
        shutil.rmtree(self.work, ignore_errors=True)


class PgSide:
    """The PostgreSQL side: the table reset to the same 10,000 pre-populated events before every run."""

    def __init__(self, seed: int) -> None:
        from benchmarks.mixed_domain import DATA, Appended
        from benchmarks.projection import shared_pg

        self.pg = shared_pg()
        payload = Appended(data=DATA).model_dump_json()
        with self.pg.cluster.connect() as conn:
            conn.execute(f"DROP TABLE IF EXISTS {PG_TABLE}")
            conn.execute(PG_DDL)
            conn.commit()
        self.payload = payload
        self.slices = writer_slices(seed)
        self.seed = seed
        self.rounds = 0
        self.conns: list[Any] = []

    @property
    def dsn(self) -> str:
        return self.pg.cluster.dsn

    def start_round(self) -> None:
        """The table back to its pre-populated rows (TRUNCATE, COPY, VACUUM ANALYZE)."""
        self.end_round()
        with self.pg.cluster.connect() as conn:
            conn.execute(f"TRUNCATE {PG_TABLE}")
            with conn.cursor().copy(f"COPY {PG_TABLE} (stream_id, version, event_type, payload) FROM STDIN") as cp:
                for v in range(1, PER_STREAM + 1):
                    for i in range(STREAMS):
                        cp.write_row((stream_id(i), v, "Appended", self.payload))
            conn.commit()
        self.pg.cluster.execute(f"VACUUM ANALYZE {PG_TABLE}")
        self.versions = {stream_id(i): PER_STREAM for i in range(STREAMS)}

    def make_write(self, w: int) -> Callable[[], int]:
        rng = random.Random(self.seed * 1000 + self.rounds * 10 + w)
        conn = self.pg.cluster.connect(autocommit=True)
        self.conns.append(conn)
        ids, versions, payload = self.slices[w], self.versions, self.payload
        sql = f"INSERT INTO {PG_TABLE} (stream_id, version, event_type, payload) VALUES (%s, %s, 'Appended', %s::jsonb)"

        def op() -> int:
            sid = ids[rng.randrange(len(ids))]
            conn.execute(sql, (sid, versions[sid] + 1, payload))
            versions[sid] += 1
            return 1

        return op

    def end_round(self) -> None:
        for c in self.conns:
            c.close()
        self.conns.clear()

    def close(self) -> None:
        self.end_round()
        self.pg.cluster.execute(f"DROP TABLE IF EXISTS {PG_TABLE}")


# -- the bench ---------------------------------------------------------------------------------------


def run(ctx: Context, selected: list[str]) -> None:
    s = ctx.settings
    es = EsSide(s.seed) if s.wants("es_actors") else None
    pg = PgSide(s.seed) if s.wants("postgres") else None
    runs: dict[tuple[str, str], list[MixedRun]] = {}
    try:
        configs: list[tuple[str, str]] = []
        if es is not None:
            configs += [("es_actors", "closed"), ("es_actors", "open"), ("es_actors", "none")]
        if pg is not None:  # (its open-loop and no-reader runs: the same ratio for the peer, as context)
            configs.insert(1 if es is not None else 0, ("postgres", "closed"))
            configs += [("postgres", "open"), ("postgres", "none")]
        for rep in range(s.repeats):
            k = rep % len(configs)
            for system, readers in configs[k:] + configs[:k]:
                side: Any = es if system == "es_actors" else pg
                target = str(es.root) if system == "es_actors" and es is not None else (pg.dsn if pg else "")
                side.rounds += 1
                side.start_round()
                try:
                    r = one_run(system, target, side.make_write, readers, s.warmup_s, s.duration_s,
                                s.seed + rep)
                finally:
                    side.end_round()
                runs.setdefault((system, readers), []).append(r)
    finally:
        if es is not None:
            es.close()
        if pg is not None:
            pg.close()
    record(ctx, runs, pg.pg.version if pg is not None else "?")


def record(ctx: Context, runs: dict[tuple[str, str], list[MixedRun]], pg_version: str) -> None:
    def med(rs: list[MixedRun], attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in rs)

    base = (f"{STREAMS:,} streams pre-populated with {PREPOPULATED:,} events; {WRITERS} writer threads (disjoint "
            f"stream slices, expected version, one 256-byte event per command) and {READERS} reader processes "
            f"(up to {READ_MAX} events of a random stream, decoded), closed loop")
    notes = {
        "es_actors": base + "; writable store (4 partitions, local Ray) for the writers, a read-only store "
                            "(no Ray) in each reader process, store.history(...)",
        "postgres": base + f"; PostgreSQL {pg_version}: autocommit INSERT per event, SELECT ... ORDER BY version "
                           f"LIMIT {READ_MAX} + model_validate_json per row",
    }
    for (system, readers), rs in runs.items():
        extra: dict[str, Any] = {"runs": len(rs), "writers": WRITERS, "readers": READERS if readers != "none" else 0,
                 "read_errors": sum(r.read_errors for r in rs) or None}
        if readers == "closed":
            n = notes[system] + "; target: es_actors reads/s >= postgres's"
            for metric in ("reads_per_s", "writes_per_s", "read_p50_ms", "read_p99_ms", "write_p50_ms", "write_p99_ms"):
                ctx.results.record("mixed_8w8r", system, metric, med(rs, metric), notes=n, **extra)
        elif readers == "open":
            n = (notes[system] + f"; readers open loop at {OPEN_READS_PER_S:,} reads/s in all (achieved "
                 f"{med(rs, 'reads_per_s'):,.0f}/s, read p50 {med(rs, 'read_p50_ms'):.2f} ms from the scheduled time); "
                 "target (es_actors): >= 0.8x writes_per_s_no_readers; postgres's the same ratio, for context")
            ctx.results.record("mixed_8w8r", system, "writes_per_s_open_readers", med(rs, "writes_per_s"), notes=n, **extra)
            ctx.results.record("mixed_8w8r", system, "reader_cpu_us_per_read_open", med(rs, "reader_cpu_us"),
                               notes=n + "; CPU of one reader process per read, its sleeps and wake-ups included "
                                         "(postgres: the client's only, not its server backend's)", **extra)
        else:
            ctx.results.record("mixed_8w8r", system, "writes_per_s_no_readers", med(rs, "writes_per_s"),
                               notes=notes[system] + "; no readers", **extra)
