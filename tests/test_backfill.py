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
from es_actors.storage.backends import durable_heads
from es_actors.read.backfill.task import BackfillTaskFailed
from es_actors.read.backfill.work import open_work
from es_actors.read.merge import Merge
from es_actors.read.readmodel import ReadModel
from es_actors.read.runner import ProjectionRunner
from es_actors.storage.layout import StoreLayout
from es_actors.storage.local.reader import durable_high_water
from tests.backfill_domains import Ledger, PerTypeClaimsDisjoint, SmallBalances, SmallBalancesPy, SmallDaily, trapped
from tests.projection_domains import LegacyBankAccount, LegacyDeposit, LegacyOpen

KINDS = [SmallBalances, SmallBalancesPy, SmallDaily, Ledger]


def layout_of(store: Any) -> StoreLayout:
    """A store's layout from a Store, a path or a URI (on object storage: with its read-model directory)."""
    if isinstance(store, Store):
        return store.layout
    layout = StoreLayout.from_uri(store)
    return layout.with_read_models(layout.read_descriptor().store_id, None)


def uri_of(store: Any) -> str:
    return layout_of(store).uri


def sequential_replay(root: Any, p: Any, aggregates=(BankAccount,)) -> dict[str, list[tuple[Any, ...]]]:
    """The projection replayed by one runner over the whole log, in a private database (``root``:
    a path, a URI or a Store)."""
    layout = layout_of(root)
    parts = layout.read_descriptor().partitions
    registry = DomainRegistry(list(aggregates))
    rm = ReadModel(layout.read_model_root, registry, [p], database=":memory:")
    try:
        bounds = {i: (0, h) for i, h in durable_heads(layout, parts).items()}
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


def write_history(store: Store, rng: random.Random, accounts: list[str], n: int, seal_every: int = 0, batch: int = 1) -> None:
    """``n`` random commands, ``batch`` to a call (on S3 each call's commits are PUTs: batches keep tests fast)."""
    pending: list[Any] = []
    for k in range(n):
        a = rng.choice(accounts)
        amount = rng.randrange(1, 50)
        cmd = Deposit(amount=amount if amount != 13 else 14) if rng.random() < 0.8 else Withdraw(amount=1)  # 13 springs the trap
        pending.append((BankAccount, a, cmd))
        sealing = bool(seal_every and k % seal_every == seal_every - 1)
        if len(pending) >= batch or sealing or k == n - 1:
            store.submit_many(pending)
            pending = []
        if sealing:
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


def tables_of_file(root: Any, p: Any) -> dict[str, list[tuple[Any, ...]]]:
    """The built version in the read-model file (no projector holds it in these tests)."""
    import duckdb

    con = duckdb.connect(str(layout_of(root).read_model_root / "readmodels" / "readmodels.duckdb"), read_only=True)
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
    write_history(store, rng, accounts, 400, seal_every=150, batch=8)
    [res] = store.submit_many([(BankAccount, accounts[3], Deposit(amount=13))])  # the trap's event
    store.trap_at = res.positions[0]  # type: ignore[attr-defined]
    write_history(store, rng, accounts, 60, batch=8)
    return store


@pytest.mark.both_backends
def test_a_killed_task_resumes_from_its_checkpoint(busy_store, tmp_path):
    """A worker process dies mid-share (os._exit): Ray runs the task again, it resumes from its
    last checkpoint in the store (on S3: in the bucket), not from the start, redoing at most one
    checkpoint interval (+ the batch in flight), and the result is exact."""
    trap = tmp_path / "trap"
    trap.write_text("kill")
    TrapPy = trapped(trap)
    uri = uri_of(busy_store)
    report = backfill(uri, TrapPy, [BankAccount], parallelism=2, progress=False, checkpoint_events=50)
    assert not trap.exists(), "the trap never fired: the test proves nothing"
    part, pos = busy_store.trap_at
    [killed] = [r for r in report.task_results if r["task"] == f"p{part:04d}"]
    assert killed["resumed_at"] > 0, report.task_results
    assert pos - 1 - killed["resumed_at"] <= 50 + TrapPy.batch_size, (pos, killed)  # redone: at most one interval
    expected = sequential_replay(uri, TrapPy)
    assert tables_of_file(uri, TrapPy) == expected


@pytest.mark.both_backends
def test_a_failed_backfill_resumes_and_finished_tasks_are_not_redone(busy_store, tmp_path):
    trap = tmp_path / "trap"
    trap.write_text("fail")
    TrapPy = trapped(trap)
    uri = uri_of(busy_store)
    with pytest.raises(BackfillTaskFailed, match="the trap is set") as info:
        backfill(uri, TrapPy, [BankAccount], parallelism=2, progress=False, checkpoint_events=50)
    assert "MoneyDeposited" in str(info.value)  # the halt names the event
    rm_file = busy_store.layout.read_model_root / "readmodels" / "readmodels.duckdb"
    assert not rm_file.exists() or "trap_py__v1" not in tables_schemas(uri)
    work = open_work(busy_store.layout, "trap_py", 1)
    done_before = {t.id for t in work.load_plan().tasks if (ck := work.load_checkpoint(t.id)) is not None and ck.final}
    assert done_before, "the healthy partition's task should have finished"
    trap.unlink()
    report = backfill(uri, TrapPy, [BankAccount], parallelism=2, progress=False, checkpoint_events=50)
    again = {r["task"]: r for r in report.task_results}
    for t in done_before:
        assert again[t]["seconds"] == 0.0 and again[t]["resumed_at"] == again[t]["events"]  # not replayed again
    assert tables_of_file(uri, TrapPy) == sequential_replay(uri, TrapPy)


def tables_schemas(root: Any) -> set[str]:
    import duckdb

    con = duckdb.connect(str(layout_of(root).read_model_root / "readmodels" / "readmodels.duckdb"), read_only=True)
    try:
        return {r[0] for r in con.execute("SELECT schema_name FROM information_schema.schemata").fetchall()}
    finally:
        con.close()


@pytest.mark.both_backends
def test_a_projection_without_merge_is_refused_for_parallel_work_and_replayed_sequentially(busy_store):
    uri = uri_of(busy_store)
    report = backfill(uri, Ledger, [BankAccount], parallelism=2, progress=False)
    assert report.mode == "sequential" and report.tasks == 1
    assert "declares no merge" in report.refused_parallel
    assert tables_of_file(uri, Ledger) == sequential_replay(uri, Ledger)


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


@pytest.mark.both_backends
def test_the_live_version_serves_while_the_built_one_follows_the_log_and_survives_a_projector_restart(store_factory):
    store = store_factory("live", partitions=2, seal_rows=100, projections=[SmallBalances])
    accounts = [f"l-{i}" for i in range(10)]
    store.submit_many([(BankAccount, a, OpenAccount(owner=a)) for a in accounts])
    write_history(store, random.Random(3), accounts, 300, seal_every=120, batch=8)
    store.projections.wait_for("balances", None, timeout=30)
    live_before = store.query("SELECT count(*) AS n, sum(balance) AS b FROM balances").to_pylist()
    report = backfill(store.layout.uri, SmallBalances, [BankAccount], parallelism=2, progress=False, task_events=80)
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


@pytest.mark.both_backends
def test_cli_backfill_and_python_module_share_one_command(busy_store):
    runner = CliRunner()
    out = runner.invoke(main, ["backfill", "balances", "--store", uri_of(busy_store), "--parallelism", "1", "--quiet", "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert report["instance"] == "balances__v1" and report["events"] > 0
    from es_actors.cli.watch import backfill_progress  # what `es-actors status --watch` shows, on either backend

    shown = backfill_progress(layout_of(busy_store), ["balances"])
    assert [(r["backfill"], r["state"], r["tasks_done"] == r["tasks"]) for r in shown] == [("balances v1", "installed", True)]
    bad = runner.invoke(main, ["backfill", "nope", "--store", uri_of(busy_store), "--parallelism", "1"])
    assert bad.exit_code == 2 and "none matches" in bad.output
    wrong_version = runner.invoke(main, ["backfill", "balances", "--version", "9", "--store", uri_of(busy_store)])
    assert wrong_version.exit_code == 2 and "balances v1" in wrong_version.output


@pytest.mark.both_backends
def test_a_projection_far_behind_catches_up_with_parallel_tasks_into_its_own_tables(store_factory, backend):
    """Live catch-up uses the same machinery: new projections (one per way of combining) and one
    that is far behind with rows already (a combining merge folds into them) are caught up by
    backfill tasks, show 'backfilling' meanwhile, and end equal to a sequential replay; then they
    follow the log as usual. A projection that declares no merge catches up one batch after another."""
    store = store_factory("catchup", partitions=2, seal_rows=150)
    accounts = [f"c-{i}" for i in range(15)]
    store.submit_many([(BankAccount, a, OpenAccount(owner=a)) for a in accounts])
    write_history(store, random.Random(11), accounts, 500, seal_every=200, batch=8)
    store.close()
    kinds = [SmallBalances, SmallBalancesPy, SmallDaily, Ledger]
    store = store_factory("catchup", projections=kinds, parallel_catch_up_events=100)
    seen = {f"{r['projection']}:{r['status']}" for r in store.projection_status()}  # right after the start
    for p in kinds:
        store.projections.wait_for(p.name, None, timeout=120)
    assert "ledger:backfilling" not in seen
    for p in (SmallBalances, SmallBalancesPy, SmallDaily):  # each had its catch-up's work in the store...
        assert catch_up_work(store, p.name) == (True, 0), p.name  # ...emptied when done
    assert catch_up_work(store, "ledger") == (False, 0)
    applied = {r["projection"]: 0 for r in store.projection_status()}
    for r in store.projection_status():
        applied[r["projection"]] += r["applied"]
    assert applied["balances"] == applied["ledger"] > 0  # the status counts what the tasks applied
    for p in kinds:
        assert live_tables(store, p) == sequential_replay(store, p), p.name
    # far behind with rows: a combining merge folds the catch-up into them
    store.close()
    writer = store_factory("catchup")
    write_history(writer, random.Random(12), accounts, 400, seal_every=150, batch=8)
    writer.close()
    store = store_factory("catchup", projections=[SmallBalances], parallel_catch_up_events=100)
    res = store.submit_many([(BankAccount, "c-1", Deposit(amount=5))])
    store.projections.wait_for("balances", res[0], timeout=120)
    assert catch_up_work(store, "balances") == (True, 0)
    assert live_tables(store, SmallBalances) == sequential_replay(store, SmallBalances)


def catch_up_work(store: Store, name: str) -> tuple[bool, int]:
    """(whether a parallel catch-up of ``name`` ran: its directory, or its lease records in the bucket;
    the task checkpoints and parts left behind)."""
    if not store.layout.scheme:
        base = store.root / "backfills" / name / "v1-catch-up"
        return base.is_dir(), len(list(base.glob("tasks/*/*")))
    from es_actors.storage.backends import blob_store_of

    blobs = blob_store_of(store.layout)
    prefix = f"backfills/{name}/v1-catch-up/"
    if hasattr(blobs, "any_under"):  # S3
        tasks = int(blobs.any_under(prefix + "tasks/"))
    else:
        tasks = len([f for f in (blobs.root / prefix / "tasks").rglob("*") if f.is_file()])
    return bool(blobs.list(prefix + "lease/")), tasks + len(blobs.list(prefix))


def live_tables(store: Store, p: Any) -> dict[str, list[tuple[Any, ...]]]:
    return {t: sorted(tuple(r.values()) for r in store.query(f'SELECT * FROM "{p.name}"."{t}"').to_pylist())
            for t in tables_of_names(store, p.name)}
