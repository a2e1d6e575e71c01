"""Write-path benches: closed-loop writers depositing into 10,000 bank accounts.

- ``append_single_{1,16,64}w``: N writer threads, each owning a disjoint slice of the accounts,
  each sending one command (one event) and waiting for its acknowledgement before the next.
  Within its slice a writer picks Zipf-skewed (s = 1.1, seeded) and sends the expected
  version (it tracks its own accounts' versions).
- ``append_bulk_100``: ``BULK_WRITERS`` writers, each sending 100 commands per call
  (es_actors: ``Store.submit_many``; postgres: 100 events in one transaction).

Accounts are opened first, in bulk and untimed. Every system is set up once; then for each
repetition every configuration runs on every system back to back (system order rotating), so
peers are measured side by side; the median of the repetitions is reported.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

from benchmarks.common import Context, LoadRun, closed_loop, log, record_load, scratch_dir
from benchmarks.workload import N_ACCOUNTS, ZipfPicker, all_accounts, writer_slices

SINGLE = {"append_single_1w": 1, "append_single_16w": 16, "append_single_64w": 64}
BULK = {"append_bulk_100": 100}
BULK_WRITERS = 4
BENCHES = [*SINGLE, *BULK]

Op = Callable[[], int]


# -- systems ----------------------------------------------------------------------------------


class System:
    name = "?"
    benches: set[str] = set(BENCHES)

    def setup(self, accounts: list[str]) -> None: ...

    def single_op(self, picker: ZipfPicker) -> Op: ...

    def bulk_op(self, picker: ZipfPicker, batch: int) -> Op: ...

    def close(self) -> None: ...

    def notes(self, bench: str) -> str | None:
        return None


def start_ray() -> None:
    import ray

    if not ray.is_initialized():
        import logging


        from es_actors.runtime.cluster import start_local_ray  # loopback only (ADR-012)

        start_local_ray(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)


class EsActorsSystem(System):
    name = "es_actors"

    def __init__(self, partitions: int = 4) -> None:
        self.partitions = partitions
        self.store: Any = None
        self.dir: Path | None = None

    def setup(self, accounts: list[str]) -> None:
        from es_actors import Submission
        from es_actors.examples.bank import BankAccount, OpenAccount

        start_ray()
        self.store = self._open_store()
        results = self.store.submit_many([Submission(BankAccount, a, OpenAccount(owner=a), expected_version=0) for a in accounts])
        bad = [r for r in results if isinstance(r, Exception)]
        if bad:
            raise RuntimeError(f"opening accounts failed: {len(bad)} errors, first {bad[0]!r}")
        self.versions = {r.aggregate_id: r.version for r in results}
        self.handles = {a: self.store.aggregate(BankAccount, a) for a in accounts}

    def _open_store(self) -> Any:
        from es_actors import Store
        from es_actors.examples.bank import BankAccount

        self.dir = scratch_dir("es_actors_append_")
        return Store.open(self.dir / "store", [BankAccount], partitions=self.partitions)

    def single_op(self, picker: ZipfPicker) -> Op:
        from es_actors.examples.bank import Deposit

        versions, handles, nxt = self.versions, self.handles, picker.next

        def op() -> int:
            aid, amount = nxt()
            r = handles[aid].submit(Deposit(amount=amount), expected_version=versions[aid])
            versions[aid] = r.version
            return 1

        return op

    def bulk_op(self, picker: ZipfPicker, batch: int) -> Op:
        from es_actors import Submission
        from es_actors.examples.bank import BankAccount, Deposit

        versions, store, nxt = self.versions, self.store, picker.next

        def op() -> int:
            subs, local = [], {}
            for _ in range(batch):
                aid, amount = nxt()
                v = local.get(aid, versions[aid])
                subs.append(Submission(BankAccount, aid, Deposit(amount=amount), expected_version=v))
                local[aid] = v + 1
            results = store.submit_many(subs)
            errors = [r for r in results if isinstance(r, Exception)]
            for r in results:
                if not isinstance(r, Exception) and r.version > versions[r.aggregate_id]:
                    versions[r.aggregate_id] = r.version
            if errors:
                raise RuntimeError(f"{len(errors)} of {batch} commands failed; first: {errors[0]!r}")
            return batch

        return op

    def stats(self) -> list[dict[str, Any]]:
        return self.store.stats() if self.store is not None else []

    def close(self) -> None:
        try:
            if self.store is not None:
                self.store.close()
        finally:
            self.store = None
            if self.dir is not None:
                shutil.rmtree(self.dir, ignore_errors=True)

    def notes(self, bench: str) -> str | None:
        return f"{self.partitions} partitions, Ray local num_cpus=2"


class EsActorsS3System(EsActorsSystem):
    """The same store on S3: the whole-object log on a local S3-compatible server (moto's, 127.0.0.1),
    every group commit one conditional PUT plus one HEAD (ADR-019)."""

    name = "es_actors_s3"
    benches = {"append_single_64w", "append_bulk_100"}

    def _open_store(self) -> Any:
        from es_actors import Store
        from es_actors.examples.bank import BankAccount
        from es_actors.testing.local_s3 import start_local_s3_process as start_local_s3  # its own process: no GIL shared with the clients

        self.s3 = start_local_s3()
        uri = f"s3://{self.s3.bucket('es-actors-bench')}/append-{os.getpid()}?endpoint_url={self.s3.endpoint_url}"
        return Store.open(uri, [BankAccount], partitions=self.partitions)

    def close(self) -> None:
        try:
            super().close()
        finally:
            if getattr(self, "s3", None) is not None:
                self.s3.stop()

    def notes(self, bench: str) -> str | None:
        return f"{self.partitions} partitions on a local S3 server (moto, 127.0.0.1), Ray local num_cpus=2"


class PostgresSystem(System):
    """One row per event; INSERT at expected version + 1 (a unique violation = a conflict)."""

    name = "postgres"
    SINGLE_SQL = "INSERT INTO events (stream_id, version, event_type, payload) VALUES (%s, %s, 'MoneyDeposited', %s::jsonb)"
    BULK_SQL = (
        "INSERT INTO events (stream_id, version, event_type, payload) "
        "SELECT s, v, 'MoneyDeposited', p::jsonb FROM unnest(%s::text[], %s::bigint[], %s::text[]) AS t(s, v, p)"
    )

    def __init__(self) -> None:
        self.pg: Any = None
        self.conns: list[Any] = []

    def setup(self, accounts: list[str]) -> None:
        from benchmarks.pg import PgCluster, create_events_table

        self.pg = PgCluster()
        self.pg.start()
        create_events_table(self.pg)
        with self.pg.connect() as conn:
            with conn.cursor().copy("COPY events (stream_id, version, event_type, payload) FROM STDIN") as cp:
                for a in accounts:
                    cp.write_row((a, 1, "AccountOpened", f'{{"owner": "{a}"}}'))
            conn.commit()
            conn.execute("ANALYZE events")
            conn.commit()
        self.versions = {a: 1 for a in accounts}

    def _connect(self) -> Any:
        conn = self.pg.connect(autocommit=True)  # each statement is its own transaction
        self.conns.append(conn)
        return conn

    def single_op(self, picker: ZipfPicker) -> Op:
        conn, versions, nxt, sql = self._connect(), self.versions, picker.next, self.SINGLE_SQL

        def op() -> int:
            aid, amount = nxt()
            v = versions[aid] + 1
            conn.execute(sql, (aid, v, f'{{"amount": {amount}}}'))
            versions[aid] = v
            return 1

        return op

    def bulk_op(self, picker: ZipfPicker, batch: int) -> Op:
        conn, versions, nxt, sql = self._connect(), self.versions, picker.next, self.BULK_SQL

        def op() -> int:
            ids, vs, payloads, local = [], [], [], {}
            for _ in range(batch):
                aid, amount = nxt()
                v = local.get(aid, versions[aid]) + 1
                local[aid] = v
                ids.append(aid)
                vs.append(v)
                payloads.append(f'{{"amount": {amount}}}')
            conn.execute(sql, (ids, vs, payloads))  # one statement = one transaction
            versions.update(local)
            return batch

        return op

    def release_connections(self) -> None:
        for c in self.conns:
            try:
                c.close()
            except Exception:
                pass
        self.conns.clear()

    def close(self) -> None:
        self.release_connections()
        if self.pg is not None:
            self.pg.stop()
            self.pg = None

    def notes(self, bench: str) -> str | None:
        return "synchronous_commit=on, a connection per writer, psycopg 3"


class EventsourcingSqliteSystem(System):
    name = "eventsourcing_sqlite"
    benches = {"append_single_1w"}

    def __init__(self) -> None:
        self.app: Any = None
        self.dir: Path | None = None

    def setup(self, accounts: list[str]) -> None:
        from benchmarks.esl_bank import EslBankAccount, open_sqlite_bank

        self.dir = scratch_dir("esl_sqlite_append_")
        self.app = open_sqlite_bank(self.dir / "events.sqlite")
        for i in range(0, len(accounts), 1000):
            self.app.open_accounts(accounts[i : i + 1000])
        self.ids = {a: EslBankAccount.create_id(a) for a in accounts}
        self.versions = {a: 1 for a in accounts}

    def single_op(self, picker: ZipfPicker) -> Op:
        app, ids, versions, nxt = self.app, self.ids, self.versions, picker.next

        def op() -> int:
            aid, amount = nxt()
            versions[aid] = app.deposit(ids[aid], amount, versions[aid])
            return 1

        return op

    def close(self) -> None:
        if self.app is not None:
            try:
                self.app.close()
            except Exception:
                pass
            self.app = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

    def notes(self, bench: str) -> str | None:
        return "eventsourcing library, SQLite WAL, aggregate cache on"


ALL_SYSTEMS: list[Callable[[], System]] = [EsActorsSystem, EsActorsS3System, PostgresSystem, EventsourcingSqliteSystem]


# -- the bench --------------------------------------------------------------------------------


def run(ctx: Context, selected: list[str]) -> None:
    s = ctx.settings
    accounts = all_accounts(N_ACCOUNTS)
    systems: list[System] = []
    try:
        for factory in ALL_SYSTEMS:
            sysobj = factory()
            if not s.wants(sysobj.name) or not (sysobj.benches & set(selected)):
                continue
            log(f"append: setting up {sysobj.name} ({len(accounts):,} accounts opened in bulk)")
            systems.append(sysobj)
            sysobj.setup(accounts)
        runs: dict[tuple[str, str], list[LoadRun]] = {}
        for rep in range(s.repeats):
            log(f"append: repetition {rep + 1}/{s.repeats} (load average {os.getloadavg()[0]:.1f})")
            for bench in selected:
                present = [x for x in systems if bench in x.benches]
                k = rep % len(present) if present else 0
                for sysobj in present[k:] + present[:k]:
                    r = _run_one(ctx, sysobj, bench, rep)
                    runs.setdefault((bench, sysobj.name), []).append(r)
                    log(
                        f"    {bench:<18} {sysobj.name:<21} {r.events_per_s:>10,.0f} ev/s"
                        f"  p50 {r.p50_ms:.2f} ms  p99 {r.p99_ms:.2f} ms"
                        + (f"  errors {r.errors}" if r.errors else "")
                    )
        for bench in selected:
            for sysobj in systems:
                if (bench, sysobj.name) in runs:
                    record_load(
                        ctx, bench, sysobj.name, runs[(bench, sysobj.name)],
                        batch=BULK.get(bench, 1), notes=sysobj.notes(bench),
                    )
        es = next((x for x in systems if isinstance(x, EsActorsSystem)), None)
        if es is not None and os.environ.get("BENCH_VERBOSE"):
            for st in es.stats():
                log(f"  es_actors partition stats: {st}")
    finally:
        for sysobj in reversed(systems):
            try:
                sysobj.close()
            except Exception as exc:
                log(f"append: closing {sysobj.name} failed: {exc!r}")


def _run_one(ctx: Context, sysobj: System, bench: str, rep: int) -> LoadRun:
    s = ctx.settings
    if bench in SINGLE:
        writers, batch = SINGLE[bench], 1
    else:
        writers, batch = BULK_WRITERS, BULK[bench]
    slices = writer_slices(all_accounts(N_ACCOUNTS), writers)
    base_seed = s.seed + 1_000_003 * rep + 10_007 * writers + batch

    def make_op(i: int) -> Op:
        picker = ZipfPicker(slices[i], base_seed + i)
        return sysobj.single_op(picker) if batch == 1 else sysobj.bulk_op(picker, batch)

    try:
        return closed_loop(writers, make_op, s.duration_s, s.warmup_s)
    finally:
        if isinstance(sysobj, PostgresSystem):
            sysobj.release_connections()
