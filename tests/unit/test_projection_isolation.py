"""Projections isolated from each other in the runner (ADR-017), without Ray: each runs on its
own thread, so a handler that hangs stalls only its projection, and pause on it returns
promptly with nothing of the batch in flight committed, then or later."""

from __future__ import annotations

import threading
import time
from typing import Any, Sequence

import pytest

from es_actors import StoreConfig
from es_actors.errors import EsActorsError, ProjectionStalled
from es_actors.read.backfill.install import beside
from es_actors.read.versions import Versions
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
        self.runner.close(loop=self.thread)  # as the projector does: a loop still in a handler is left after 3 s


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


def test_calls_that_need_a_hung_projections_cursor_are_refused_after_a_bound_and_close_does_not_wait(bank, hang):
    bank.open_accounts(3)
    r = Running(bank, [Balances, Hung])
    closed = False
    try:
        assert Hung.entered.wait(10)
        t0 = time.monotonic()
        with pytest.raises(ProjectionStalled, match=r"hung is stalled in its handler since \d{4}-\d\d-\d\dT"):
            with r.runner.exclusive("hung", timeout_s=0.5):
                pass
        assert time.monotonic() - t0 < 2.0
        with r.runner.exclusive("balances", timeout_s=0.5):  # the others' cursors are free
            pass
        t0 = time.monotonic()
        r.runner.close(loop=r.thread)  # as the projector closes it
        closed = True
        assert time.monotonic() - t0 < 5.0, "close waited for the hung handler"
        assert r.runner.states["hung"].thread.is_alive()  # a daemon, left in its handler
    finally:
        if not closed:
            r.close()
    Hung.release.set()
    r.runner.states["hung"].thread.join(10)
    assert not r.runner.states["hung"].thread.is_alive()


class HungV2(Hung):
    version = 2


def hung_build(r: Running) -> None:
    """``hung__v2``: Hung v2 as a backfill's build beside ``hung``, followed by the runner."""
    r.runner.read_model.con.execute("INSERT INTO es_actors.builds VALUES ('hung__v2', 'hung', 2, NULL, 'x', now())")
    r.runner.add_projection(beside(HungV2))


def test_an_operation_on_a_hung_version_is_refused_in_bounded_time_and_does_not_block_other_projections(bank, hang):
    bank.open_accounts(3)
    r = Running(bank, [Balances, Hung])
    try:
        assert Hung.entered.wait(10)
        hung_build(r)
        v = Versions(r.runner.read_model.con, bank.layout, PARTITIONS, r.runner, follow_s=1.0)
        v.hold_s = 2.0
        out: dict[str, Any] = {}

        def cutover() -> None:
            t0 = time.monotonic()
            try:
                v.cutover("hung", 2, principal="ops", reason="test")
            except Exception as exc:
                out["error"] = exc
            out["took"] = time.monotonic() - t0

        th = threading.Thread(target=cutover, daemon=True)
        th.start()
        time.sleep(0.3)
        assert [o["outcome"] for o in v.operations("hung")] == ["running"]  # its process lives: not "interrupted"
        t0 = time.monotonic()
        with pytest.raises(EsActorsError, match="no cutover to 'balances'"):  # another projection: not blocked
            v.rollback("balances", principal="ops", reason="test")
        assert time.monotonic() - t0 < 1.0
        th.join(15)
        assert not th.is_alive(), "the cutover waited for the hung handler"
        assert isinstance(out["error"], ProjectionStalled) and "stalled in its handler since" in str(out["error"])
        assert out["took"] < 8.0
        [op] = v.operations("hung")
        assert op["outcome"] == "failed" and "stalled in its handler" in op["detail"]["error"]
    finally:
        r.close()


def test_dropping_a_hung_version_does_not_wait_for_its_handler_and_its_batch_never_commits(bank, hang):
    bank.open_accounts(3)
    r = Running(bank, [Balances, Hung])
    try:
        assert Hung.entered.wait(10)
        Hung.entered.clear()
        hung_build(r)
        assert Hung.entered.wait(10)  # hung__v2 is in its handler too
        v = Versions(r.runner.read_model.con, bank.layout, PARTITIONS, r.runner)
        thread = r.runner.states["hung__v2"].thread
        t0 = time.monotonic()
        r.runner.pause("hung__v2")
        assert v.drop("hung", 2, principal="ops", reason="test")["dropped"] == "hung__v2"
        assert time.monotonic() - t0 < 4.0, "drop waited for the hung handler"
        assert "hung__v2" not in r.runner.states and {x["instance"] for x in v.versions()} == {"balances", "hung"}
        Hung.release.set()  # the handler returns: its batch does not commit, its loop ends
        thread.join(10)
        assert not thread.is_alive()
        con = r.runner.read_model.con
        assert con.execute("SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'hung__v2'").fetchall() == [(0,)]
        assert con.execute("SELECT count(*) FROM es_actors.checkpoints WHERE projection = 'hung__v2'").fetchall() == [(0,)]
        r.runner.wait_for("hung", r.heads(), timeout_s=10)  # the one left carries on
        assert table(r.runner, "hung") == bank.expected
    finally:
        r.close()
