"""A backfill's status and stop (issue 14), without Ray: ``--status`` reads the plan and the task
checkpoints while a run goes on; ``--stop`` makes the running driver stop with its checkpoints
kept; started again, the backfill resumes from them and builds exactly what a replay builds."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import pytest
from click.testing import CliRunner

from es_actors.cli import main
from es_actors.codecs.views import RecordedEvent
from es_actors.config import StoreConfig
from es_actors.errors import EsActorsError
from es_actors.examples.bank import AccountOpened, BankAccount, MoneyDeposited, MoneyWithdrawn
from es_actors.examples.bank_projections import BalancesPy, upsert_balance_deltas
from es_actors.jobs.backfill import backfill, backfill_status, stop_backfill
from es_actors.read.backfill_tasks import BackfillStopped
from es_actors.read.merge import Merge
from es_actors.read.projection import PythonProjection
from es_actors.storage.layout import StoreLayout
from es_actors.write.partition import Partition
from tests.test_backfill import layout_of, sequential_replay
from tests.test_integrity import REGISTRY, cmd

BACKENDS = ("local", "s3")  # the work (plan, checkpoints, lease, stop request) in a directory or in a bucket
ACCOUNTS = [f"acc-{i}" for i in range(8)]


class SlowPy(PythonProjection):
    """BalancesPy at about 2 ms an event: a backfill that runs long enough to be looked at and stopped."""

    name = "slow_py"
    event_types = (AccountOpened, MoneyDeposited, MoneyWithdrawn)
    setup = BalancesPy.setup.replace("balances_py", "slow_py")
    merge = Merge.by_aggregate()
    batch_size = 10

    @classmethod
    def handle(cls, db: Any, events: Sequence[RecordedEvent]) -> None:
        time.sleep(0.002 * len(events))
        upsert_balance_deltas(db, "slow_py", events)


@pytest.fixture
def root(backend, store_uri) -> Any:
    """A closed one-partition store of 808 events, written in process: its path (local disk) or URI."""
    uri = store_uri("store")
    layout = StoreLayout.from_uri(uri)
    layout.create_or_check(1, 1)
    p = Partition(layout, 0, REGISTRY, StoreConfig(lock_timeout_s=0))
    p.handle_batch([cmd(a, "OpenAccount", {"owner": a}) for a in ACCOUNTS])
    for _ in range(100):
        p.handle_batch([cmd(a) for a in ACCOUNTS])
    p.seal()
    p.close()
    return Path(uri) if backend == "local" else uri


def start(root: Any, parallelism: int = 1) -> tuple[threading.Thread, list[Any]]:
    """A backfill in a thread (checkpoints every 20 positions), once it shows progress; its outcome lands in the list."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(backfill(root, SlowPy, [BankAccount], parallelism=parallelism, progress=False, checkpoint_events=20))
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            outcome.append(exc)

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            s = backfill_status(root, "slow_py", 1)
            if s.state == "running" and s.events_done > 0:
                return t, outcome
        except EsActorsError:
            pass  # no plan yet
        time.sleep(0.05)
    raise AssertionError("the backfill never showed progress")


def balances(root: Any) -> list[tuple[Any, ...]]:
    import duckdb

    con = duckdb.connect(str(layout_of(root).read_model_root / "readmodels" / "readmodels.duckdb"), read_only=True)
    try:
        return sorted(con.execute('SELECT * FROM "slow_py__v1".slow_py').fetchall())
    finally:
        con.close()


def test_status_while_running_stop_then_resume_builds_the_whole_version(root):
    t, outcome = start(root)
    running = backfill_status(root, "slow_py")  # the only version: found without --version
    assert running.running and 0 < running.events_done < running.events_total == 808
    assert [task.total for task in running.tasks] == [808]

    stopped = stop_backfill(root, "slow_py", 1, reason="test")
    t.join(30)
    assert isinstance(outcome[0], BackfillStopped) and "resumes" in str(outcome[0])
    assert stopped.state == "stopped" and stopped.stop_requested and not stopped.running
    assert 0 < stopped.events_done < 808 and not stopped.tasks[0].finished
    out = CliRunner().invoke(main, ["backfill", "slow_py", "--version", "1", "--store", str(root), "--status"])
    assert out.exit_code == 0 and "resumes from the checkpoints" in out.output and "/808 events" in out.output, out.output

    report = backfill(root, SlowPy, [BankAccount], parallelism=1, progress=False, checkpoint_events=20)
    [task] = report.task_results
    assert task["resumed_at"] >= stopped.events_done > 0  # resumed, not started over
    final = backfill_status(root, "slow_py", 1)
    assert final.state == "installed" and final.events_done == 808 and not final.stop_requested
    assert final.installed["instance"] == "slow_py__v1"
    assert balances(root) == sequential_replay(root, SlowPy)["slow_py"]  # exactly what one replay builds


def test_cli_stop_and_json_status_and_nothing_to_stop(root):
    t, outcome = start(root)
    out = CliRunner().invoke(main, ["backfill", "slow_py", "--version", "1", "--store", str(root), "--stop", "--json"])
    t.join(30)
    assert out.exit_code == 0, out.output
    assert json.loads(out.output[out.output.index("{"):])["state"] == "stopped"
    assert isinstance(outcome[0], BackfillStopped)
    again = CliRunner().invoke(main, ["backfill", "slow_py", "--version", "1", "--store", str(root), "--stop"])
    assert again.exit_code == 1 and "nothing to stop" in again.output and "stopped" in again.output
    for flag in ("--status", "--stop"):  # named as absent, before anything is asked
        missing = CliRunner().invoke(main, ["backfill", "nope", "--store", str(root), flag])
        shown = str(root) if isinstance(root, Path) else layout_of(root).uri
        assert missing.exit_code == 1 and f"no backfill of 'nope' in {shown}" in missing.output, missing.output
        assert "asked" not in missing.output and "name the version" not in missing.output
    # started again through the CLI, it resumes and finishes (the start path is unchanged)
    done = CliRunner().invoke(main, ["backfill", "slow_py", "--version", "1", "--store", str(root), "--projections",
                                     "tests.test_backfill_control:SlowPy", "--parallelism", "1", "--quiet",
                                     "--checkpoint-every", "20", "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["task_results"][0]["resumed_at"] > 0


@pytest.mark.local_only("a usage error, refused before the store is looked at")
def test_status_and_stop_together_is_a_usage_error(root):
    out = CliRunner().invoke(main, ["backfill", "slow_py", "--store", str(root), "--status", "--stop"])
    assert out.exit_code == 2 and "one at a time" in out.output


@pytest.mark.local_only("writes over a checkpoint file")
def test_an_unreadable_checkpoint_is_shown_as_unreadable_naming_the_file(root):
    t, outcome = start(root)
    stop_backfill(root, "slow_py", 1)
    t.join(30)
    assert isinstance(outcome[0], BackfillStopped)
    [task] = backfill_status(root, "slow_py", 1).tasks
    ck = root / "backfills" / "slow_py" / "v1" / "tasks" / task.task / "checkpoint.json"
    ck.write_text("{not json")
    [task] = backfill_status(root, "slow_py", 1).tasks
    assert str(ck) in task.unreadable and task.checkpoints == 0
    out = CliRunner().invoke(main, ["backfill", "slow_py", "--store", str(root), "--status"])
    assert out.exit_code == 0 and "checkpoint unreadable" in out.output and "not started" not in out.output, out.output


BUSY = threading.Event()  # set: the handler of Busy blocks until it is cleared


class Busy(SlowPy):
    """SlowPy whose handler blocks while BUSY is set (a handler stuck on a call)."""

    @classmethod
    def handle(cls, db: Any, events: Sequence[RecordedEvent]) -> None:
        while BUSY.is_set():
            time.sleep(0.01)
        super().handle(db, events)


def test_an_in_process_backfill_with_a_busy_handler_stops_before_its_next_batch(root):
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(backfill(root, Busy, [BankAccount], parallelism=1, progress=False, checkpoint_events=20))
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            outcome.append(exc)

    t = threading.Thread(target=run)
    t.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if backfill_status(root, "slow_py", 1).events_done > 0:
                    break
            except EsActorsError:
                pass
            time.sleep(0.05)
        BUSY.set()  # the next batch blocks
        time.sleep(0.3)
        out = CliRunner().invoke(main, ["backfill", "slow_py", "--store", str(root), "--stop", "--wait", "0.5"])
        assert out.exit_code == 1, out.output
        assert "has not stopped yet" in out.output and "handler is busy" in out.output
        assert "before its next batch" in out.output and "request stays" in out.output
        assert "a handler that is busy delays it" in out.output  # the status printed says the same
        assert backfill_status(root, "slow_py", 1).state == "stopping"
    finally:
        BUSY.clear()
    t.join(30)
    assert isinstance(outcome[0], BackfillStopped)  # stopped at the next batch, not finished
    assert backfill_status(root, "slow_py", 1).state == "stopped"
