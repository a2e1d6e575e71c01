"""The read side against a real local Ray and real DuckDB files: projections, queries, subscriptions.

What must hold: a read model equals a from-scratch fold of the log (row for row, all
columns), whatever happened in between (projector killed mid-batch, pauses, failing
handlers, version bumps); queries never write and never read outside the store; a
subscription delivers each event once, in order, and resumes exactly where its checkpoint
says.

The replay the read models are compared with is computed here, independently of the
projector: rows read with ``storage.reader`` (not the follower), decoded and upcast with
``RecordedEvent.from_row`` and folded in Python (plus, for current-version logs, a GROUP BY
over the ``events`` relation).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from es_actors import CommandResult, EsActorsError, Store, Submission
from es_actors.cli import main as cli
from es_actors.runtime.naming import NAMESPACE
from es_actors.errors import ProjectionHalted, ProjectionTimeout, QueryFailed, QueryRefused
from es_actors.codecs.views import RecordedEvent
from es_actors.runtime.naming import actor_name, projector_name
from es_actors.read.subscription import Subscription
from es_actors.codecs.rows import table_to_rows
from es_actors.storage.backends import open_backend
from es_actors.examples.bank import (
    AccountOpened,
    BankAccount,
    Deposit,
    MoneyDeposited,
    MoneyWithdrawn,
    OpenAccount,
    Withdraw,
)
from es_actors.examples.bank_projections import Balances, BalancesPy
from tests.projection_domains import (
    BalancesPyV2,
    BalancesV2,
    LegacyBankAccount,
    LegacyDeposit,
    LegacyOpen,
    SameTableAsBalances,
    SmallBatchBalances,
    SmallBatchBalancesPy,
    UnluckyPy,
    UnluckySql,
    flagged_projection,
)

TABLES = {"balances": "balances", "balances_py": "balances_py"}  # projection -> its main view
COLS = "account, owner, balance, events, version"


# -- helpers ------------------------------------------------------------------------------


def read_partition_rows(layout: Any, p: int) -> list[tuple[Any, ...]]:
    """Every durable row of a partition, read through the store's backend (local disk or S3)."""
    return table_to_rows(open_backend(layout.uri).reader(p).read_all())


def log_events(store: Store) -> list[RecordedEvent]:
    """Every durable event (upcast), read without the follower, in (partition, position) order."""
    out: list[RecordedEvent] = []
    for p in range(store.descriptor.partitions):
        for row in read_partition_rows(store.layout, p):
            out.extend(RecordedEvent.from_row(row, store.registry))
    return out


def replay(store: Store, skip: set[tuple[int, int]] = frozenset()) -> list[tuple[Any, ...]]:
    """The balances read model folded from scratch: sorted (account, owner, balance, events, version)."""
    acc: dict[str, list[Any]] = {}
    for e in log_events(store):
        if e.aggregate_type != "BankAccount" or (e.partition, e.position) in skip:
            continue
        if not isinstance(e.event, (AccountOpened, MoneyDeposited, MoneyWithdrawn)):
            continue
        a = acc.setdefault(e.aggregate_id, [None, 0, 0, 0])
        if isinstance(e.event, AccountOpened):
            a[0] = e.event.owner
        elif isinstance(e.event, MoneyDeposited):
            a[1] += e.event.amount
        else:
            a[1] -= e.event.amount
        a[2] += 1
        a[3] = max(a[3], e.version)
    return sorted((k, *v) for k, v in acc.items())


def replay_sql(store: Store) -> list[tuple[Any, ...]]:
    """The same fold as one GROUP BY over the ``events`` relation (current-version logs only)."""
    t = store.query("""
        SELECT aggregate_id AS account,
               max(CASE WHEN event_type = 'AccountOpened' THEN json_extract_string(payload, '$.owner') END) AS owner,
               sum(CASE WHEN event_type = 'MoneyDeposited' THEN json_extract(payload, '$.amount')::BIGINT
                        WHEN event_type = 'MoneyWithdrawn' THEN -json_extract(payload, '$.amount')::BIGINT
                        ELSE 0 END)::BIGINT AS balance,
               count(*) AS events, max(version) AS version
        FROM events WHERE aggregate_type = 'BankAccount' GROUP BY aggregate_id""")
    return sorted(tuple(r.values()) for r in t.to_pylist())


def read_model(store: Store, table: str) -> list[tuple[Any, ...]]:
    return sorted(tuple(r.values()) for r in store.query(f"SELECT {COLS} FROM {table}").to_pylist())


def checkpoints(store: Store, projection: str) -> dict[int, int]:
    rows = store.query(
        f"SELECT partition, position FROM es_actors.checkpoints WHERE projection = '{projection}'"
    ).to_pylist()
    return {r["partition"]: r["position"] for r in rows}


def heads(store: Store) -> dict[int, int]:
    """The last durable position of each partition (non-empty ones)."""
    out = {}
    for p in range(store.descriptor.partitions):
        rows = read_partition_rows(store.layout, p)
        if rows:
            out[p] = rows[-1][1]
    return out


def high_water(results: list[Any]) -> dict[int, int]:
    out: dict[int, int] = {}
    for r in results:
        if isinstance(r, CommandResult):
            for p, pos in r.positions:
                out[p] = max(out.get(p, 0), pos)
    return out


def status_of(store: Store, projection: str) -> list[dict[str, Any]]:
    return [r for r in store.projection_status() if r["projection"] == projection]


def wait_until(predicate, timeout: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(every)


def open_accounts(store: Store, accounts: list[str]) -> list[Any]:
    res = store.submit_many([(BankAccount, a, OpenAccount(owner=f"owner of {a}")) for a in accounts])
    assert all(isinstance(r, CommandResult) for r in res), res
    return res


def random_moves(rng: random.Random, accounts: list[str], n: int) -> list[Submission]:
    out = []
    for _ in range(n):
        a = rng.choice(accounts)
        if rng.random() < 0.7:
            out.append(Submission(BankAccount, a, Deposit(amount=rng.randint(1, 500))))
        else:
            out.append(Submission(BankAccount, a, Withdraw(amount=rng.randint(1, 300))))  # may be refused
    return out


def _pid(_self: Any) -> int:
    return os.getpid()


def projector_pid(store: Store, timeout: float = 60) -> int:
    """The projector's process id, once it is up (waits out a restart)."""
    actor = ray.get_actor(projector_name(store.layout, store.descriptor), namespace=NAMESPACE)
    deadline = time.monotonic() + timeout
    while True:
        try:
            return ray.get(actor.__ray_call__.remote(_pid), timeout=timeout)
        except ray.exceptions.ActorUnavailableError:
            assert time.monotonic() < deadline, "the projector did not come back"
            time.sleep(0.1)


def assert_models_equal_replay(store: Store, names=("balances", "balances_py")) -> list[tuple[Any, ...]]:
    expected = replay(store)
    assert expected, "the workload wrote nothing"
    for name in names:
        assert read_model(store, TABLES[name]) == expected, name
    return expected


# -- 1. projection == replay ----------------------------------------------------------------


@pytest.mark.both_backends
def test_sql_and_python_projections_equal_replay(store_factory):
    store = store_factory("replay", partitions=2, seal_rows=150, projections=[Balances, BalancesPy])
    rng = random.Random(1)
    accounts = [f"r-{i}" for i in range(12)]
    open_accounts(store, accounts)
    results: list[Any] = []
    for _ in range(6):  # several bulk calls: batches from sealed segments and from the tail
        results += store.submit_many(random_moves(rng, accounts, 120))
    assert any(isinstance(r, EsActorsError) for r in results), "the workload should include refused withdrawals"
    hw = high_water(results)
    assert hw == heads(store)
    for name in TABLES:
        store.wait_for(name, hw, timeout=60)
    expected = assert_models_equal_replay(store)
    assert replay_sql(store) == expected  # two independent folds agree
    for row in status_of(store, "balances") + status_of(store, "balances_py"):
        assert row["status"] == "running" and row["lag_events"] == 0 and row["checkpoint"] == hw[row["partition"]], row
    assert checkpoints(store, "balances") == checkpoints(store, "balances_py") == hw
    # opened again after close (which seals everything): balances is kept as committed,
    # balances_py (a new version) is rebuilt from sealed segments only
    store.close()
    again = store_factory("replay", projections=[Balances, BalancesPyV2])
    for name in TABLES:
        again.wait_for(name, hw, timeout=60)
    assert_models_equal_replay(again)
    applied = Counter()
    for r in again.projection_status():
        applied[r["projection"]] += r["applied"]
    assert applied == {"balances": 0, "balances_py": sum(1 for _ in log_events(again))}


@pytest.mark.both_backends
def test_projections_read_legacy_events_through_upcasters(store_factory):
    """v1 rows (a renamed type, a split one) in sealed segments and in the tail read as current events."""
    legacy = store_factory("legacy", aggregates=[LegacyBankAccount], partitions=2)
    legacy.submit_many([(LegacyBankAccount, f"old-{i}", LegacyOpen(owner=f"o{i}", initial=10 * i + 1)) for i in range(6)])
    legacy.submit_many([(LegacyBankAccount, f"old-{i}", LegacyDeposit(amt=i + 2)) for i in range(6)])
    legacy.seal()  # these v1 rows are sealed...
    legacy.submit_many([(LegacyBankAccount, f"old-{i}", LegacyDeposit(amt=100 + i)) for i in range(6)])
    # ...these stay in the tail: the owners die without sealing (a crash)
    names = [actor_name(legacy.layout, legacy.descriptor, p) for p in range(2)]
    for a in legacy._actors:
        ray.kill(a, no_restart=True)
    legacy._actors = None
    wait_until(lambda: all(_actor_gone(n) for n in names), 30, "partition actors to go")
    store = store_factory("legacy", projections=[Balances, BalancesPy])
    results = store.submit_many([(BankAccount, f"old-{i}", Withdraw(amount=1)) for i in range(6)])
    hw = high_water(results)
    for name in TABLES:
        store.wait_for(name, hw, timeout=60)
    expected = assert_models_equal_replay(store)
    # the split: each AccountOpenedWithDeposit counted as two events, its deposit in the balance
    assert expected[0] == ("old-0", "o0", 1 + 2 + 100 - 1, 5, 4)


def _actor_gone(name: str) -> bool:
    try:
        ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return True
    return False


# -- 2. the projector is SIGKILLed mid-batch under load ----------------------------------------


@pytest.mark.both_backends
def test_projector_sigkill_mid_batch_under_load(store_factory):
    store = store_factory(
        "pkill", partitions=2, seal_rows=200, projections=[SmallBatchBalances, SmallBatchBalancesPy]
    )
    accounts = [f"k-{i}" for i in range(10)]
    open_accounts(store, accounts)
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    stop = threading.Event()
    errors: list[BaseException] = []
    written = [0]

    def writer() -> None:
        wrng = random.Random(seed + 1)
        deadline = time.monotonic() + 60
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                res = store.submit_many(
                    [(BankAccount, wrng.choice(accounts), Deposit(amount=wrng.randint(1, 99))) for _ in range(20)],
                    timeout=60,
                )
                bad = [r for r in res if not isinstance(r, CommandResult)]
                if bad:
                    raise AssertionError(bad[:3])
                written[0] += len(res)
                time.sleep(0.04)  # a steady stream the projector (50 events per batch) keeps close to
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    w = threading.Thread(target=writer, daemon=True)
    w.start()
    kills: list[tuple[int, int, int]] = []  # (pid, events written, events behind) at each kill
    t_kills = time.monotonic()
    try:
        for _ in range(rng.randint(3, 5)):
            time.sleep(rng.uniform(0.3, 0.8))
            pid = projector_pid(store)  # waits out the previous restart
            behind = sum(r["lag_events"] for r in store.projection_status())
            os.kill(pid, signal.SIGKILL)
            kills.append((pid, written[0], behind))
        time.sleep(0.5)
    finally:
        stop.set()
        w.join(timeout=90)
    t_kills = time.monotonic() - t_kills
    assert not w.is_alive(), "writer hung"
    assert not errors, errors
    print(f"seed={seed} kills={kills} written={written[0]}")
    assert written[0] > kills[-1][1], "the load went on after the last kill"
    hw = heads(store)
    t0 = time.monotonic()
    for name in TABLES:
        store.wait_for(name, hw, timeout=120)
    print(f"caught up in {time.monotonic() - t0:.1f} s; kill phase took {t_kills:.1f} s")
    assert projector_pid(store) not in {pid for pid, _w, _b in kills}
    assert_models_equal_replay(store)  # no batch applied twice, no event lost
    assert checkpoints(store, "balances") == checkpoints(store, "balances_py") == hw


# -- 3. property: random commands, waits, pauses and resumes ----------------------------------


@pytest.fixture(scope="module")
def prop_store(ray_session, tmp_path_factory):
    import itertools

    s = Store.open(tmp_path_factory.mktemp("prop") / "store", [BankAccount], partitions=2, projections=[Balances, BalancesPy])
    yield s, itertools.count()
    s.close()


PROJECTIONS = sorted(TABLES)
_op = st.one_of(
    st.tuples(st.just("deposit"), st.integers(0, 3), st.integers(1, 300)),
    st.tuples(st.just("withdraw"), st.integers(0, 3), st.integers(1, 300)),
    st.tuples(st.just("wait"), st.sampled_from(PROJECTIONS)),
    st.tuples(st.just("pause"), st.sampled_from(PROJECTIONS)),
    st.tuples(st.just("resume"), st.sampled_from(PROJECTIONS)),
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=st.lists(_op, min_size=1, max_size=14))
def test_property_waits_pauses_resumes(prop_store, ops):
    store, counter = prop_store
    n = next(counter)
    accounts = [f"h{n}-{i}" for i in range(4)]
    hw = high_water(open_accounts(store, accounts))
    frozen: dict[str, tuple[list[Any], dict[int, int]]] = {}  # paused projection -> (rows, checkpoints)

    def merge(r: Any) -> None:
        for p, pos in high_water([r]).items():
            hw[p] = max(hw.get(p, 0), pos)

    def check_frozen() -> None:
        for name, (rows, cps) in frozen.items():
            assert read_model(store, TABLES[name]) == rows, f"{name} changed while paused"
            assert checkpoints(store, name) == cps, f"{name}'s checkpoint moved while paused"

    try:
        for op in ops:
            kind = op[0]
            if kind in ("deposit", "withdraw"):
                cmd = Deposit(amount=op[2]) if kind == "deposit" else Withdraw(amount=op[2])
                try:
                    merge(store.aggregate(BankAccount, accounts[op[1]]).submit(cmd))
                except EsActorsError:
                    pass  # an overdraft is refused: nothing stored
            elif kind == "wait":
                name = op[1]
                if name in frozen and any(pos > frozen[name][1].get(p, 0) for p, pos in hw.items()):
                    with pytest.raises(ProjectionTimeout):
                        store.wait_for(name, hw, timeout=0.2)
                elif name in frozen:
                    store.wait_for(name, hw, timeout=0.2)  # paused, but already there
                else:
                    store.wait_for(name, hw, timeout=30)
                    assert read_model(store, TABLES[name]) == replay(store)
            elif kind == "pause":
                store.pause(op[1])
                if op[1] not in frozen:
                    frozen[op[1]] = (read_model(store, TABLES[op[1]]), checkpoints(store, op[1]))
                assert {r["status"] for r in status_of(store, op[1])} == {"paused"}
            else:
                check_frozen()
                store.resume(op[1])
                frozen.pop(op[1], None)
            check_frozen()
        if frozen:
            time.sleep(0.2)  # give a (wrongly) running loop time to apply
            check_frozen()
    finally:
        for name in list(frozen):
            store.resume(name)
    for name in TABLES:
        store.wait_for(name, hw, timeout=30)
    assert_models_equal_replay(store)


def test_pause_under_load_freezes_read_model_and_checkpoint(store_factory):
    """pause() returns only once no batch is in flight: nothing changes after it returns."""
    store = store_factory("pause", partitions=2, projections=[SmallBatchBalances, SmallBatchBalancesPy])
    accounts = [f"p-{i}" for i in range(8)]
    open_accounts(store, accounts)
    stop = threading.Event()

    def writer() -> None:
        rng = random.Random(3)
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            store.submit_many([(BankAccount, rng.choice(accounts), Deposit(amount=rng.randint(1, 9))) for _ in range(20)])
            time.sleep(0.03)

    w = threading.Thread(target=writer, daemon=True)
    w.start()
    try:
        for round_ in range(6):
            time.sleep(0.3)
            name = PROJECTIONS[round_ % 2]
            store.pause(name)
            rows, cps = read_model(store, TABLES[name]), checkpoints(store, name)
            time.sleep(0.3)
            assert (read_model(store, TABLES[name]), checkpoints(store, name)) == (rows, cps), f"round {round_}: {name}"
            store.resume(name)
    finally:
        stop.set()
        w.join(timeout=60)
    hw = heads(store)
    for name in TABLES:
        store.wait_for(name, hw, timeout=60)
    assert_models_equal_replay(store)


# -- 4. read-your-writes ---------------------------------------------------------------------


@pytest.mark.both_backends
def test_wait_for_is_read_your_writes_and_times_out_when_paused(store_factory):
    store = store_factory("ryw", partitions=2, projections=[Balances, BalancesPy])
    acct = store.aggregate(BankAccount, "ryw-1")
    acct.submit(OpenAccount(owner="rita"))
    expected = 0
    for i in range(12):
        r = acct.submit(Deposit(amount=i + 1))
        expected += i + 1
        for name, table in TABLES.items():
            store.wait_for(name, r, timeout=30)
            got = store.query(f"SELECT balance, version FROM {table} WHERE account = 'ryw-1'").to_pylist()
            assert got == [{"balance": expected, "version": r.version}], (name, i)
    store.pause("balances")
    r = acct.submit(Deposit(amount=1000))
    t0 = time.monotonic()
    with pytest.raises(ProjectionTimeout, match="balances"):
        store.wait_for("balances", r, timeout=1.0)
    assert 0.9 <= time.monotonic() - t0 < 10
    store.wait_for("balances_py", r, timeout=30)  # the other projection goes on
    assert store.query("SELECT balance FROM balances WHERE account = 'ryw-1'").to_pylist() == [{"balance": expected}]
    assert {s["status"] for s in status_of(store, "balances")} == {"paused"}
    store.resume("balances")
    store.wait_for("balances", r, timeout=30)
    assert store.query("SELECT balance FROM balances WHERE account = 'ryw-1'").to_pylist() == [{"balance": expected + 1000}]
    with pytest.raises(EsActorsError, match="no projection"):
        store.wait_for("nope", r, timeout=1)


# -- 5. queries are read-only ------------------------------------------------------------------


REFUSED = [
    "INSERT INTO balances VALUES ('x', 'y', 1, 1, 1)",
    "UPDATE balances SET balance = 0",
    "DELETE FROM balances",
    "CREATE TABLE t (a INT)",
    "DROP VIEW balances",
    "COPY balances TO 'out.csv'",
    "ATTACH 'other.duckdb' AS other",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET threads = 1",
    "PRAGMA version",
    "CALL pragma_version()",
    "SELECT 1; SELECT 2",
    "SELECT 1; DELETE FROM balances",
]


def test_queries_are_read_only(store_factory, tmp_path):
    store = store_factory("q", partitions=2, seal_rows=10, projections=[Balances, BalancesPy])
    accounts = [f"q-{i}" for i in range(5)]
    open_accounts(store, accounts)
    rng = random.Random(5)
    results = store.submit_many(random_moves(rng, accounts, 40))
    t_mid = datetime.now(timezone.utc)
    time.sleep(0.01)
    results += store.submit_many(random_moves(rng, accounts, 40))
    corr = [store.aggregate(BankAccount, a).submit(Deposit(amount=7), correlation_id="corr-x") for a in accounts[:3]]
    results += corr
    hw = high_water(results)
    for name in TABLES:
        store.wait_for(name, hw, timeout=30)
    before = read_model(store, "balances")
    for sql in REFUSED:
        with pytest.raises(QueryRefused):
            store.query(sql)
    outside = tmp_path / "outside.parquet"
    pq.write_table(pa.table({"x": [1]}), outside)
    for sql in (
        "SELECT * FROM read_csv('/etc/passwd')",
        f"SELECT * FROM read_parquet('{outside}')",
        f"SELECT * FROM '{outside}'",
        f"SELECT * FROM read_parquet('{store.root}/../outside.parquet')",
    ):
        with pytest.raises(QueryRefused):
            store.query(sql)
    with pytest.raises(QueryFailed):
        store.query("SELEC balance FROM balances")
    with pytest.raises(QueryFailed):
        store.query("SELECT * FROM no_such_table")
    assert read_model(store, "balances") == before  # nothing above wrote
    # the projection keeps going after refused and failed queries
    r = store.aggregate(BankAccount, "q-0").submit(Deposit(amount=3))
    store.wait_for("balances", r, timeout=30)
    assert read_model(store, "balances") == replay(store)
    # files are read through `events` only, even the store's own (ADR-010)
    sealed = store.sealed_files()
    assert sealed, "seal_rows=10 should have sealed something"
    for sql in (f"SELECT count(*) AS n FROM read_parquet('{sealed[0]}')", f"SELECT count(*) AS n FROM '{sealed[0]}'"):
        with pytest.raises(QueryRefused):
            store.query(sql)
    # events: every durable event, sealed or not, before close
    n_events = len(log_events(store))
    assert store.query("SELECT count(*) AS n FROM events").to_pylist() == [{"n": n_events}]
    assert store.query("SELECT count(*) AS n FROM events WHERE position > 0").to_pylist()[0]["n"] == n_events
    # balances as of time T, in one query
    as_of = store.query(f"""
        SELECT aggregate_id AS account,
               sum(CASE event_type WHEN 'MoneyDeposited' THEN json_extract(payload, '$.amount')::BIGINT
                                   WHEN 'MoneyWithdrawn' THEN -json_extract(payload, '$.amount')::BIGINT
                                   ELSE 0 END)::BIGINT AS balance
        FROM events WHERE recorded_at <= '{t_mid.isoformat()}'::TIMESTAMPTZ GROUP BY ALL ORDER BY account""").to_pylist()
    expected_as_of = [
        {"account": a, "balance": store.aggregate(BankAccount, a).state_at(as_of=t_mid).state.balance}
        for a in sorted(accounts)
    ]
    assert as_of == expected_as_of
    # all events of one correlation id, in one query
    got = store.query("SELECT partition, position FROM events WHERE correlation_id = 'corr-x' ORDER BY ALL").to_pylist()
    assert [(g["partition"], g["position"]) for g in got] == sorted(p for r in corr for p in r.positions)
    # other outputs
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(EsActorsError, match="pandas"):
            store.query("SELECT * FROM balances", output="pandas")
    else:
        df = store.query("SELECT * FROM balances ORDER BY account", output="pandas")
        assert list(df["account"]) == sorted(accounts)
    with pytest.raises(EsActorsError, match="output"):
        store.query("SELECT 1", output="csv")
    # a read-only store after close: read models and events, in this process
    store.close()
    ro = Store.open(store.root, [BankAccount], read_only=True)
    assert read_model(ro, "balances") == read_model(ro, "balances_py") == replay(ro)
    assert ro.query("SELECT count(*) AS n FROM events").to_pylist() == [{"n": n_events}]
    for sql in ("DELETE FROM balances", "SELECT * FROM read_csv('/etc/passwd')"):
        with pytest.raises(QueryRefused):
            ro.query(sql)


def test_projection_tables_never_take_over_another_projections_view(store_factory):
    """Two projections that declare the same table name: refused at start, nothing left running."""
    with pytest.raises(EsActorsError, match="'balances' is also a table of projection 'balances'"):
        store_factory("shadow", partitions=2, projections=[Balances, SameTableAsBalances])
    # the partition actors the failed open started were stopped: the store opens again at once
    store = store_factory("shadow", projections=[Balances])
    r = open_accounts(store, ["s-1"])
    store.wait_for("balances", high_water(r), timeout=30)
    assert read_model(store, "balances") == replay(store)


# -- 6. failure policies ---------------------------------------------------------------------


@pytest.mark.both_backends
def test_halt_policy_stops_only_that_projection_until_resumed(store_factory, tmp_path):
    flag = tmp_path / "poison"
    flag.touch()
    Poison = flagged_projection("poison_halt", str(flag), on_error="halt")
    store = store_factory("halt", partitions=2, projections=[Balances, Poison])
    try:
        accounts = [f"hl-{i}" for i in range(4)]
        open_accounts(store, accounts)
        store.submit_many([(BankAccount, a, Deposit(amount=5)) for a in accounts])
        bad = store.aggregate(BankAccount, "hl-2").submit(Deposit(amount=13))
        results = store.submit_many([(BankAccount, a, Deposit(amount=20)) for a in accounts])
        hw = high_water(results + [bad])
        store.wait_for("balances", hw, timeout=30)  # the healthy projection keeps up
        assert read_model(store, "balances") == replay(store)
        rows = wait_until(
            lambda: [r for r in status_of(store, "poison_halt") if r["status"] == "halted"], 30, "halted status"
        )
        assert any("poison deposit of 13" in (r["last_error"] or "") for r in rows), rows
        assert {r["status"] for r in status_of(store, "balances")} == {"running"}
        with pytest.raises(ProjectionHalted, match="poison deposit"):
            store.wait_for("poison_halt", hw, timeout=5)
        # the failing batch was not applied, not even in part
        part = bad.positions[0][0]
        assert checkpoints(store, "poison_halt").get(part, 0) < bad.positions[0][1]
        time.sleep(0.3)
        assert {r["status"] for r in status_of(store, "poison_halt")} == {"halted"}  # it stays halted
        out = CliRunner().invoke(cli, ["status", "--json", "--store", store.layout.uri])  # joins this process's Ray
        assert out.exit_code == 2, out.output  # like the table form: a health check can tell
        shown = [json.loads(line) for line in out.output.splitlines()]
        assert {r["status"] for r in shown if r["projection"] == "poison_halt"} == {"halted"}
    finally:
        flag.unlink()  # the fix
    store.resume("poison_halt")
    store.wait_for("poison_halt", hw, timeout=30)
    assert read_model(store, "poison_halt") == replay(store)
    assert {r["status"] for r in status_of(store, "poison_halt")} == {"running"}
    assert {r["last_error"] for r in status_of(store, "poison_halt")} == {None}  # recovered
    out = CliRunner().invoke(cli, ["status", "--json", "--store", store.layout.uri])
    assert out.exit_code == 0 and {json.loads(line)["status"] for line in out.output.splitlines()} == {"running"}


def test_park_policy_dead_letters_then_retry(store_factory, tmp_path):
    flag = tmp_path / "poison"
    flag.touch()
    Poison = flagged_projection("poison_park", str(flag), on_error="park")
    store = store_factory("park", partitions=2, seal_rows=25, projections=[Balances, Poison])
    try:
        accounts = [f"pk-{i}" for i in range(6)]
        open_accounts(store, accounts)
        rng = random.Random(7)
        results = store.submit_many([(BankAccount, rng.choice(accounts), Deposit(amount=rng.randint(14, 90))) for _ in range(60)])
        bad = [store.aggregate(BankAccount, a).submit(Deposit(amount=13)) for a in ("pk-1", "pk-4")]
        results += store.submit_many([(BankAccount, rng.choice(accounts), Deposit(amount=rng.randint(14, 90))) for _ in range(60)])
        hw = high_water(results + bad)
        store.wait_for("poison_park", hw, timeout=60)  # the checkpoint passes the parked events
        store.wait_for("balances", hw, timeout=30)
        parked = {(b.positions[0][0], b.positions[0][1]) for b in bad}
        dl = store.dead_letters("poison_park").to_pylist()
        assert {(d["partition"], d["position"]) for d in dl} == parked
        for d in dl:
            assert d["projection"] == "poison_park" and d["event_type"] == "MoneyDeposited"
            assert "poison deposit of 13" in d["error"] and d["attempts"] >= 1
        assert store.dead_letters("balances").num_rows == 0
        assert read_model(store, "poison_park") == replay(store, skip=parked)  # all other events applied
        assert checkpoints(store, "poison_park") == hw
        assert {r["dead_letters"] for r in status_of(store, "poison_park")} == {2}
        # a retry before the fix leaves them parked
        assert store.retry_dead_letters("poison_park") == {"retried": 2, "applied": 0, "still_parked": 2}
        assert store.dead_letters("poison_park").num_rows == 2
    finally:
        flag.unlink()  # the fix
    assert store.retry_dead_letters("poison_park") == {"retried": 2, "applied": 2, "still_parked": 0}
    assert store.dead_letters("poison_park").num_rows == 0
    assert read_model(store, "poison_park") == replay(store)
    assert {r["dead_letters"] for r in status_of(store, "poison_park")} == {0}


def test_retry_dead_letters_while_the_projection_runs(store_factory, tmp_path):
    """Retrying runs on a Ray call thread while the loop applies batches of the same projection."""
    flag = tmp_path / "poison"
    flag.touch()
    Poison = flagged_projection("poison_busy", str(flag), on_error="park", max_attempts=1, retry_backoff_s=0.0, batch_size=5)
    store = store_factory("busy", partitions=2, projections=[Poison])
    accounts = [f"b-{i}" for i in range(6)]
    open_accounts(store, accounts)
    bad = store.submit_many([(BankAccount, accounts[i % 6], Deposit(amount=13)) for i in range(40)])
    store.wait_for("poison_busy", high_water(bad), timeout=60)
    assert store.dead_letters("poison_busy").num_rows == 40
    flag.unlink()
    stop = threading.Event()

    def writer() -> None:
        rng = random.Random(11)
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline:
            store.submit_many([(BankAccount, rng.choice(accounts), Deposit(amount=rng.randint(1, 9))) for _ in range(10)])
            time.sleep(0.02)

    w = threading.Thread(target=writer, daemon=True)
    w.start()
    try:
        time.sleep(0.3)
        t0 = time.monotonic()
        out = store.retry_dead_letters("poison_busy")
        took = time.monotonic() - t0
        writer_still_running = w.is_alive()
    finally:
        stop.set()
        w.join(timeout=60)
    assert out == {"retried": 40, "applied": 40, "still_parked": 0}
    assert writer_still_running and took < 20, f"the retry waited {took:.1f} s for the loop to let go"
    hw = heads(store)
    store.wait_for("poison_busy", hw, timeout=60)
    assert store.dead_letters("poison_busy").num_rows == 0
    assert read_model(store, "poison_busy") == replay(store)
    assert {r["status"] for r in status_of(store, "poison_busy")} == {"running"}


# -- 7. stalled ------------------------------------------------------------------------------------


def test_blocked_handler_shows_stalled_then_running(store_factory, tmp_path):
    flag = tmp_path / "block"
    Blocking = flagged_projection("blocking", str(flag), mode="block")
    store = store_factory("stall", partitions=2, projection_stall_s=1.0, projections=[Blocking])
    try:
        r0 = open_accounts(store, ["st-1", "st-2"])
        store.wait_for("blocking", high_water(r0), timeout=30)
        assert {r["status"] for r in status_of(store, "blocking")} == {"running"}
        flag.touch()
        r = store.aggregate(BankAccount, "st-1").submit(Deposit(amount=5))
        part = r.positions[0][0]

        def stalled() -> list[dict[str, Any]]:
            return [s for s in status_of(store, "blocking") if s["partition"] == part and s["status"] == "stalled"]

        row = wait_until(stalled, 20, "stalled status", every=0.2)[0]
        assert row["lag_events"] >= 1 and row["checkpoint"] < r.positions[0][1]
    finally:
        flag.unlink(missing_ok=True)
    store.wait_for("blocking", r, timeout=30)
    wait_until(lambda: {s["status"] for s in status_of(store, "blocking")} == {"running"}, 10, "running again")
    assert read_model(store, "blocking") == replay(store)


# -- 8. subscriptions ---------------------------------------------------------------------------


def _key(e: RecordedEvent) -> tuple[Any, ...]:
    return (e.partition, e.position, e.event_type, e.event_id)


@pytest.fixture
def sub_store(store_factory):
    """Legacy rows (one AccountOpenedWithDeposit reads as two events), sealed rows and tail rows."""
    legacy = store_factory("sub", aggregates=[LegacyBankAccount], partitions=2)
    legacy.submit_many([(LegacyBankAccount, f"s-{i}", LegacyOpen(owner=f"o{i}", initial=i + 1)) for i in range(3)])
    legacy.close()  # sealed
    store = store_factory("sub", seal_rows=15)
    rng = random.Random(9)
    accounts = [f"s-{i}" for i in range(3)] + [f"n-{i}" for i in range(4)]
    open_accounts(store, accounts[3:])
    for _ in range(3):
        store.submit_many(random_moves(rng, accounts, 25))
    return store


@pytest.mark.both_backends
def test_subscription_catch_up_once_in_order_and_resume(sub_store):
    store = sub_store
    everything = log_events(store)
    assert Counter(_key(e) for e in everything).most_common(1)[0][1] == 1
    assert sum(1 for e in everything if e.stored_schema_version == 1 and e.event_type == "AccountOpened") == 3
    got = list(store.subscribe(follow=False))
    assert sorted(_key(e) for e in got) == sorted(_key(e) for e in everything)  # each event exactly once
    for p in range(2):
        positions = [e.position for e in got if e.partition == p]
        assert positions == sorted(positions), f"partition {p} out of order"
    # stop after k events, save the checkpoint, resume from it: at least the rest (exactly the
    # rest when k ends a stored row; a row read as two events may come again as a whole)
    n = len(got)
    for k in sorted({0, 1, 2, 3, n // 3, n // 2, n - 1, n} | set(random.Random(2).sample(range(n), 6))):
        sub = store.subscribe(follow=False)
        it = iter(sub)
        first = [next(it) for _ in range(k)]
        saved = dict(sub.checkpoint)
        rest = list(store.subscribe(saved, follow=False))
        rest_keys = Counter(_key(e) for e in rest)
        missing = Counter(_key(e) for e in everything) - Counter(_key(e) for e in first) - rest_keys
        assert not missing, f"k={k}: events lost on resume: {list(missing)[:3]}"
        again = Counter(_key(e) for e in first) & rest_keys
        if again:  # only the events of the row being read when stopped
            assert {(p, pos) for p, pos, _t, _i in again} == {(first[-1].partition, first[-1].position)}, (k, again)
        else:
            assert len(first) + len(rest) == n
    # merged order: (recorded_at, partition, position), each event once
    merged = list(store.subscribe(order="merged", follow=False))
    assert [_key(e) for e in merged] == [_key(e) for e in sorted(got, key=lambda e: (e.recorded_at, e.partition, e.position))]
    # event type filter
    only = list(store.subscribe(follow=False, event_types=["MoneyWithdrawn"]))
    assert sorted(_key(e) for e in only) == sorted(_key(e) for e in everything if e.event_type == "MoneyWithdrawn")
    # follow=True, in a thread: sees events written after it started, ends on close()
    check_follow_sees_later_events_then_closes(store)


def test_subscription_in_small_reads_and_slices_delivers_the_same(sub_store):
    """Reads and decoded slices of a few rows (boundaries inside sealed segments, between a sealed
    and a tail read, after a row read as two events): the same events, and a checkpoint saved
    after any of them resumes without loss, repeating at most the row being read."""
    store = sub_store
    everything = log_events(store)

    def sub(checkpoint=None, **kw):
        return Subscription(store.layout, store.descriptor.partitions, store.registry, checkpoint or {},
                            follow=False, **kw)

    for batch_rows, decode_rows in ((1, 1), (5, 2), (7, 3), (10**6, 4)):
        sizes = dict(batch_rows=batch_rows, decode_rows=decode_rows)
        for types in (None, ["MoneyDeposited"]):
            want = [_key(e) for e in everything if types is None or e.event_type in types]
            got = [_key(e) for e in sub(event_types=types, **sizes)]
            assert sorted(got) == want and all(got[i] < got[i + 1] for i in range(len(got) - 1) if got[i][0] == got[i + 1][0])
            merged = [_key(e) for e in sub(order="merged", event_types=types, **sizes)]
            assert merged == [_key(e) for e in sorted((e for e in everything if types is None or e.event_type in types),
                                                      key=lambda e: (e.recorded_at, e.partition, e.position))]
        for k in range(0, len(everything) + 1, 3):
            s = sub(**sizes)
            it = iter(s)
            first = [_key(next(it)) for _ in range(k)]
            rest = [_key(e) for e in sub(dict(s.checkpoint), **sizes)]
            assert not Counter(_key(e) for e in everything) - Counter(first) - Counter(rest), (sizes, k)
            again = set(first) & set(rest)
            assert len({(p, pos) for p, pos, _t, _i in again}) <= 1 and all(key[:2] == first[-1][:2] for key in again)


@pytest.mark.both_backends
def test_catch_up_is_complete_while_the_owner_seals(store_factory):
    """A catch-up (follow=False) ends only at the durable end, not at a read that raced a seal.

    Racy by nature: a seal (every 3 rows) or a compaction moving files under a read used to
    end the subscription early, silently skipping every later event (seen about once in a
    few hundred catch-ups; this runs as many as fit in a few seconds).
    """
    store = store_factory("race", partitions=1, seal_rows=3, compact_min_run=3, compact_small_rows=20)
    acct = store.aggregate(BankAccount, "race-1")
    head = [acct.submit(OpenAccount(owner="r")).positions[0][1]]
    stop = threading.Event()

    def writer() -> None:
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline:
            head[0] = acct.submit(Deposit(amount=1)).positions[0][1]

    w = threading.Thread(target=writer, daemon=True)
    w.start()
    short: list[tuple[int, int]] = []
    runs = 0
    try:
        t_end = time.monotonic() + 6
        while time.monotonic() < t_end:
            acked = head[0]
            got = [e.position for e in store.subscribe(follow=False)]
            runs += 1
            assert got == list(range(1, len(got) + 1))
            if len(got) < acked:
                short.append((acked, len(got)))
            f = open_backend(store.layout.uri).follower(0, 0)
            acked = head[0]
            for _ in range(100_000):
                if f.poll(1000) is None:
                    break
            if f.after < acked:
                short.append((acked, f.after))
    finally:
        stop.set()
        w.join(timeout=30)
    assert not short, f"{len(short)} of {runs} catch-ups ended before events acknowledged earlier: {short[:5]}"


def check_follow_sees_later_events_then_closes(store: Store) -> None:
    n_before = len(log_events(store))
    for order in ("partition", "merged"):
        sub = store.subscribe(order=order, poll_s=0.02, merge_grace_s=0.2)
        seen: list[RecordedEvent] = []
        errors: list[BaseException] = []

        def consume() -> None:
            try:
                for e in sub:
                    seen.append(e)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        t = threading.Thread(target=consume, daemon=True)
        t.start()
        wait_until(lambda: len(seen) >= n_before, 20, f"{order}: catch-up")
        new = store.submit_many([(BankAccount, f"n-{i % 4}", Deposit(amount=50 + i)) for i in range(8)])
        want = {pos for r in new for pos in r.positions}
        wait_until(lambda: want <= {(e.partition, e.position) for e in seen}, 20, f"{order}: new events")
        sub.close()
        t.join(timeout=10)
        assert not t.is_alive(), f"{order}: the subscription did not end after close()"
        assert not errors, errors
        assert Counter(_key(e) for e in seen).most_common(1)[0][1] == 1, f"{order}: an event came twice"
        assert sorted(_key(e) for e in seen) == sorted(_key(e) for e in log_events(store))
        n_before = len(seen)


# -- 9. version bump ------------------------------------------------------------------------------


@pytest.mark.both_backends
def test_version_bump_rebuilds_from_the_log(store_factory):
    store = store_factory("bump", partitions=2, seal_rows=40, projections=[Balances, BalancesPy])
    accounts = [f"v-{i}" for i in range(6)]
    open_accounts(store, accounts)
    hw = high_water(store.submit_many(random_moves(random.Random(4), accounts, 120)))
    for name in TABLES:
        store.wait_for(name, hw, timeout=30)
    assert_models_equal_replay(store)
    store.close()
    store = store_factory("bump", projections=[BalancesV2, BalancesPy])
    hw2 = heads(store)
    for name in TABLES:
        store.wait_for(name, hw2, timeout=60)
    assert_models_equal_replay(store)
    versions = {r["name"]: r["version"] for r in store.query("SELECT name, version FROM es_actors.projections").to_pylist()}
    assert versions == {"balances": 2, "balances_py": 1}
    n_consumed = sum(1 for e in log_events(store) if e.aggregate_type == "BankAccount")
    applied = {r["projection"]: 0 for r in store.projection_status()}
    for r in store.projection_status():
        applied[r["projection"]] += r["applied"]
    assert applied == {"balances": n_consumed, "balances_py": 0}  # v2 was rebuilt, the other kept


def test_a_halted_projection_names_the_event_it_fails_on(store_factory):
    """A batch that fails names the failing event (partition, position, aggregate, type), for SQL
    and Python projections alike, in the status and in the ProjectionHalted a waiter gets."""
    store = store_factory("unlucky", partitions=2, projections=[UnluckySql, UnluckyPy])
    for name in ("unlucky_sql", "unlucky_py"):
        store.pause(name)  # the events below then reach each projection as one batch
    open_accounts(store, ["u-1", "u-2"])
    results = [store.aggregate(BankAccount, a).submit(Deposit(amount=n)) for a, n in
               [("u-1", 1), ("u-2", 2), ("u-1", 3), ("u-2", 4), ("u-1", 13), ("u-2", 5), ("u-1", 6)]]
    bad = results[4]
    ((partition, position),) = bad.positions
    expected = f"event MoneyDeposited at partition {partition} position {position} (BankAccount/u-1 version 4)"
    for name in ("unlucky_sql", "unlucky_py"):
        store.resume(name)
        rows = wait_until(
            lambda: [r for r in status_of(store, name) if r["status"] == "halted"], 30, f"{name} halted"
        )
        assert expected in rows[0]["last_error"] and "unlucky amount" in rows[0]["last_error"], rows[0]["last_error"]
        with pytest.raises(ProjectionHalted, match=re.escape(expected)):
            store.wait_for(name, bad, timeout=10)
