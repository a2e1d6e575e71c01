"""Aggregate lifecycle benches: cold activation, partition recovery, memory of hydrated aggregates.

- ``activate_10k``: one aggregate with 10,000 events (AccountOpened + 9,999 MoneyDeposited),
  not in memory, read through the client: es_actors ``handle.passivate()`` (untimed), then
  ``handle.state()`` timed, with no snapshot (``BankAccount``) and with one
  (``SnapBankAccount``, ``snapshot_every=1000``; metric suffix ``_snapshot``). Peers on the
  same events: the ``eventsourcing`` library on SQLite (``repository.get`` with no aggregate
  cache, with and without its snapshot store) and PostgreSQL read-and-fold (SELECT the
  stream's payloads ORDER BY version, decode and evolve with the same BankAccount decider).
  Activations repeat interleaved across systems (order rotating); p50/p99 over all of them.
- ``recover_partition``: a one-partition store with 1,000,000 events (10,000 accounts x 100)
  kept in a cache outside git; per repetition its partition actor is killed (SIGKILL on
  its pid), the time until it answers a ``state()`` again is the restart, then
  ``store.hydrate()`` brings every aggregate back. events_per_s = events in the partition /
  (restart + hydration seconds), with no snapshots and with a snapshot of every account
  (taken once with the live policy and cached; suffix ``_snapshot``).
- ``hydrated_1m``: a one-partition store with 1,000,000 accounts of one event each, opened
  with ``max_hydrated=1_000_000`` and fully hydrated; the partition actor's RSS is the metric.

Data sets are written once as sealed Parquet segments (the layout es_actors seals into)
under ``$ES_ACTORS_BENCH_CACHE`` (default ``~/.cache/es_actors_bench``), keyed by the row
schema and a version string; each run works on a hard-linked copy in benchmarks/.cache/tmp.

``python -m benchmarks.lifecycle memory`` prints where a hydrated aggregate's bytes go
(in-process, no Ray; tracemalloc).
"""

from __future__ import annotations

from es_actors.codecs.state import SnapshotFormat
import os
import random
import shutil
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from benchmarks.datasets import cached, clone
from benchmarks.common import Context, log, percentile, scratch_dir

BENCHES = ["activate_10k", "recover_partition", "hydrated_1m"]

# -- sizes (environment overrides are for development only) ------------------------------------


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


ACTIVATE_EVENTS = _env_int("BENCH_ACTIVATE_EVENTS", 10_000)
ACTIVATE_REPS = _env_int("BENCH_ACTIVATE_REPS", 40)  # activations per system and variant
RECOVER_ACCOUNTS = _env_int("BENCH_RECOVER_ACCOUNTS", 10_000)
RECOVER_EVENTS_PER = _env_int("BENCH_RECOVER_EVENTS_PER", 100)
HYDRATED_N = _env_int("BENCH_HYDRATED_N", 1_000_000)
RSS_TARGET_MB = 1536.0
SEG_ROWS = 50_000  # StoreConfig.seal_rows: segments the size the live write path seals
DATA_VERSION = "lifecycle-v1"  # bump when the generated data changes meaning
SEED = 20240611


def _amounts(n: int) -> list[int]:
    """Deposit amounts (cents), the same sequence for every system."""
    return [1 + (i * 7919) % 10_000 for i in range(n)]


def start_ray() -> None:
    import logging

    import ray

    if not ray.is_initialized():
        from es_actors.runtime.cluster import start_local_ray  # loopback only (ADR-012)

        start_local_ray(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)


# ==============================================================================================
# activate_10k
# ==============================================================================================

Variant = str  # "plain" | "snapshot"


class Activation:
    name = "?"
    variants: tuple[Variant, ...] = ("plain", "snapshot")

    def setup(self, amounts: list[int]) -> None: ...

    def activate(self, variant: Variant) -> float:
        """One cold activation; returns seconds (only the activation itself is timed)."""
        raise NotImplementedError

    def close(self) -> None: ...

    def notes(self, variant: Variant) -> str:
        return ""


def _check(system: str, version: int, balance: int, n: int, expected_balance: int) -> None:
    if version != n or balance != expected_balance:
        raise RuntimeError(f"{system}: activated at version {version} balance {balance}, expected {n} / {expected_balance}")


class EsActorsActivation(Activation):
    name = "es_actors"

    def __init__(self) -> None:
        self.store: Any = None
        self.dir: Path | None = None
        self.replayed: dict[Variant, int] = {}

    def setup(self, amounts: list[int]) -> None:
        from es_actors import Store, Submission
        from es_actors.examples.bank import BankAccount, Deposit, OpenAccount

        from benchmarks.lifecycle_domain import ACTIVATE_SNAPSHOT_EVERY, SnapBankAccount

        start_ray()
        self.n, self.balance = len(amounts) + 1, sum(amounts)
        self.dir = scratch_dir("es_actors_activate_")
        self.store = Store.open(self.dir / "store", [BankAccount, SnapBankAccount], partitions=1)
        self.handles = {}
        for variant, cls in (("plain", BankAccount), ("snapshot", SnapBankAccount)):
            aid = f"acct-{variant}"
            subs = [Submission(cls, aid, OpenAccount(owner=aid), expected_version=0)]
            subs += [Submission(cls, aid, Deposit(amount=a)) for a in amounts]
            # Calls of snapshot_every commands: the live policy's last snapshot lands on the
            # last version (a batch ends on each multiple of 1,000), as the peer's does.
            for i in range(0, len(subs), ACTIVATE_SNAPSHOT_EVERY):
                bad = [r for r in self.store.submit_many(subs[i : i + ACTIVATE_SNAPSHOT_EVERY]) if isinstance(r, Exception)]
                if bad:
                    raise RuntimeError(f"es_actors: writing {aid} failed: {len(bad)} errors, first {bad[0]!r}")
            self.handles[variant] = self.store.aggregate(cls, aid)
        self.store.flush_snapshots()
        self.store.seal()  # history in Parquet segments, as for any aggregate older than the tail
        for variant in self.variants:  # how many events one activation replays (after a snapshot)
            before = self.store.stats()[0]["events_replayed"]
            self.activate(variant)
            self.replayed[variant] = self.store.stats()[0]["events_replayed"] - before
        st = self.store.stats()[0]
        log(f"activate_10k: es_actors replays {self.replayed} events per activation; "
            f"{st['snapshots_written']} snapshots written, {st['sealed_segments']} segments, {st['unsealed_events']} unsealed")

    def activate(self, variant: Variant) -> float:
        h = self.handles[variant]
        h.passivate()
        t0 = time.perf_counter()
        st = h.state()
        dt = time.perf_counter() - t0
        _check(self.name, st.version, st.state.balance, self.n, self.balance)
        return dt

    def close(self) -> None:
        try:
            if self.store is not None:
                self.store.close()
        finally:
            self.store = None
            if self.dir is not None:
                shutil.rmtree(self.dir, ignore_errors=True)

    def notes(self, variant: Variant) -> str:
        what = (
            f"no snapshot policy: replays {self.replayed.get(variant)} events"
            if variant == "plain"
            else f"snapshot_every=1000, last snapshot at version {self.n}: replays {self.replayed.get(variant)} events"
        )
        return (f"handle.passivate() untimed, then handle.state() over Ray (1 partition actor, Ray local num_cpus=2); "
                f"events sealed in Parquet; {what}")


class EslActivation(Activation):
    """The ``eventsourcing`` library on SQLite: one app writes (snapshot every 1,000 events),
    two apps with no aggregate cache read: one without a snapshot store, one with."""

    name = "eventsourcing_sqlite"

    def __init__(self) -> None:
        self.apps: dict[Variant, Any] = {}
        self.dir: Path | None = None

    def setup(self, amounts: list[int]) -> None:
        from eventsourcing.sqlite import SQLiteApplicationRecorder  # noqa: F401  (fail early if missing)

        from benchmarks.esl_bank import EslBank, EslBankAccount

        class EslSnapshottingBank(EslBank):
            snapshotting_intervals = {EslBankAccount: 1_000}

        self.n, self.balance = len(amounts) + 1, sum(amounts)
        self.dir = scratch_dir("esl_sqlite_activate_")
        env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(self.dir / "events.sqlite")}
        writer = EslSnapshottingBank(env=env)
        acct = EslBankAccount("acct-1")
        for a in amounts:
            acct.deposit(a)
        writer.save(acct)  # 10,000 events in one transaction; snapshots at 1,000, 2,000, ... 10,000
        self.id = acct.id
        writer.close()
        # No AGGREGATE_CACHE_MAXSIZE: no cache, every get() reads and folds from SQLite.
        self.apps["plain"] = EslBank(env={**env, "IS_SNAPSHOTTING_ENABLED": "n"})
        self.apps["snapshot"] = EslBank(env={**env, "IS_SNAPSHOTTING_ENABLED": "y"})
        assert self.apps["plain"].repository.cache is None and self.apps["snapshot"].snapshots is not None

    def activate(self, variant: Variant) -> float:
        repo = self.apps[variant].repository
        t0 = time.perf_counter()
        acct = repo.get(self.id)
        dt = time.perf_counter() - t0
        _check(self.name, acct.version, acct.balance, self.n, self.balance)
        return dt

    def close(self) -> None:
        for app in self.apps.values():
            try:
                app.close()
            except Exception:
                pass
        self.apps.clear()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

    def notes(self, variant: Variant) -> str:
        base = "eventsourcing library, SQLite WAL, no aggregate cache: repository.get()"
        return base + (", snapshot store off" if variant == "plain" else ", snapshotting_intervals=1000 (snapshot at version 10,000)")


class PgActivation(Activation):
    """An events table; SELECT the stream ORDER BY version, decode each payload into its event
    model (the same registry decode as es_actors) and fold with BankAccount.evolve."""

    name = "postgres"
    variants = ("plain",)
    SQL = "SELECT event_type, payload::text FROM events WHERE stream_id = %s ORDER BY version"

    def __init__(self) -> None:
        self.pg: Any = None
        self.conn: Any = None

    def setup(self, amounts: list[int]) -> None:
        from es_actors import DomainRegistry
        from es_actors.examples.bank import AccountOpened, BankAccount, MoneyDeposited

        from benchmarks.pg import PgCluster, create_events_table

        self.n, self.balance = len(amounts) + 1, sum(amounts)
        self.registry = DomainRegistry([BankAccount])
        # Payloads are stored at the classes' current schema_version (no column for it here).
        self.schema_version = {t: c.schema_version for t, c in self.registry.events.items()}
        self.pg = PgCluster()
        self.pg.start()
        create_events_table(self.pg)
        with self.pg.connect() as conn:
            events = [AccountOpened(owner="acct-1")] + [MoneyDeposited(amount=a) for a in amounts]
            with conn.cursor().copy("COPY events (stream_id, version, event_type, payload) FROM STDIN") as cp:
                for v, e in enumerate(events, start=1):
                    cp.write_row(("acct-1", v, e.event_type, e.model_dump_json()))
            conn.commit()
            conn.execute("ANALYZE events")
            conn.commit()
        self.conn = self.pg.connect(autocommit=True)

    def activate(self, variant: Variant) -> float:
        from es_actors.examples.bank import BankAccount

        decode, evolve, sv = self.registry.decode, BankAccount.evolve, self.schema_version
        t0 = time.perf_counter()
        rows = self.conn.execute(self.SQL, ("acct-1",)).fetchall()
        state = BankAccount.initial_state()
        for etype, payload in rows:
            for e in decode(etype, sv[etype], payload):
                state = evolve(state, e)
        dt = time.perf_counter() - t0
        _check(self.name, len(rows), state.balance, self.n, self.balance)
        return dt

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                pass
            self.conn = None
        if self.pg is not None:
            self.pg.stop()
            self.pg = None

    def notes(self, variant: Variant) -> str:
        return "one connection (psycopg 3), SELECT payloads ORDER BY version + client-side decode and evolve"


def run_activate(ctx: Context) -> None:
    s = ctx.settings
    amounts = _amounts(ACTIVATE_EVENTS - 1)
    systems: list[Activation] = []
    try:
        for factory in (EsActorsActivation, EslActivation, PgActivation):
            sysobj = factory()
            if not s.wants(sysobj.name):
                continue
            log(f"activate_10k: setting up {sysobj.name} ({ACTIVATE_EVENTS:,} events per aggregate)")
            t = time.monotonic()
            systems.append(sysobj)
            sysobj.setup(amounts)
            log(f"activate_10k: {sysobj.name} ready in {time.monotonic() - t:.1f} s")
        pairs = [(x, v) for x in systems for v in x.variants]
        for x, v in pairs:  # warm-up: one untimed activation each
            x.activate(v)
        samples: dict[tuple[str, Variant], list[float]] = {(x.name, v): [] for x, v in pairs}
        for rep in range(ACTIVATE_REPS):
            k = rep % len(pairs)
            for x, v in pairs[k:] + pairs[:k]:
                samples[(x.name, v)].append(x.activate(v) * 1000.0)
        for x, v in pairs:
            ms = samples[(x.name, v)]
            suffix = "_snapshot" if v == "snapshot" else ""
            extra = {"events": ACTIVATE_EVENTS, "runs": len(ms), "notes": x.notes(v)}
            p50, p99 = percentile(ms, 50), percentile(ms, 99)
            ctx.results.record("activate_10k", x.name, "p50_ms" + suffix, p50, unit="ms", **extra)
            ctx.results.record("activate_10k", x.name, "p99_ms" + suffix, p99, unit="ms", **extra)
            log(f"  activate_10k {x.name:<21} {v:<9} p50 {p50:8.2f} ms  p99 {p99:8.2f} ms  "
                f"(min {min(ms):.2f}, max {max(ms):.2f}, n={len(ms)})")
    finally:
        for x in reversed(systems):
            try:
                x.close()
            except Exception as exc:
                log(f"activate_10k: closing {x.name} failed: {exc!r}")


# ==============================================================================================
# Cached data sets: sealed segments written directly
# ==============================================================================================

# (aggregate_id, version, command, the event it decides): payloads are the models' own JSON
# at the current schema_version of es_actors.examples.bank, as the live write path stores them.
GenEvent = tuple[str, int, Any, Any]


def _write_store(root: Path, events: Iterator[GenEvent]) -> int:
    """A one-partition store whose log is ``events`` in position order, as sealed segments."""
    from es_actors.write.partition import command_digest_of
    from es_actors.codecs.rows import rows_to_table
    from es_actors.storage.layout import StoreLayout
    from es_actors.storage.local.segments import segment_name, write_parquet_durably

    layout = StoreLayout(root)
    layout.create_or_check(1, 1)
    log_dir = layout.log_dir(0)
    gen = log_dir / "gen-000001"
    gen.mkdir(parents=True)
    os.symlink(gen.name, log_dir / "current")
    rng = random.Random(SEED)
    t0_us = 1_767_225_600_000_000  # 2026-01-01 UTC
    rows: list[tuple[Any, ...]] = []
    pos = 0

    def flush() -> None:
        write_parquet_durably(rows_to_table(rows), gen / segment_name(rows[0][1], rows[-1][1]))
        rows.clear()

    for aid, version, command, event in events:
        pos += 1
        cid = rng.randbytes(16).hex()
        digest = command_digest_of(command.command_type, command.model_dump_json())
        rows.append((
            0, pos, "BankAccount", aid, version, event.event_type, event.schema_version, rng.randbytes(16).hex(), cid,
            digest, cid, cid, None, t0_us + pos * 1000, event.model_dump_json(), "{}",
        ))
        if len(rows) == SEG_ROWS:
            flush()
    if rows:
        flush()
    return pos


def _lifecycle_cached(name: str, build: Callable[[Path], None]) -> Path:
    return cached(name, build, DATA_VERSION)


def _recover_events(accounts: list[str], per: int) -> Iterator[GenEvent]:
    """Every account opened, then ``per - 1`` rounds of one deposit each, in a shuffled order per round."""
    from es_actors.examples.bank import AccountOpened, Deposit, MoneyDeposited, OpenAccount

    for a in accounts:
        yield a, 1, OpenAccount(owner=a), AccountOpened(owner=a)
    rng = random.Random(SEED + 1)
    order = list(accounts)
    for r in range(2, per + 1):
        rng.shuffle(order)
        for a in order:
            amount = rng.randint(1, 10_000)
            yield a, r, Deposit(amount=amount), MoneyDeposited(amount=amount)


def _recover_accounts() -> list[str]:
    return [f"acct-{i:05d}" for i in range(RECOVER_ACCOUNTS)]


def recover_dataset() -> tuple[Path, Path]:
    """(store without snapshots, a snapshots/ directory for it), both cached."""
    name = f"recover-{RECOVER_ACCOUNTS}x{RECOVER_EVENTS_PER}"
    store = _lifecycle_cached(name, lambda d: _write_store(d / "store", _recover_events(_recover_accounts(), RECOVER_EVENTS_PER)))
    from es_actors import DomainRegistry

    from benchmarks.lifecycle_domain import BankAccountLivePolicy

    fp = SnapshotFormat(DomainRegistry([BankAccountLivePolicy])).fingerprint("BankAccount")
    snaps = store / f"snapshots-{fp}"  # keyed by the code's snapshot fingerprint: never stale
    if not snaps.exists():
        log("recover_partition: taking a snapshot of every account with the live policy (once)")
        start_ray()
        from es_actors import Store

        work = scratch_dir("es_actors_snapbuild_")
        try:
            clone(store / "store", work / "store")
            st = Store.open(work / "store", [BankAccountLivePolicy], partitions=1)
            try:
                n = st.hydrate()
                written = st.flush_snapshots()
                log(f"recover_partition: hydrated {n:,}, wrote {written:,} snapshots")
                if written != RECOVER_ACCOUNTS:
                    raise RuntimeError(f"expected a snapshot of each of {RECOVER_ACCOUNTS:,} accounts, got {written:,} "
                                       f"(events per account must be >= snapshot_every={BankAccountLivePolicy.snapshot_every})")
            finally:
                st.close()
            tmp = store / f".tmp-snapshots-{os.getpid()}"
            shutil.copytree(work / "store" / "snapshots", tmp)
            os.rename(tmp, snaps)
            for old in store.glob("snapshots-*"):  # taken under other code: never used again
                if old != snaps:
                    shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return store / "store", snaps


def hydrated_dataset() -> Path:
    def events() -> Iterator[GenEvent]:
        from es_actors.examples.bank import AccountOpened, OpenAccount

        for i in range(HYDRATED_N):
            a = f"acct-{i:07d}"
            yield a, 1, OpenAccount(owner=a), AccountOpened(owner=a)

    return _lifecycle_cached(f"hydrated-{HYDRATED_N}", lambda d: _write_store(d / "store", events())) / "store"


# ==============================================================================================
# recover_partition, hydrated_1m
# ==============================================================================================


def _rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def kill_and_wait(store: Any, handle: Any, timeout_s: float = 180.0) -> tuple[float, int, int]:
    """SIGKILL the (only) partition actor; seconds until it answers ``state()`` again, old pid, new pid."""
    old = store.stats()[0]["pid"]
    t0 = time.perf_counter()
    os.kill(old, signal.SIGKILL)
    while True:
        try:
            handle.state()
            break
        except Exception as exc:  # the dead actor, then Ray restarting it
            if time.perf_counter() - t0 > timeout_s:
                raise RuntimeError(f"partition actor did not come back in {timeout_s:.0f} s: {exc!r}") from None
            time.sleep(0.002)
    dt = time.perf_counter() - t0
    new = store.stats()[0]["pid"]
    if new == old:
        raise RuntimeError("the partition actor answered from its old process: the kill did not take")
    return dt, old, new


def run_recover(ctx: Context) -> None:
    from es_actors import Store
    from es_actors.examples.bank import BankAccount

    from benchmarks.lifecycle_domain import BankAccountLivePolicy

    s = ctx.settings
    src, snaps = recover_dataset()
    n_events = RECOVER_ACCOUNTS * RECOVER_EVENTS_PER
    start_ray()
    work = scratch_dir("es_actors_recover_")
    stores: dict[Variant, Any] = {}
    s3: Any = None
    try:
        for variant, cls in (("plain", BankAccount), ("snapshot", BankAccountLivePolicy)):
            clone(src, work / variant)
            if variant == "snapshot":
                clone(snaps, work / variant / "snapshots")
            stores[variant] = Store.open(work / variant, [cls], partitions=1)
        if s.wants("es_actors_s3"):
            from es_actors.testing.local_s3 import start_local_s3_process as start_local_s3  # its own process: no GIL shared with the clients

            s3 = start_local_s3()
            stores["s3"] = Store.open(_load_into_s3(src, s3), [BankAccount], partitions=1)
        first = _recover_accounts()[0]
        runs: dict[Variant, list[dict[str, float]]] = {v: [] for v in stores}
        for rep in range(s.repeats):
            order = list(stores) if rep % 2 == 0 else list(reversed(stores))
            for variant in order:
                store = stores[variant]
                restart_s, _old, _new = kill_and_wait(store, store.aggregate("BankAccount", first))
                t0 = time.perf_counter()
                n = store.hydrate()
                hydrate_s = time.perf_counter() - t0
                st = store.stats()[0]
                want_replayed = 0 if variant == "snapshot" else n_events
                if n != RECOVER_ACCOUNTS or st["hydrated"] != RECOVER_ACCOUNTS or st["events_replayed"] != want_replayed:
                    raise RuntimeError(
                        f"recover_partition {variant}: hydrated {n} ({st['hydrated']}), replayed {st['events_replayed']}, "
                        f"expected {RECOVER_ACCOUNTS} / {want_replayed}; snapshots used {st['snapshot_used']}, ignored "
                        f"{st['snapshot_ignored']} (ignored: the domain code changed since they were taken, e.g. during this run?)")
                r = {"restart_s": restart_s, "hydrate_s": hydrate_s, "total_s": restart_s + hydrate_s,
                     "index_s": st["recovery_s"], "snapshot_used": st["snapshot_used"]}
                runs[variant].append(r)
                log(f"    recover_partition {variant:<9} restart {restart_s:6.2f} s (index {st['recovery_s']:.2f} s)  "
                    f"hydrate {hydrate_s:6.2f} s  -> {n_events / r['total_s']:>10,.0f} events/s")
        for variant, rs in runs.items():
            suffix = "_snapshot" if variant == "snapshot" else ""
            system = "es_actors_s3" if variant == "s3" else "es_actors"
            med = {k: statistics.median(r[k] for r in rs) for k in ("restart_s", "hydrate_s", "total_s", "index_s")}
            eps = statistics.median(n_events / r["total_s"] for r in rs)
            notes = (
                f"1 partition, {RECOVER_ACCOUNTS:,} accounts x {RECOVER_EVENTS_PER} events; SIGKILL the partition actor, "
                "restart = until a state() answers (Ray restarts the process, the actor reads its index), "
                "then store.hydrate() of every account; events_per_s = events in the partition / (restart + hydrate)"
                + ("; every account has a snapshot at its last version (taken by the live policy), none replayed"
                   if variant == "snapshot" else "; no snapshots: every event replayed")
            )
            extra = {"events": n_events, "runs": len(rs), "restart_s": round(med["restart_s"], 3),
                     "hydrate_s": round(med["hydrate_s"], 3), "index_s": round(med["index_s"], 3), "notes": notes}
            if variant == "s3":
                extra["notes"] = notes + "; the same events on a local S3 server (moto, 127.0.0.1): recovery reads its manifest and segments with GETs"
            ctx.results.record("recover_partition", system, "events_per_s" + suffix, eps, unit="events/s", **extra)
            ctx.results.record("recover_partition", system, "seconds" + suffix, med["total_s"], unit="s", **extra)
            per_run = ", ".join(f"{n_events / r['total_s']:,.0f}" for r in rs)
            log(f"  recover_partition {variant:<9} {eps:>10,.0f} events/s  restart {med['restart_s']:.2f} s  "
                f"hydrate {med['hydrate_s']:.2f} s  (runs: {per_run})")
    finally:
        for store in stores.values():
            try:
                store.close()
            except Exception as exc:
                log(f"recover_partition: closing a store failed: {exc!r}")
        shutil.rmtree(work, ignore_errors=True)
        if s3 is not None:
            s3.stop()


def _load_into_s3(src: Path, s3: Any) -> str:
    """The recover data set's events written into an S3 store on the local server (untimed): the same
    rows, appended in commits of 20,000 rows through the whole-object log, sealed every 200,000.
    Returns its URI."""
    from benchmarks.s3_data import load_into_s3

    return load_into_s3(src, s3, "recover", commit_rows=20_000, seal_rows=200_000).uri


def run_hydrated(ctx: Context) -> None:
    from es_actors import Store
    from es_actors.examples.bank import BankAccount

    s = ctx.settings
    src = hydrated_dataset()
    start_ray()
    work = scratch_dir("es_actors_hydrated_")
    store = None
    try:
        clone(src, work / "store")
        t0 = time.perf_counter()
        store = Store.open(work / "store", [BankAccount], partitions=1, max_hydrated=HYDRATED_N)
        open_s = time.perf_counter() - t0
        handle = store.aggregate(BankAccount, "acct-0000000")
        runs = []
        for rep in range(s.repeats):
            if rep > 0:  # a fresh process for each repetition
                open_s, _old, _new = kill_and_wait(store, handle)
                store.passivate()  # the state() that proved it alive hydrated one
            st = store.stats()[0]
            pid, rss_index = st["pid"], _rss_mb(st["pid"])
            t0 = time.perf_counter()
            n = store.hydrate()
            hydrate_s = time.perf_counter() - t0
            rss = _rss_mb(pid)
            st = store.stats()[0]
            if n != HYDRATED_N or st["hydrated"] != HYDRATED_N or st["pid"] != pid:
                raise RuntimeError(f"hydrated_1m: hydrated {n} ({st['hydrated']}) in pid {st['pid']}, expected {HYDRATED_N} in {pid}")
            runs.append({"rss": rss, "rss_index": rss_index, "hydrate_s": hydrate_s, "start_s": open_s})
            log(f"    hydrated_1m  start {open_s:5.2f} s  RSS index only {rss_index:7.1f} MB  hydrate {hydrate_s:5.2f} s  "
                f"RSS {rss:7.1f} MB  ({(rss - rss_index) * 2**20 / HYDRATED_N:.0f} B/aggregate for the state)")
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        notes = (
            f"1 partition, {HYDRATED_N:,} accounts of 1 event, max_hydrated={HYDRATED_N:,}; RSS of the partition actor "
            "(psutil) after store.hydrate() in a freshly started actor; rss_index_mb = before hydrating "
            f"(index of every aggregate only); target <= {RSS_TARGET_MB:.0f} MB"
        )
        extra = {"events": HYDRATED_N, "runs": len(runs), "rss_index_mb": round(med["rss_index"], 1),
                 "bytes_per_aggregate": round(med["rss"] * 2**20 / HYDRATED_N), "notes": notes}
        ctx.results.record("hydrated_1m", "es_actors", "rss_mb", med["rss"], unit="MB", **extra)
        ctx.results.record("hydrated_1m", "es_actors", "seconds", med["hydrate_s"], unit="s",
                           start_s=round(med["start_s"], 3), **{**extra, "notes": "store.hydrate() of 1,000,000 aggregates; "
                                                                      "start_s = actor start (index) before it"})
        log(f"  hydrated_1m  RSS {med['rss']:.1f} MB (index only {med['rss_index']:.1f} MB), hydrate {med['hydrate_s']:.2f} s")
    finally:
        if store is not None:
            try:
                store.close()
            except Exception as exc:
                log(f"hydrated_1m: closing the store failed: {exc!r}")
        shutil.rmtree(work, ignore_errors=True)


# ==============================================================================================


def run(ctx: Context, selected: list[str]) -> None:
    if "activate_10k" in selected:
        run_activate(ctx)
    if "es_actors" not in (ctx.settings.systems or {"es_actors"}):
        return
    if "recover_partition" in selected:
        run_recover(ctx)
    if "hydrated_1m" in selected:
        run_hydrated(ctx)


# -- diagnostics: where a hydrated aggregate's memory goes ---------------------------------------


def memory_breakdown(n: int | None = None) -> None:
    """Build the hydrated_1m partition in this process (no Ray) and account for its memory."""
    import gc
    import tracemalloc

    import psutil

    from es_actors import DomainRegistry, StoreConfig
    from es_actors.write.partition import Partition
    from es_actors.storage.layout import StoreLayout
    from es_actors.examples.bank import BankAccount

    src = hydrated_dataset()
    work = scratch_dir("es_actors_memory_")
    proc = psutil.Process()
    mb = lambda: proc.memory_info().rss / 2**20  # noqa: E731
    try:
        clone(src, work / "store")
        config = StoreConfig(partitions=1, max_hydrated=HYDRATED_N)
        gc.collect()
        base = mb()
        tracemalloc.start(1)
        p = Partition(StoreLayout(work / "store"), 0, DomainRegistry([BankAccount]), config)
        gc.collect()
        idx_traced, _ = tracemalloc.get_traced_memory()
        idx_rss = mb()
        snap_index = tracemalloc.take_snapshot()
        p.hydrate_all()
        gc.collect()
        all_traced, peak = tracemalloc.get_traced_memory()
        all_rss = mb()
        snap_all = tracemalloc.take_snapshot()
        count = len(p.aggregates)
        print(f"aggregates: {count:,}; RSS base {base:.0f} MB, +index {idx_rss - base:.0f} MB, +states {all_rss - idx_rss:.0f} MB "
              f"= {all_rss:.0f} MB (with tracemalloc's own overhead)")
        print(f"traced (Python allocations): index {idx_traced / 2**20:.0f} MB = {idx_traced / count:.0f} B/aggregate; "
              f"after hydration {all_traced / 2**20:.0f} MB = {all_traced / count:.0f} B/aggregate; "
              f"peak during hydrate_all {peak / 2**20:.0f} MB")
        key, entry = next(iter(p.aggregates.items()))
        parts = {
            "AggregateEntry (5 slots)": sys.getsizeof(entry),
            "positions array('q') (1 event)": sys.getsizeof(entry.positions),
            "key tuple": sys.getsizeof(key),
            "key[0] aggregate_type str": sys.getsizeof(key[0]),
            "key[1] aggregate_id str": sys.getsizeof(key[1]),
            "state Account (slots dataclass)": sys.getsizeof(entry.state),
            "state.owner str": sys.getsizeof(entry.state.owner),
            "Partition.aggregates dict, per entry": sys.getsizeof(p.aggregates) / count,
            "Partition.hydrated OrderedDict, per entry": sys.getsizeof(p.hydrated) / count,
        }
        types = {id(k[0]) for k in list(p.aggregates)[:1000]}
        print(f"aggregate_type strings shared? {len(types)} distinct objects among the first 1000 keys")
        print(f"owner str is aggregate_id str? {entry.state.owner is key[1]}")
        for k, v in parts.items():
            print(f"  {k:<45} {v:8.1f} B")
        print(f"  {'sum':<45} {sum(parts.values()):8.1f} B")
        print("top allocation sites after hydration (growth over the index):")
        for stat in snap_all.compare_to(snap_index, "lineno")[:12]:
            print(f"  {stat.size_diff / 2**20:8.1f} MB  {stat.count_diff:>10,} blocks  {stat.traceback}")
        print("top allocation sites of the index:")
        for stat in snap_index.statistics("lineno")[:8]:
            print(f"  {stat.size / 2**20:8.1f} MB  {stat.count:>10,} blocks  {stat.traceback}")
        p.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["memory"]:
        memory_breakdown()
    else:
        print("usage: python -m benchmarks.lifecycle memory   (the benches run through python -m benchmarks.run)")
