"""Backfills (issue 12, ADR-016): a projection version rebuilt by parallel tasks equals a
sequential replay of the same log, row for row, for each way of combining parts, with
upcasters in play, after tasks are killed mid-run and after a failed run is resumed; the live
version keeps serving; the built version follows the log, also after its projector restarts."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
import ray
from click.testing import CliRunner
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from es_actors import EsActorsError, Store
from es_actors.cli import main
from es_actors.config import StoreConfig
from es_actors.domain import DomainRegistry
from es_actors.examples.bank import BankAccount, Deposit, OpenAccount, Withdraw
from es_actors.examples.bank_projections import Balances
from es_actors.jobs.backfill import backfill
from es_actors.read.backfill.files import BackfillDir
from es_actors.read.backfill.task import BackfillTaskFailed
from es_actors.read.merge import Merge
from es_actors.read.readmodel import ReadModel
from es_actors.read.runner import ProjectionRunner
from es_actors.storage.layout import StoreLayout
from es_actors.storage.local.reader import durable_high_water
from tests.backfill_domains import Ledger, PerTypeClaimsDisjoint, SmallBalances, SmallBalancesPy, SmallDaily, trapped
from tests.projection_domains import LegacyBankAccount, LegacyDeposit, LegacyOpen

KINDS = [SmallBalances, SmallBalancesPy, SmallDaily, Ledger]


def sequential_replay(root: Path, p: Any, aggregates=(BankAccount,)) -> dict[str, list[tuple[Any, ...]]]:
    """The projection replayed by one runner over the whole log, in a private database."""
    layout = StoreLayout(root)
    parts = layout.read_descriptor().partitions
    registry = DomainRegistry(list(aggregates))
    rm = ReadModel(root, registry, [p], database=":memory:")
    try:
        bounds = {i: (0, durable_high_water(layout, i)) for i in range(parts)}
        runner = ProjectionRunner(layout, parts, registry, [p], StoreConfig(), read_model=rm, bounds=bounds)
        while not runner.reached(p.name):
            assert runner.step() or runner.reached(p.name), runner.states[p.name].last_error
        return tables_of(rm.con, p.name)
    finally:
        rm.close()


def tables_of(con: Any, schema: str) -> dict[str, list[tuple[Any, ...]]]:
    names = [r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = ? AND table_type = 'BASE TABLE'", [schema]
    ).fetchall()]
    return {t: sorted(con.execute(f'SELECT * FROM "{schema}"."{t}"').fetchall()) for t in names}


def built(store: Store, p: Any) -> dict[str, list[tuple[Any, ...]]]:
    """The version a backfill built, as the store's read model holds it (through the projector's queries)."""
    schema = f"{p.name}__v{p.version}"
    out = {}
    for t in tables_of_names(store, schema):
        out[t] = sorted(tuple(r.values()) for r in store.query(f'SELECT * FROM "{schema}"."{t}"').to_pylist())
    return out


def tables_of_names(store: Store, schema: str) -> list[str]:
    rows = store.query(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = ? AND table_type = 'BASE TABLE'", params=[schema]
    ).to_pylist()
    return [r["table_name"] for r in rows]


def write_history(store: Store, rng: random.Random, accounts: list[str], n: int, seal_every: int = 0) -> None:
    for k in range(n):
        a = rng.choice(accounts)
        amount = rng.randrange(1, 50)
        cmd = Deposit(amount=amount if amount != 13 else 14) if rng.random() < 0.8 else Withdraw(amount=1)  # 13 springs the trap
        store.submit_many([(BankAccount, a, cmd)])
        if seal_every and k % seal_every == seal_every - 1:
            store.seal()


@pytest.fixture(scope="module")
def legacy_store(ray_session, tmp_path_factory) -> Path:
    """A closed store whose first events were written by the v1 code (read through upcasters)."""
    path = tmp_path_factory.mktemp("legacy") / "store"
    s = Store.open(path, [LegacyBankAccount], partitions=3, seal_rows=150)
    s.submit_many([(LegacyBankAccount, f"acct-{i}", LegacyOpen(owner=f"o{i}", initial=i + 1)) for i in range(12)])
    s.submit_many([(LegacyBankAccount, f"acct-{i}", LegacyDeposit(amt=i + 2)) for i in range(12)])
    s.seal()
    s.close()
    return path


# each example opens a store and runs 8 backfills: no shrinking (the failure message names the seed)
@settings(max_examples=5, deadline=None, phases=[Phase.explicit, Phase.generate], suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**30), events=st.integers(20, 200), seal_every=st.sampled_from([0, 37, 90]))
def test_parallel_backfill_equals_sequential_replay(legacy_store, tmp_path_factory, seed, events, seal_every):
    """Every kind of projection, parallel (2 tasks at once, small shares) == one sequential replay,
    row for row; legacy (upcast) events, sealed segments and the tail all in play."""
    root = tmp_path_factory.mktemp("prop") / "store"
    shutil.copytree(legacy_store, root, symlinks=True)  # `current` is a relative link
    store = Store.open(root, [BankAccount])
    try:
        rng = random.Random(seed)
        write_history(store, rng, [f"acct-{i}" for i in range(12)], events, seal_every)
        for p in KINDS:
            expected = sequential_replay(root, p)
            report = backfill(root, p, [BankAccount], parallelism=2, progress=False, task_events=60, checkpoint_events=50)
            assert report.events == sum(durable_high_water(StoreLayout(root), i) for i in range(3))
            got = tables_of_file(root, p)
            assert got == expected, (p.name, seed, events, seal_every)
    finally:
        store.close()


def tables_of_file(root: Path, p: Any) -> dict[str, list[tuple[Any, ...]]]:
    """The built version in the read-model file (no projector holds it in these tests)."""
    import duckdb

    con = duckdb.connect(str(root / "readmodels" / "readmodels.duckdb"), read_only=True)
    try:
        return tables_of(con, f"{p.name}__v{p.version}")
    finally:
        con.close()


@pytest.fixture
def busy_store(store_factory) -> Store:
    store = store_factory("busy", partitions=2, seal_rows=120)
    rng = random.Random(7)
    accounts = [f"a-{i}" for i in range(20)]
    store.submit_many([(BankAccount, a, OpenAccount(owner=a)) for a in accounts])
    write_history(store, rng, accounts, 400, seal_every=150)
    store.submit_many([(BankAccount, accounts[3], Deposit(amount=13))])  # the trap's event
    write_history(store, rng, accounts, 60)
    return store


def test_a_killed_task_resumes_from_its_checkpoint(busy_store, tmp_path):
    """A worker process dies mid-share (os._exit): Ray runs the task again, it resumes from its
    last checkpoint (not from the start) and the result is exact."""
    trap = tmp_path / "trap"
    trap.write_text("kill")
    TrapPy = trapped(trap)
    report = backfill(busy_store.root, TrapPy, [BankAccount], parallelism=2, progress=False, checkpoint_events=50)
    assert not trap.exists(), "the trap never fired: the test proves nothing"
    resumed = [r for r in report.task_results if r["resumed_at"]]
    assert resumed, report.task_results
    expected = sequential_replay(busy_store.root, TrapPy)
    assert tables_of_file(busy_store.root, TrapPy) == expected


def test_a_failed_backfill_resumes_and_finished_tasks_are_not_redone(busy_store, tmp_path):
    trap = tmp_path / "trap"
    trap.write_text("fail")
    TrapPy = trapped(trap)
    with pytest.raises(BackfillTaskFailed, match="the trap is set") as info:
        backfill(busy_store.root, TrapPy, [BankAccount], parallelism=2, progress=False, checkpoint_events=50)
    assert "MoneyDeposited" in str(info.value)  # the halt names the event
    assert not (busy_store.root / "readmodels" / "readmodels.duckdb").exists() or "trap_py__v1" not in tables_schemas(busy_store.root)
    work = BackfillDir(busy_store.root, "trap_py", 1)
    done_before = {t.id for t in work.load_plan().tasks if (ck := work.load_checkpoint(t.id)) is not None and ck.final}
    assert done_before, "the healthy partition's task should have finished"
    trap.unlink()
    report = backfill(busy_store.root, TrapPy, [BankAccount], parallelism=2, progress=False, checkpoint_events=50)
    again = {r["task"]: r for r in report.task_results}
    for t in done_before:
        assert again[t]["seconds"] == 0.0 and again[t]["resumed_at"] == again[t]["events"]  # not replayed again
    assert tables_of_file(busy_store.root, TrapPy) == sequential_replay(busy_store.root, TrapPy)


def tables_schemas(root: Path) -> set[str]:
    import duckdb

    con = duckdb.connect(str(root / "readmodels" / "readmodels.duckdb"), read_only=True)
    try:
        return {r[0] for r in con.execute("SELECT schema_name FROM information_schema.schemata").fetchall()}
    finally:
        con.close()


def test_a_projection_without_merge_is_refused_for_parallel_work_and_replayed_sequentially(busy_store):
    report = backfill(busy_store.root, Ledger, [BankAccount], parallelism=2, progress=False)
    assert report.mode == "sequential" and report.tasks == 1
    assert "declares no merge" in report.refused_parallel
    assert tables_of_file(busy_store.root, Ledger) == sequential_replay(busy_store.root, Ledger)


def test_parts_that_collide_are_an_error_and_install_nothing(busy_store):
    with pytest.raises(EsActorsError, match="collide on a key") as info:
        backfill(busy_store.root, PerTypeClaimsDisjoint, [BankAccount], parallelism=2, progress=False)
    assert "per_type" in str(info.value)
    assert "per_type__v1" not in tables_schemas(busy_store.root)


def test_a_merge_that_does_not_fit_the_tables_is_refused_before_any_work(busy_store):
    class Wrong(Balances):
        name = "wrong"
        merge = Merge.combining(not_a_table="INSERT INTO x SELECT * FROM part")

    with pytest.raises(EsActorsError, match="not_a_table"):
        backfill(busy_store.root, Wrong, [BankAccount], parallelism=1, progress=False)
    assert not (busy_store.root / "backfills" / "wrong").exists()


def test_the_live_version_serves_while_the_built_one_follows_the_log_and_survives_a_projector_restart(store_factory):
    store = store_factory("live", partitions=2, seal_rows=100, projections=[SmallBalances])
    accounts = [f"l-{i}" for i in range(10)]
    store.submit_many([(BankAccount, a, OpenAccount(owner=a)) for a in accounts])
    write_history(store, random.Random(3), accounts, 300, seal_every=120)
    store.projections.wait_for("balances", None, timeout=30)
    live_before = store.query("SELECT count(*) AS n, sum(balance) AS b FROM balances").to_pylist()
    report = backfill(store.root, SmallBalances, [BankAccount], parallelism=2, progress=False, task_events=80)
    assert report.installed_by == "projector" and report.instance == "balances__v1"
    assert store.query("SELECT count(*) AS n, sum(balance) AS b FROM balances").to_pylist() == live_before
    # the built version follows: a new command shows up in it
    res = store.submit_many([(BankAccount, "l-1", Deposit(amount=1000))])
    store.projections.wait_for("balances__v1", res[0], timeout=30)
    store.projections.wait_for("balances", res[0], timeout=30)
    assert built(store, SmallBalances) == {"balances": sorted(tuple(r.values()) for r in store.query("SELECT * FROM balances").to_pylist())}
    # the projector dies and Ray restarts it: it adopts the build again and keeps it following
    projector = store.projections.running()
    ray.kill(projector, no_restart=False)
    res = store.submit_many([(BankAccount, "l-2", Deposit(amount=7))])
    store.projections.wait_for("balances__v1", res[0], timeout=60)
    live = sorted(tuple(r.values()) for r in store.query("SELECT * FROM balances").to_pylist())
    assert built(store, SmallBalances)["balances"] == live


def test_cli_backfill_and_python_module_share_one_command(busy_store):
    runner = CliRunner()
    out = runner.invoke(main, ["backfill", "balances", "--store", str(busy_store.root), "--parallelism", "1", "--quiet", "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert report["instance"] == "balances__v1" and report["events"] > 0
    bad = runner.invoke(main, ["backfill", "nope", "--store", str(busy_store.root), "--parallelism", "1"])
    assert bad.exit_code == 2 and "none matches" in bad.output
    wrong_version = runner.invoke(main, ["backfill", "balances", "--version", "9", "--store", str(busy_store.root)])
    assert wrong_version.exit_code == 2 and "balances v1" in wrong_version.output


def test_a_projection_far_behind_catches_up_with_parallel_tasks_into_its_own_tables(store_factory):
    """Live catch-up uses the same machinery: new projections (one per way of combining) and one
    that is far behind with rows already (a combining merge folds into them) are caught up by
    backfill tasks, show 'backfilling' meanwhile, and end equal to a sequential replay; then they
    follow the log as usual. A projection that declares no merge catches up one batch after another."""
    store = store_factory("catchup", partitions=2, seal_rows=150)
    accounts = [f"c-{i}" for i in range(15)]
    store.submit_many([(BankAccount, a, OpenAccount(owner=a)) for a in accounts])
    write_history(store, random.Random(11), accounts, 500, seal_every=200)
    store.close()
    kinds = [SmallBalances, SmallBalancesPy, SmallDaily, Ledger]
    store = store_factory("catchup", projections=kinds, parallel_catch_up_events=100)
    seen = {f"{r['projection']}:{r['status']}" for r in store.projection_status()}  # right after the start
    for p in kinds:
        store.projections.wait_for(p.name, None, timeout=120)
    assert "ledger:backfilling" not in seen
    for p in (SmallBalances, SmallBalancesPy, SmallDaily):  # each had its catch-up's work directory...
        assert (store.root / "backfills" / p.name / "v1-catch-up").is_dir(), p.name
    assert not (store.root / "backfills" / "ledger").exists()
    assert not list((store.root / "backfills").glob("*/*/tasks")), "catch-up work left behind"  # ...emptied when done
    applied = {r["projection"]: 0 for r in store.projection_status()}
    for r in store.projection_status():
        applied[r["projection"]] += r["applied"]
    assert applied["balances"] == applied["ledger"] > 0  # the status counts what the tasks applied
    for p in kinds:
        assert live_tables(store, p) == sequential_replay(store.root, p), p.name
    # far behind with rows: a combining merge folds the catch-up into them
    store.close()
    writer = store_factory("catchup")
    write_history(writer, random.Random(12), accounts, 400, seal_every=150)
    writer.close()
    store = store_factory("catchup", projections=[SmallBalances], parallel_catch_up_events=100)
    res = store.submit_many([(BankAccount, "c-1", Deposit(amount=5))])
    store.projections.wait_for("balances", res[0], timeout=120)
    assert (store.root / "backfills" / "balances" / "v1-catch-up").is_dir()
    assert live_tables(store, SmallBalances) == sequential_replay(store.root, SmallBalances)


def live_tables(store: Store, p: Any) -> dict[str, list[tuple[Any, ...]]]:
    return {t: sorted(tuple(r.values()) for r in store.query(f'SELECT * FROM "{p.name}"."{t}"').to_pylist())
            for t in tables_of_names(store, p.name)}
