"""The projection runner without Ray: real partition logs and real DuckDB read-model files in
a temporary directory, driven step by step with a clock the test moves."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any, ClassVar, Sequence

import pytest

from es_actors.write.protocol import CommandEnvelope
from es_actors import DomainRegistry, StoreConfig
from es_actors.codecs.views import RecordedEvent
from es_actors.errors import EsActorsError, ProjectionHalted, ProjectionTimeout
from es_actors.examples.bank import BankAccount, MoneyDeposited
from es_actors.examples.bank_projections import Balances, BalancesPy, upsert_balance_deltas
from es_actors.read.projection import Projection, PythonProjection
from es_actors.read.readmodel import ProjectionHandler, ReadModel, register_kind
from es_actors.read.runner import ProjectionRunner
from es_actors.read.readmodel import committed_status
from es_actors.storage.local.range_reads import recorded_at_us
from es_actors.storage.local.reader import read_partition
from es_actors.storage.layout import StoreLayout, partition_of
from es_actors.write.partition import Partition

REGISTRY = DomainRegistry([BankAccount])
PARTITIONS = 2


class FakeClock:
    """Time moves only when the test says so; sleeping moves it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def wall_us(self) -> int:
        return int(self.now * 1e6)

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class BankLog:
    """Writes bank commands into a store's partition logs (the write path's Partition, no Ray)
    and keeps the balances a replay of them gives."""

    def __init__(self, root: Path) -> None:
        self.layout = StoreLayout(root)
        self.parts = [Partition(self.layout, i, REGISTRY, StoreConfig(lock_timeout_s=0)) for i in range(PARTITIONS)]
        self.expected: dict[str, dict[str, Any]] = {}

    def run(self, *commands: tuple[str, str, dict[str, Any]]) -> None:
        by_part: dict[int, list[CommandEnvelope]] = {}
        for aid, name, payload in commands:
            item = CommandEnvelope("BankAccount", aid, uuid.uuid4().hex, name, json.dumps(payload))
            by_part.setdefault(partition_of("BankAccount", aid, PARTITIONS), []).append(item)
        for part, items in by_part.items():
            for result, item in zip(self.parts[part].handle_batch(items), items):
                assert result.error is None and not result.duplicate, result
                aid, name, payload = item.aggregate_id, item.command_type, item.payload
                row = self.expected.setdefault(aid, {"owner": None, "balance": 0, "events": 0, "version": 0})
                amount = json.loads(payload).get("amount", 0)
                if name == "OpenAccount":
                    row["owner"] = json.loads(payload)["owner"]
                row["balance"] += -amount if name == "Withdraw" else amount
                row["events"] += 1
                row["version"] = result.version

    def open_accounts(self, n: int, prefix: str = "acc") -> list[str]:
        ids = [f"{prefix}{i}" for i in range(n)]
        self.run(*[(a, "OpenAccount", {"owner": a.upper()}) for a in ids])
        return ids

    def seal(self) -> None:
        for p in self.parts:
            p.seal()

    def close(self) -> None:
        for p in self.parts:
            p.close()


@pytest.fixture
def bank(tmp_path: Path):
    log = BankLog(tmp_path / "store")
    yield log
    log.close()


def runner_for(bank: BankLog, projections: Sequence[type[Projection]], clock: FakeClock | None = None,
               **config: Any) -> ProjectionRunner:
    return ProjectionRunner(
        bank.layout, PARTITIONS, REGISTRY, projections, StoreConfig(**config), clock=clock or FakeClock(),
        recorded_at=lambda part, pos: None,
    )


def drain(runner: ProjectionRunner, limit: int = 50) -> None:
    for _ in range(limit):
        if not runner.step():
            return
    raise AssertionError("the runner kept finding work")


def table(runner: ProjectionRunner, name: str) -> dict[str, dict[str, Any]]:
    cur = runner.read_model.con.cursor()
    rows = cur.execute(f"SELECT account, owner, balance, events, version FROM main.{name}").fetchall()
    return {a: {"owner": o, "balance": b, "events": e, "version": v} for a, o, b, e, v in rows}


def test_sql_and_python_projections_equal_replay_over_sealed_and_tail_events(bank):
    ids = bank.open_accounts(6)
    bank.run(*[(a, "Deposit", {"amount": 10 * (i + 1)}) for i, a in enumerate(ids)])
    bank.seal()  # these come as sealed batches (DuckDB scans the files) ...
    bank.run(*[(a, "Withdraw", {"amount": 3}) for a in ids], (ids[0], "Deposit", {"amount": 7}))  # ... these from the tail
    runner = runner_for(bank, [Balances, BalancesPy])
    drain(runner)
    assert table(runner, "balances") == bank.expected
    assert table(runner, "balances_py") == bank.expected
    runner.close()


def test_a_restarted_runner_resumes_from_its_checkpoints_and_applies_each_event_once(bank):
    ids = bank.open_accounts(4)
    runner = runner_for(bank, [Balances, BalancesPy])
    drain(runner)
    checkpoints = {r["partition"]: r["checkpoint"] for r in runner.status() if r["projection"] == "balances"}
    runner.close()
    bank.run(*[(a, "Deposit", {"amount": 5}) for a in ids])
    again = runner_for(bank, [Balances, BalancesPy])  # the same read-model file, as after a crash
    assert {r["partition"]: r["checkpoint"] for r in again.status() if r["projection"] == "balances"} == checkpoints
    drain(again)
    assert table(again, "balances") == bank.expected == table(again, "balances_py")
    again.close()


class Poisoned(PythonProjection):
    """Balances in Python; a deposit of 13 fails while ``broken`` is set."""

    name = "poisoned"
    event_types = BalancesPy.event_types
    setup = "CREATE TABLE poisoned (account VARCHAR PRIMARY KEY, owner VARCHAR, balance BIGINT, events BIGINT, version BIGINT)"
    max_attempts = 2
    retry_backoff_s = 0.5
    broken: ClassVar[bool] = True

    @classmethod
    def handle(cls, db: Any, events: Sequence[RecordedEvent]) -> None:
        for e in events:
            if cls.broken and isinstance(e.event, MoneyDeposited) and e.event.amount == 13:
                raise ValueError(f"poison deposit on {e.aggregate_id}")
        upsert_balance_deltas(db, cls.name, events)


class ParkingPoisoned(Poisoned):
    name = "parking"
    setup = Poisoned.setup.replace("poisoned", "parking")
    on_error = "park"


@pytest.fixture
def poison():
    Poisoned.broken = True
    yield
    Poisoned.broken = True


def test_a_failing_batch_is_retried_after_backoff_then_its_poison_event_parked(bank, poison):
    ids = bank.open_accounts(3)
    bank.run((ids[0], "Deposit", {"amount": 5}), (ids[1], "Deposit", {"amount": 13}), (ids[2], "Deposit", {"amount": 8}))
    clock = FakeClock()
    runner = runner_for(bank, [ParkingPoisoned], clock)
    runner.step()
    [first_try] = {r["status"] for r in runner.status()} - {"running"}
    assert first_try == "retrying"
    assert not runner.step()  # backing off: nothing is tried before its time
    clock.now += ParkingPoisoned.retry_backoff_s
    drain(runner)  # second failure: isolate, park the one event, apply the rest
    dead = runner.dead_letters("parking").to_pylist()
    assert [(d["aggregate_id"], d["event_type"]) for d in dead] == [(ids[1], "MoneyDeposited")]
    assert "poison deposit" in dead[0]["error"]
    got = table(runner, "parking")
    want = {a: dict(r) for a, r in bank.expected.items()}
    want[ids[1]].update(balance=0, events=1, version=1)  # everything but the parked deposit
    assert got == want
    assert {r["dead_letters"] for r in runner.status()} == {1}
    assert {r["status"] for r in runner.status()} == {"running"}
    assert {r["last_error"] for r in runner.status()} == {None}  # the error lives on in the dead letter

    Poisoned.broken = False  # the handler is fixed: the parked event applies on retry
    assert runner.retry_dead_letters("parking") == {"retried": 1, "applied": 1, "still_parked": 0}
    assert table(runner, "parking") == bank.expected
    assert runner.dead_letters("parking").num_rows == 0
    runner.close()


def test_a_halted_projection_names_its_event_and_waits_for_resume(bank, poison):
    ids = bank.open_accounts(2)
    bank.run((ids[0], "Deposit", {"amount": 13}))
    clock = FakeClock()
    runner = runner_for(bank, [Poisoned, Balances], clock)
    for _ in range(Poisoned.max_attempts):
        runner.step()
        clock.now += 10
    rows = {r["projection"]: r for r in runner.status() if r["partition"] == partition_of("BankAccount", ids[0], PARTITIONS)}
    assert rows["poisoned"]["status"] == "halted"
    assert "event MoneyDeposited" in rows["poisoned"]["last_error"] and ids[0] in rows["poisoned"]["last_error"]
    assert table(runner, "balances") == bank.expected  # the other projection carried on
    with pytest.raises(ProjectionHalted):
        runner.wait_for("poisoned", {0: 10**6, 1: 10**6}, timeout_s=0)
    Poisoned.broken = False
    runner.resume("poisoned")
    assert any(r["last_error"] for r in runner.status() if r["projection"] == "poisoned")  # until it recovers
    drain(runner)
    assert table(runner, "poisoned") == bank.expected
    assert {r["last_error"] for r in runner.status()} == {None}  # recovered: the error is gone
    runner.close()


def test_last_error_clears_after_a_successful_retry_and_after_a_fallen_back_catch_up(bank, poison):
    ids = bank.open_accounts(2)
    bank.run((ids[0], "Deposit", {"amount": 13}))
    clock = FakeClock()
    runner = runner_for(bank, [Poisoned], clock)
    runner.step()
    assert any(r["last_error"] for r in runner.status())  # the first try failed: retrying, error shown
    Poisoned.broken = False
    clock.now += Poisoned.retry_backoff_s
    drain(runner)
    assert {(r["status"], r["last_error"]) for r in runner.status()} == {("running", None)}
    # an error that came without a retry (e.g. a parallel catch-up that fell back) clears too
    runner.states["poisoned"].last_error = "parallel catch-up failed, catching up one batch after another"
    bank.run((ids[1], "Deposit", {"amount": 1}))
    drain(runner)
    assert {r["last_error"] for r in runner.status()} == {None}
    runner.close()


def test_pause_holds_the_read_model_and_checkpoint_also_across_a_restart(bank):
    ids = bank.open_accounts(2)
    runner = runner_for(bank, [Balances])
    runner.pause("balances")
    assert not runner.step()
    assert table(runner, "balances") == {}
    with pytest.raises(ProjectionTimeout):
        runner.wait_for("balances", {0: 1}, timeout_s=0)
    runner.close()
    again = runner_for(bank, [Balances])
    assert not again.step()
    assert {r["status"] for r in again.status()} == {"paused"}
    again.resume("balances")
    drain(again)
    assert table(again, "balances") == bank.expected
    bank.run((ids[0], "Deposit", {"amount": 4}))
    heads = {r["partition"]: r["head"] for r in again.status()}
    drain(again)
    assert again.wait_for("balances", {p: h for p, h in heads.items()}, timeout_s=0)
    again.close()


def test_status_reports_head_lag_and_stalled_when_no_progress(bank):
    bank.open_accounts(8)
    clock = FakeClock()
    runner = ProjectionRunner(
        bank.layout, PARTITIONS, REGISTRY, [Balances], StoreConfig(projection_stall_s=5), clock=clock,
        recorded_at=lambda part, pos: int((clock.now - 3) * 1e6),  # the oldest unapplied event is 3 s old
    )
    runner.refresh_heads()
    rows = runner.status()
    assert sum(r["head"] for r in rows) == 8 and all(r["lag_events"] == r["head"] for r in rows)
    assert {r["lag_seconds"] for r in rows if r["lag_events"]} == {3.0}
    assert {r["status"] for r in rows} == {"running"}
    clock.now += 6  # behind, and no progress for longer than projection_stall_s
    assert {r["status"] for r in runner.status() if r["lag_events"]} == {"stalled"}
    drain(runner)
    rows = runner.status()
    assert all(r["lag_events"] == 0 and r["lag_seconds"] == 0 and r["status"] == "running" for r in rows)
    assert sum(r["applied"] for r in rows) == 8
    runner.close()


def test_lag_seconds_count_from_the_oldest_unapplied_event_sealed_or_in_the_tail(bank):
    ids = bank.open_accounts(4)
    bank.seal()  # these are sealed ...
    bank.run(*[(a, "Deposit", {"amount": 1}) for a in ids])  # ... these in the write-ahead tail
    recorded = recorded_ats(bank)
    assert {(p, pos): recorded_at_us(bank.layout, p, pos) for p, pos in recorded} == recorded
    assert recorded_at_us(bank.layout, 0, 10**6) is None  # nothing there
    clock = FakeClock()
    clock.now = max(recorded.values()) / 1e6 + 100
    runner = ProjectionRunner(bank.layout, PARTITIONS, REGISTRY, [Balances], StoreConfig(), clock=clock)  # the real lookup
    runner.refresh_heads()
    rows = [r for r in runner.status() if r["lag_events"]]
    assert rows and all(r["lag_seconds"] == round(clock.now - recorded[(r["partition"], 1)] / 1e6, 3) for r in rows)
    drain(runner)
    bank.run(*[(a, "Deposit", {"amount": 2}) for a in ids])  # behind again, by events only in the tail
    runner.refresh_heads()
    recorded = recorded_ats(bank)
    clock.now = max(recorded.values()) / 1e6 + 50
    rows = [r for r in runner.status() if r["lag_events"]]
    assert rows and all(r["lag_seconds"] == round(clock.now - recorded[(r["partition"], r["checkpoint"] + 1)] / 1e6, 3)
                        for r in rows)
    runner.close()
    # without a projector, the committed status counts lag in seconds the same way
    stopped = [r for r in committed_status(bank.layout, PARTITIONS) if r["lag_events"]]
    assert stopped and all(r["lag_seconds"] is not None and r["lag_seconds"] >= 0 for r in stopped)
    assert all(r["lag_seconds"] == 0 for r in committed_status(bank.layout, PARTITIONS) if not r["lag_events"])


def recorded_ats(bank: BankLog) -> dict[tuple[int, int], int]:
    """(partition, position) -> recorded_at in µs of every event, as a full read shows them."""
    out = {}
    for p in range(PARTITIONS):
        t = read_partition(bank.layout, p)
        out.update({(p, pos): at for pos, at in zip(t.column("position").to_pylist(),
                                                   t.column("recorded_at").cast("int64").to_pylist())})
    return out


class EventCount(Projection):
    """A projection of a kind the library does not ship: counts events per type."""

    name = "event_count"
    kind = "count"
    event_types = Balances.event_types
    setup = "CREATE TABLE event_count (event_type VARCHAR PRIMARY KEY, n BIGINT)"


@register_kind
class CountHandler(ProjectionHandler):
    kind = "count"

    def apply(self, cur: Any, p: type[Projection], batch: Any, optimistic: bool = False) -> int:
        t = batch.to_table(["event_type"])
        cur.register("_counted", t)
        cur.execute(
            "INSERT INTO event_count SELECT event_type, count(*) FROM _counted GROUP BY ALL "
            "ON CONFLICT (event_type) DO UPDATE SET n = n + excluded.n"
        )
        return t.num_rows


def test_a_new_projection_kind_runs_through_its_registered_handler(bank):
    ids = bank.open_accounts(3)
    bank.run(*[(a, "Deposit", {"amount": 1}) for a in ids])
    runner = runner_for(bank, [EventCount])
    drain(runner)
    counts = dict(runner.read_model.con.cursor().execute("SELECT * FROM main.event_count").fetchall())
    assert counts == {"AccountOpened": 3, "MoneyDeposited": 3}
    runner.close()


def test_a_kind_without_a_handler_is_refused_naming_it(bank):
    class Unknown(EventCount):
        name = "unknown_kind"
        kind = "no-such-kind"

    with pytest.raises(EsActorsError, match="no-such-kind"):
        ReadModel(bank.layout.root, REGISTRY, [Unknown])


def test_sealed_rows_at_older_versions_read_as_current_events_in_sql_as_in_python(tmp_path):
    from tests.projection_domains import LegacyBankAccount  # writes v1 rows of the bank's events

    layout = StoreLayout(tmp_path / "store")
    legacy = DomainRegistry([LegacyBankAccount])
    writer = Partition(layout, 0, legacy, StoreConfig(lock_timeout_s=0))
    def item(aid: str, name: str, payload: dict[str, Any]) -> CommandEnvelope:
        return CommandEnvelope("BankAccount", aid, uuid.uuid4().hex, name, json.dumps(payload))

    items = [item(f"old-{i}", "LegacyOpen", {"owner": f"o{i}", "initial": 10 * i + 1}) for i in range(3)]
    items += [item(f"old-{i}", "LegacyDeposit", {"amt": i + 2}) for i in range(3)]
    assert all(r.error is None for r in writer.handle_batch(items))
    writer.seal()  # sealed: the SQL kind scans the files, guarded, then takes the upcasting path
    writer.close()
    runner = ProjectionRunner(layout, 1, REGISTRY, [Balances, BalancesPy], StoreConfig(), clock=FakeClock(),
                              recorded_at=lambda part, pos: None)
    drain(runner)
    sql, py = table(runner, "balances"), table(runner, "balances_py")
    assert sql == py
    assert {a: (r["owner"], r["balance"], r["events"]) for a, r in sql.items()} == {
        f"old-{i}": (f"o{i}", 10 * i + 1 + i + 2, 3) for i in range(3)  # the split counts as two events
    }
    assert {r["status"] for r in runner.status()} == {"running"}
    runner.close()


class UnluckySql(Balances):
    """Fails on a deposit of 13 in its own SQL: a failure that is the projection's, not the data's version."""

    name = "unlucky_sql"
    max_attempts = 1
    setup = "CREATE TABLE unlucky_sql (account VARCHAR, amount BIGINT)"
    apply = """INSERT INTO unlucky_sql SELECT aggregate_id, CASE WHEN (payload->>'amount')::BIGINT = 13
               THEN error('unlucky amount') ELSE (payload->>'amount')::BIGINT END FROM batch
               WHERE event_type = 'MoneyDeposited'"""


def test_a_sealed_sql_batch_that_fails_in_its_own_sql_halts_with_that_error(bank):
    ids = bank.open_accounts(2)
    bank.run((ids[0], "Deposit", {"amount": 13}))
    bank.seal()
    runner = runner_for(bank, [UnluckySql])
    drain(runner)
    [row] = [r for r in runner.status() if r["partition"] == partition_of("BankAccount", ids[0], PARTITIONS)]
    assert row["status"] == "halted"
    assert "unlucky amount" in row["last_error"] and "event MoneyDeposited" in row["last_error"]
    runner.close()
