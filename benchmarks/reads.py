"""Reading one aggregate's history: ``read_history_10m`` (issue 11).

Latency of reading one probe aggregate's 100 events, decoded into the bank example's event
classes, in the bank data sets of ``projection.py`` (1M and 10M events, 4 partitions, sealed
segments; ``benchmarks.datasets`` interleaves 1,000 probe aggregates of exactly 100 events at
evenly spaced positions, so each probe's events lie spread over every segment of its partition,
and builds each partition's stream index when the library has one).

Systems, on one hard-linked working copy of the data set, read side by side:

- ``es_actors``: ``Store.open(copy, [BankAccount], partitions=4)`` (writable: partition actors on
  a local Ray), ``store.history("BankAccount", probe)`` -> ``RecordedEvent`` s with decoded events,
  through whatever path the store uses for it.
- ``es_actors_readonly``: ``Store.open(copy, [BankAccount], read_only=True)`` (no Ray), the same call.
- ``postgres``: the same events in ``events`` of the run's shared cluster (``projection.Pg``:
  PRIMARY KEY (partition, position), UNIQUE (stream_id, version), loaded once per run by COPY),
  one psycopg 3 connection: ``SELECT position, version, event_type, payload::text ... WHERE
  stream_id = %s ORDER BY version`` (an index scan on the unique (stream_id, version) index), then
  ``model_validate_json`` of each payload into its event class.

Probes are drawn at random (seeded, the same sequence for every system); each probe is read by
every system in turn, the order rotating per probe. The first ``WARMUP_READS`` probes are not
counted. Bounded: ``READS`` counted reads per system and size, or ``SIZE_BUDGET_S`` seconds of
reading per size, whichever comes first (today's scanning reads take ~0.5 s at 10M, so the
budget ends those runs early: the row's ``reads`` says how many were counted). Every read is
checked: 100 events, versions 1..100 in order, and the same events on every side.

``_tail``: then, on the 10M copy, ``TAIL_EVENTS`` (50,000) commands are appended through the
writable store (``submit_many``, 1,000 per call, to 1,000 fresh accounts of partition 0, opened then
deposited to;
the store is opened with ``seal_rows`` above that, so they stay unsealed in the WAL tail) and the
probes of partition 0 are read again by all three systems (postgres unchanged: it has no tail;
its row is there for the ratio): ``p50_ms_tail``, ``p99_ms_tail``.

Time added to ``make bench``: opening the writable 10M store (~10-20 s: actors recover their
indexes), the tail appends (~5 s), reads bounded at 2 x ``SIZE_BUDGET_S`` + tail budget; the
PostgreSQL loads are shared with ``project_sql_*`` (a data set loaded once per run).
"""

from __future__ import annotations

import os
import itertools
import random
import shutil
import time
from typing import Any, Callable

from benchmarks.common import Context, log, percentile, scratch_dir
from benchmarks.datasets import clone
from benchmarks.projection import PARTITIONS, Dataset, shared_pg, start_ray

BENCHES = ["read_history_10m"]

READS = int(os.environ.get("BENCH_READS", 300))  # counted reads per system and size
WARMUP_READS = 5  # probes read by every system before counting
SIZE_BUDGET_S = float(os.environ.get("BENCH_READ_BUDGET_S", 40))  # reading time per size (all systems)
TAIL_EVENTS = int(os.environ.get("BENCH_TAIL_EVENTS", 50_000))  # unsealed events in partition 0 for _tail
TAIL_BATCH = 1_000
AGG = "BankAccount"

Reader = Callable[[str], list[tuple[int, Any]]]  # probe id -> [(version, decoded event)]


def es_reader(store: Any) -> Reader:
    def read(probe: str) -> list[tuple[int, Any]]:
        return [(e.version, e.event) for e in store.history(AGG, probe)]

    return read


def pg_reader(conn: Any) -> Reader:
    from es_actors.examples.bank import AccountOpened, MoneyDeposited, MoneyWithdrawn

    models = {c.event_type: c for c in (AccountOpened, MoneyDeposited, MoneyWithdrawn)}
    sql = "SELECT position, version, event_type, payload::text FROM events WHERE stream_id = %s ORDER BY version"

    def read(probe: str) -> list[tuple[int, Any]]:
        rows = conn.execute(sql, (probe,)).fetchall()
        return [(version, models[etype].model_validate_json(payload)) for _pos, version, etype, payload in rows]

    return read


def check_read(system: str, probe: str, got: list[tuple[int, Any]], expect_events: int,
               reference: dict[str, list[tuple[int, Any]]]) -> None:
    """Every read: the probe's events, versions 1..n in order, equal to the first system's read."""
    if [v for v, _e in got] != list(range(1, expect_events + 1)):
        raise RuntimeError(f"read_history: {system} read {len(got)} events of {probe} "
                           f"(versions {[v for v, _e in got][:5]}...), expected versions 1..{expect_events}")
    ref = reference.setdefault(probe, got)
    if ref is not got and ref != got:
        raise RuntimeError(f"read_history: {system} read other events of {probe} than the first system")


def measure(readers: dict[str, Reader], probes: list[str], expect_events: int, budget_s: float,
            seed: int) -> dict[str, list[float]]:
    """Latency (ms) of each reader per probe, interleaved, warm-up excluded. The order cycles through
    every permutation of the readers: the two es_actors stores share this process's caches (a
    probe's first read pays for what the second then finds warm), so each must come first as often
    as the other (a plain rotation of three put the writable store first among them 2 times in 3)."""
    rng = random.Random(seed)
    names = list(readers)
    orders = list(itertools.permutations(names))
    lat: dict[str, list[float]] = {n: [] for n in names}
    reference: dict[str, list[tuple[int, Any]]] = {}
    deadline = time.monotonic() + budget_s
    i = 0
    while i < WARMUP_READS + READS and (i < WARMUP_READS + 3 or time.monotonic() < deadline):
        probe = probes[rng.randrange(len(probes))]
        for name in orders[i % len(orders)]:
            t0 = time.perf_counter()
            got = readers[name](probe)
            dt = (time.perf_counter() - t0) * 1000.0
            check_read(name, probe, got, expect_events, reference)
            if i >= WARMUP_READS:
                lat[name].append(dt)
        i += 1
    return lat


def append_tail(store: Any, ds: Dataset, partition: int, n: int) -> float:
    """n commands (one event each) to 1,000 fresh accounts of ``partition``: each opened, then
    deposits. Fresh accounts, because a data-set account's first command hydrates it from the
    sealed log (its 10-100 events spread over every segment: the actor's hydration is measured
    by ``activate_10k``, not here)."""
    from es_actors import Submission
    from es_actors.examples.bank import BankAccount, Deposit, OpenAccount
    from es_actors.storage.layout import partition_of

    accounts: list[str] = []
    k = 0
    while len(accounts) < min(1000, n):
        name = f"tail-{k:06d}"
        if partition_of(AGG, name, PARTITIONS) == partition:
            accounts.append(name)
        k += 1
    t = time.perf_counter()
    for s in range(0, n, TAIL_BATCH):
        subs = []
        for j in range(s, min(s + TAIL_BATCH, n)):
            acct = accounts[j % len(accounts)]
            subs.append(Submission(BankAccount, acct, OpenAccount(owner=acct) if j < len(accounts) else Deposit(amount=1)))
        for r in store.submit_many(subs):
            if isinstance(r, Exception):
                raise RuntimeError(f"read_history: tail append failed: {r!r}")
    return time.perf_counter() - t


def run(ctx: Context, selected: list[str]) -> None:
    from es_actors import Store
    from es_actors.examples.bank import BankAccount
    from es_actors.storage.layout import partition_of

    s = ctx.settings
    wants = [n for n in ("es_actors", "es_actors_readonly", "postgres") if s.wants(n)]
    pg = shared_pg() if "postgres" in wants else None
    stats: dict[tuple[str, str], list[float]] = {}  # (system, metric suffix) -> latencies
    notes_extra: dict[str, str] = {}
    for size in ("1m", "10m"):
        ds = Dataset(size)
        probes = ds.probe_ids()
        if not probes:
            raise RuntimeError(f"read_history: data set {ds.dir.name} has no probe aggregates")
        log(f"reads: data set {ds.dir.name}: {ds.describe()} (stream index: {ds.meta.get('stream_index', 'none')})")
        if pg is not None:
            pg.load(ds)
        work = scratch_dir(f"es_actors_reads_{size}_")
        root = work / work.name
        rw = ro = conn = None
        try:
            clone(ds.store, root)
            readers: dict[str, Reader] = {}
            tail = size == "10m" and TAIL_EVENTS > 0 and any(w.startswith("es_actors") for w in wants)
            if "es_actors" in wants or tail:
                start_ray()
                t = time.perf_counter()
                rw = Store.open(root, [BankAccount], partitions=PARTITIONS, seal_rows=max(100_000, 2 * TAIL_EVENTS))
                log(f"reads: writable store open on {ds.events:,} events in {time.perf_counter() - t:.1f} s")
                if "es_actors" in wants:
                    readers["es_actors"] = es_reader(rw)
            if "es_actors_readonly" in wants:
                ro = Store.open(root, [BankAccount], read_only=True)
                readers["es_actors_readonly"] = es_reader(ro)
            if pg is not None:
                conn = pg.cluster.connect(autocommit=True)
                readers["postgres"] = pg_reader(conn)
            suffix = "" if size == "10m" else f"_{size}"
            lat = measure(readers, probes, 100, SIZE_BUDGET_S, s.seed)
            for name, xs in lat.items():
                stats[(name, suffix)] = xs
                log(f"  read_history {size:>3} {name:<19} p50 {percentile(xs, 50):8.2f} ms  "
                    f"p99 {percentile(xs, 99):8.2f} ms  ({len(xs)} reads)")
            if tail and rw is not None:
                secs = append_tail(rw, ds, 0, TAIL_EVENTS)
                log(f"reads: {TAIL_EVENTS:,} events appended to partition 0 in {secs:.1f} s (unsealed: seal_rows "
                    f"{max(100_000, 2 * TAIL_EVENTS):,})")
                tail_probes = [p for p in probes if partition_of(AGG, p, PARTITIONS) == 0]
                lat = measure(readers, tail_probes, 100, SIZE_BUDGET_S / 2, s.seed + 1)
                for name, xs in lat.items():
                    stats[(name, "_tail")] = xs
                    log(f"  read_history tail {name:<19} p50 {percentile(xs, 50):8.2f} ms  "
                        f"p99 {percentile(xs, 99):8.2f} ms  ({len(xs)} reads)")
                notes_extra["_tail"] = (f"{TAIL_EVENTS:,} events appended through the writable store to fresh accounts of "
                                        "partition 0 and left unsealed; probes of partition 0"
                                        + ("; postgres unchanged (no tail)" if pg is not None else ""))
            notes_extra[suffix] = f"data set: {ds.describe()}, stream index {ds.meta.get('stream_index', 'none')}"
        finally:
            if conn is not None:
                conn.close()
            if rw is not None:
                rw.close()
            shutil.rmtree(work, ignore_errors=True)
    record(ctx, stats, notes_extra, pg.version if pg is not None else "?")


NOTES = {
    "es_actors": "writable Store.open (partition actors on a local Ray); store.history(...) -> RecordedEvent with "
                 "decoded events",
    "es_actors_readonly": "Store.open(read_only=True), no Ray; store.history(...) -> RecordedEvent with decoded events",
    "postgres": "PostgreSQL {v}: SELECT position, version, event_type, payload::text WHERE stream_id = %s ORDER BY "
                "version (UNIQUE (stream_id, version) index), model_validate_json per row; one psycopg 3 connection",
}


def record(ctx: Context, stats: dict[tuple[str, str], list[float]], notes_extra: dict[str, str], pg_version: str) -> None:
    """p50/p99 rows per system and variant (10M: no suffix, ``_1m``, ``_tail``)."""
    for (system, suffix), xs in stats.items():
        if not xs:
            continue
        notes = (f"{NOTES[system].format(v=pg_version)}; one probe aggregate's 100 events, random probes "
                 f"(the same on every side), interleaved, {WARMUP_READS} warm-up probes excluded; "
                 f"{notes_extra.get(suffix, '')}; targets: read-only within 2x postgres, writable within 2x postgres "
                 "+ one Ray call, 10M/1M <= 1.3")
        for q in (50, 99):
            ctx.results.record("read_history_10m", system, f"p{q}_ms{suffix}", percentile(xs, q), unit="ms",
                               reads=len(xs), notes=notes)
