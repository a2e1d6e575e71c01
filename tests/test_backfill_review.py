"""Review of the first backfill step (issue 12): each test is a defect found by attacking it as a
user, operator or attacker would; each fails on the code it was written against.
Reproductions as scripts: /tmp/review12/x_*.py."""

from __future__ import annotations

import glob
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import pytest

from es_actors import EsActorsError, Store
from es_actors.codecs.views import RecordedEvent
from es_actors.domain import DomainRegistry
from es_actors.examples.bank import AccountOpened, BankAccount, Deposit, MoneyDeposited, OpenAccount
from es_actors.examples.bank_projections import Balances, BalancesPy, upsert_balance_deltas
from es_actors.jobs.backfill import backfill
from es_actors.read.backfill.files import BackfillDir
from es_actors.read.projection import SqlProjection
from es_actors.read.readmodel import ReadModel
from tests.test_backfill import sequential_replay, tables_of_file


@pytest.fixture(scope="module")
def closed_store(ray_session, tmp_path_factory) -> Path:
    """A small closed store (2 partitions, sealed segments and a tail); tests copy it."""
    path = tmp_path_factory.mktemp("review") / "store"
    s = Store.open(path, [BankAccount], partitions=2, seal_rows=40)
    accounts = [f"a-{i}" for i in range(8)]
    s.submit_many([(BankAccount, a, OpenAccount(owner=a)) for a in accounts])
    rng = random.Random(1)
    for _ in range(100):
        s.submit_many([(BankAccount, rng.choice(accounts), Deposit(amount=rng.randrange(1, 50)))])
    s.close()
    return path


@pytest.fixture
def root(closed_store, tmp_path) -> Path:
    dest = tmp_path / "store"
    shutil.copytree(closed_store, dest, symlinks=True)
    return dest


class BalancesV2(Balances):
    version = 2


def test_the_live_projection_can_move_to_the_version_built_beside(root):
    """README: until the cutover, 'opening the store with the new version rebuilds in place'.
    After `balances v2` is built beside, that open fails: the build's table `balances` is taken
    for another projection's table (`_other_owner`), so the live rebuild's set-up is refused."""
    backfill(root, BalancesV2, [BankAccount], parallelism=1, progress=False)
    rm = ReadModel(root, DomainRegistry([BankAccount]), [BalancesV2])  # what the projector does
    rm.close()


def test_python_m_backfill_reports_an_error_in_one_line(tmp_path):
    """`ray job submit -- python -m es_actors.jobs.backfill ...` runs the bare click command,
    not the es-actors group that turns es_actors errors into one line: a traceback."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    r = subprocess.run(
        [sys.executable, "-m", "es_actors.jobs.backfill", "balances", "--store", str(tmp_path / "nope"), "--parallelism", "1"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert r.returncode == 1
    assert "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


ARMED = [True]


class TrapBal(BalancesPy):
    """BalancesPy that fails on partition 1 beyond position 30 while ARMED (in-process runs only)."""

    name = "trap_bal"
    setup = BalancesPy.setup.replace("balances_py", "trap_bal")
    batch_size = 10
    retry_backoff_s = 0.01

    @classmethod
    def handle(cls, db: Any, events: Sequence[RecordedEvent]) -> None:
        if ARMED[0] and any(e.partition == 1 and e.position > 30 for e in events):
            raise RuntimeError("the trap is set")
        upsert_balance_deltas(db, "trap_bal", events)


class TrapBalChanged(TrapBal):
    """The same projection (name, version, module, class name) with another meaning: deposits count twice."""

    @classmethod
    def handle(cls, db: Any, events: Sequence[RecordedEvent]) -> None:
        upsert_balance_deltas(db, "trap_bal", [*events, *[e for e in events if isinstance(e.event, MoneyDeposited)]])


TrapBalChanged.__qualname__ = TrapBalChanged.__name__ = TrapBal.__qualname__


def test_a_resume_with_changed_python_code_is_refused_or_exact(root):
    """ADR-016: 'Another declaration is refused'. A Python projection's fingerprint is only
    module:qualname, so a changed handle() resumes and mixes parts of the old and new code."""
    ARMED[0] = True
    with pytest.raises(EsActorsError):
        backfill(root, TrapBal, [BankAccount], parallelism=1, progress=False)
    try:
        backfill(root, TrapBalChanged, [BankAccount], parallelism=1, progress=False)
    except EsActorsError:
        return  # refused: fine
    assert tables_of_file(root, TrapBalChanged) == sequential_replay(root, TrapBalChanged)


def test_a_torn_checkpoint_part_is_redone_or_an_es_actors_error(root):
    """A checkpoint's Parquet file torn (a shared file system's torn write): the resume fails
    with duckdb's InvalidInputException, not an es_actors error (nor is the share redone)."""
    ARMED[0] = True
    with pytest.raises(EsActorsError):
        backfill(root, TrapBal, [BankAccount], parallelism=1, progress=False, checkpoint_events=10)
    work = BackfillDir(root, "trap_bal", 1)
    ck = work.load_checkpoint("p0001")
    assert ck is not None and not ck.final
    f = work.table_file(ck, "trap_bal")
    f.write_bytes(f.read_bytes()[:40])
    ARMED[0] = False
    try:
        backfill(root, TrapBal, [BankAccount], parallelism=1, progress=False, checkpoint_events=10)
        assert tables_of_file(root, TrapBal) == sequential_replay(root, TrapBal)  # the share was redone
    finally:
        ARMED[0] = True


class CrashOnP1(BalancesPy):
    """A projection whose worker process dies on every event of partition 1 (segfault, OOM kill)."""

    name = "crash_p1"
    setup = BalancesPy.setup.replace("balances_py", "crash_p1")

    @classmethod
    def handle(cls, db: Any, events: Sequence[RecordedEvent]) -> None:
        if any(e.partition == 1 for e in events):
            os._exit(1)
        upsert_balance_deltas(db, "crash_p1", events)


def test_a_task_whose_worker_always_dies_is_an_es_actors_error(root):
    """After Ray's retries the backfill raises ray.exceptions.WorkerCrashedError (the CLI then
    prints a traceback), not an es_actors error naming the task."""
    with pytest.raises(EsActorsError):
        backfill(root, CrashOnP1, [BankAccount], parallelism=2, progress=False)


def test_a_failed_reinstall_keeps_the_old_build_following(store_factory):
    """adopt() removes the build from the runner before install(); when the install fails (a
    torn part here, a by_aggregate collision alike) the transaction rolls back but the old build
    is no longer followed (wait_for: 'no projection balances__v1')."""
    store = store_factory("reinstall", partitions=2, seal_rows=50, projections=[Balances])
    store.submit_many([(BankAccount, f"r-{i}", OpenAccount(owner="o")) for i in range(6)])
    backfill(store.root, Balances, [BankAccount], parallelism=2, progress=False)

    def tear(update: dict[str, Any]) -> None:
        if update.get("event") == "task_done":
            for f in glob.glob(f"{store.root}/backfills/balances/v1/tasks/*/*/balances.parquet"):
                Path(f).write_bytes(b"PAR1")

    with pytest.raises(EsActorsError):
        backfill(store.root, Balances, [BankAccount], parallelism=2, progress=tear)
    res = store.submit_many([(BankAccount, "r-1", Deposit(amount=4))])
    store.projections.wait_for("balances__v1", res[0], timeout=15)


def test_parallelism_1_with_address_installs_into_the_running_projector(store_factory):
    """`--parallelism 1 --address <cluster>` never joins the cluster (connect_ray only when
    parallelism != 1), so it cannot hand the parts to the running projector: after the whole
    replay it fails, advising '--address', which was given."""
    import ray

    store = store_factory("p1", partitions=2, projections=[Balances])
    store.submit_many([(BankAccount, f"q-{i}", OpenAccount(owner="o")) for i in range(4)])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    r = subprocess.run(
        [sys.executable, "-m", "es_actors.cli", "backfill", "balances", "--store", str(store.root), "--parallelism", "1",
         "--address", ray.get_runtime_context().gcs_address, "--quiet"],
        capture_output=True, text=True, timeout=180, env=env,
    )
    assert r.returncode == 0, r.stderr


class Owners(SqlProjection):
    name = "bal__v1"  # a live projection whose name is a build's
    event_types = (AccountOpened,)
    setup = "CREATE TABLE owners (account VARCHAR PRIMARY KEY, owner VARCHAR)"
    apply = "INSERT OR REPLACE INTO owners SELECT aggregate_id, payload->>'owner' FROM batch"


class Bal(Balances):
    name = "bal"
    setup = Balances.setup.replace("balances", "bal_t")
    apply = Balances.apply.replace("balances", "bal_t")
    merge = None


def test_a_build_name_taken_by_a_live_projection_is_refused_before_the_replay(root):
    """The check that `<name>__v<N>` is not a live projection's runs in install(), after every
    task has replayed its share."""
    ReadModel(root, DomainRegistry([BankAccount]), [Owners]).close()
    seen: list[str] = []
    with pytest.raises(EsActorsError, match="bal__v1"):
        backfill(root, Bal, [BankAccount], parallelism=1, progress=lambda u: seen.append(u["event"]))
    assert "task_done" not in seen


def test_a_live_projection_named_like_a_build_does_not_take_its_schema(root):
    """The other way round: after `bal__v1` is built, a live projection named `bal__v1` (another
    declaration, same version) opens on the build's schema, tables and checkpoints as its own."""
    backfill(root, Bal, [BankAccount], parallelism=1, progress=False)
    try:
        rm = ReadModel(root, DomainRegistry([BankAccount]), [Owners])
    except EsActorsError:
        return
    try:
        tables = {r[0] for r in rm.con.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'bal__v1'").fetchall()}
    finally:
        rm.close()
    assert tables == {"owners"}


def test_the_installed_mark_is_json(root):
    """files.py calls it installed.json; run.py writes a Python repr into it."""
    backfill(root, Balances, [BankAccount], parallelism=1, progress=False)
    json.loads(BackfillDir(root, "balances", 1).installed_mark.read_text())
