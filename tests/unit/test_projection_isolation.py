"""Projections isolated from each other in the runner (ADR-017), without Ray: each runs on its
own thread, so a handler that hangs stalls only its projection, and pause on it returns
promptly with nothing of the batch in flight committed, then or later."""

from __future__ import annotations

import threading
import time
from typing import Any, Sequence

import pytest

from es_actors import StoreConfig
from es_actors.codecs.views import RecordedEvent
from es_actors.examples.bank import AccountOpened, MoneyDeposited, MoneyWithdrawn
from es_actors.examples.bank_projections import Balances, BalancesPy, upsert_balance_deltas
from es_actors.read.projection import PythonProjection
from es_actors.read.runner import ProjectionRunner

from tests.unit.test_projection_runner import PARTITIONS, REGISTRY, BankLog, table

HANG_LIMIT_S = 60.0  # a hung handler gives up by then: nothing hangs forever


class Hung(PythonProjection):
    """Balances in Python whose handler blocks while ``hold`` is set (until ``release``)."""

    name = "hung"
    event_types = (AccountOpened, MoneyDeposited, MoneyWithdrawn)
    setup = """CREATE TABLE hung (account VARCHAR PRIMARY KEY, owner VARCHAR, balance BIGINT NOT NULL,
        events BIGINT NOT NULL, version BIGINT NOT NULL)"""
    hold = threading.Event()
    release = threading.Event()
    entered = threading.Event()

    @classmethod
    def handle(cls, db: Any, events: Sequence[RecordedEvent]) -> None:
        if cls.hold.is_set():
            cls.entered.set()
            cls.release.wait(HANG_LIMIT_S)
        upsert_balance_deltas(db, "hung", events)


@pytest.fixture
def bank(tmp_path):
    log = BankLog(tmp_path / "store")
    yield log
    log.close()


@pytest.fixture
def hang():
    Hung.release.clear()
    Hung.entered.clear()
    Hung.hold.set()
    yield Hung
    Hung.release.set()  # whatever the test did: no thread stays blocked


class Running:
    """A runner whose loops run on their threads (the real clock), closed at the end."""

    def __init__(self, bank: BankLog, projections: Sequence[type[Any]], **config: Any) -> None:
        settings = {"projector_poll_s": 0.02, "projection_stall_s": 0.5, **config}
        self.runner = ProjectionRunner(bank.layout, PARTITIONS, REGISTRY, projections, StoreConfig(**settings),
                                       recorded_at=lambda part, pos: None)
        self.thread = threading.Thread(target=self.runner.run, daemon=True)
        self.thread.start()

    def heads(self) -> dict[int, int]:
        self.runner.refresh_heads()
        return {r["partition"]: r["head"] for r in self.runner.status()}

    def statuses(self, name: str) -> set[str]:
        self.runner.refresh_heads()
        return {r["status"] for r in self.runner.status() if r["projection"] == name}

    def close(self) -> None:
        self.runner.close(timeout_s=10, loop=self.thread)


def wait_until(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_hung_handler_stalls_only_its_projection_and_pause_returns_promptly(bank, hang):
    ids = bank.open_accounts(6)
    r = Running(bank, [Balances, Hung])
    try:
        assert Hung.entered.wait(10), "the hung projection never took a batch"
        bank.run(*[(a, "Deposit", {"amount": 10 + i}) for i, a in enumerate(ids)])
        heads = r.heads()
        r.runner.wait_for("balances", heads, timeout_s=10)  # the healthy one keeps up
        assert table(r.runner, "balances") == bank.expected
        wait_until(lambda: r.statuses("hung") == {"stalled"}, 10, "the hung projection to show stalled")
        assert r.statuses("balances") == {"running"}
        assert all(row["lag_events"] == 0 for row in r.runner.status() if row["projection"] == "balances")

        t0 = time.monotonic()
        r.runner.pause("hung")
        assert time.monotonic() - t0 < 2.0, "pause waited for the hung handler"
        assert r.statuses("hung") == {"paused"} and r.runner.read_model.is_paused("hung")
        before = r.runner.read_model.checkpoints("hung")

        Hung.release.set()  # the handler returns: its batch reaches the commit and is rolled back
        wait_until(lambda: not r.runner.states["hung"].lock.locked(), 10, "the batch in flight to end")
        time.sleep(0.2)
        assert table(r.runner, "hung") == {} and r.runner.read_model.checkpoints("hung") == before
        assert r.runner.states["hung"].last_error is None  # rolled back by the pause: not a failure

        r.runner.resume("hung")
        r.runner.wait_for("hung", heads, timeout_s=10)
        assert table(r.runner, "hung") == bank.expected == table(r.runner, "balances")  # each event once
        assert r.statuses("hung") == {"running"}
    finally:
        r.close()


def test_a_batch_in_flight_at_pause_never_commits_even_if_resumed_before_it_ends(bank, hang):
    bank.open_accounts(4)
    r = Running(bank, [Hung, BalancesPy])
    try:
        assert Hung.entered.wait(10)
        r.runner.pause("hung")
        r.runner.resume("hung")  # while the handler still hangs
        Hung.hold.clear()
        Hung.release.set()
        heads = r.heads()
        r.runner.wait_for("hung", heads, timeout_s=10)
        r.runner.wait_for("balances_py", heads, timeout_s=10)
        assert table(r.runner, "hung") == bank.expected == table(r.runner, "balances_py")
    finally:
        r.close()


def test_projections_added_while_running_get_their_own_loop_and_removed_ones_end_it(bank):
    bank.open_accounts(3)
    r = Running(bank, [Balances])
    try:
        r.runner.add_projection(BalancesPy)
        heads = r.heads()
        r.runner.wait_for("balances_py", heads, timeout_s=10)
        thread = r.runner.states["balances_py"].thread
        assert thread is not None and thread.is_alive() and thread is not r.runner.states["balances"].thread
        r.runner.remove_projection("balances_py")
        assert not thread.is_alive() and "balances_py" not in r.runner.states
        assert table(r.runner, "balances_py") == bank.expected  # its tables stay
    finally:
        r.close()
