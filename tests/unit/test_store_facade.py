"""The Store facade without Ray: time travel folds recorded events, bulk items fail one by one
with the error naming what is wrong, a read-only store refuses writes and admin calls, and the
CLI's argument errors and read-only commands behave as documented. Real files, no Ray."""

from __future__ import annotations

import json
from concurrent.futures import Future
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner

from es_actors import Store
from es_actors.cli import main as cli
from es_actors.codecs.rows import COLUMNS
from es_actors.codecs.views import RecordedEvent
from es_actors.domain import DomainRegistry
from es_actors.errors import EsActorsError, InvalidPayload, StoreClosed
from es_actors.examples.bank import Account, BankAccount, Deposit
from es_actors.storage.layout import StoreLayout
from es_actors.store import Audit, Submission
from es_actors.store.time_travel import fold_history_until

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _row(version: int, event_type: str, schema_version: int, payload: dict, at: datetime) -> tuple:
    """A stored row of BankAccount/a1 as the log holds it."""
    us = int((at - datetime(1970, 1, 1, tzinfo=timezone.utc)) / timedelta(microseconds=1))
    values = {
        "partition": 0, "position": version, "aggregate_type": "BankAccount", "aggregate_id": "a1",
        "version": version, "event_type": event_type, "schema_version": schema_version, "event_id": f"e{version}",
        "command_id": f"c{version}", "command_digest": "", "correlation_id": None, "causation_id": None,
        "principal": "alice", "recorded_at": us, "payload": json.dumps(payload), "metadata": "{}",
    }
    return tuple(values[c] for c in COLUMNS)


@pytest.fixture
def history() -> list[RecordedEvent]:
    """v1 is an old stored event that reads as two (opened + deposit of 100), then 50 in, 30 out."""
    registry = DomainRegistry([BankAccount])
    rows = [
        _row(1, "AccountOpenedWithDeposit", 1, {"owner": "alice", "initial": 100}, T0),
        _row(2, "MoneyDeposited", 2, {"amount": 50}, T0 + timedelta(minutes=1)),
        _row(3, "MoneyWithdrawn", 1, {"amount": 30}, T0 + timedelta(minutes=2)),
    ]
    return [e for r in rows for e in RecordedEvent.from_row(r, registry)]


def test_time_travel_folds_every_event_of_a_version(history):
    at, state = fold_history_until(BankAccount, history, version=1, name="BankAccount/a1")
    assert at == 1 and isinstance(state, Account) and state.balance == 100  # both events of the split row
    assert fold_history_until(BankAccount, history, version=3)[1].balance == 120
    assert fold_history_until(BankAccount, history, version=0) == (0, BankAccount.initial_state())


def test_time_travel_as_of_a_moment(history):
    assert fold_history_until(BankAccount, history, as_of=T0 + timedelta(seconds=90)) == (2, BankAccount.fold(
        [e.event for e in history[:3]]))
    assert fold_history_until(BankAccount, history, as_of=T0 - timedelta(seconds=1))[0] == 0


def test_time_travel_refuses_what_it_cannot_answer(history):
    with pytest.raises(EsActorsError, match="BankAccount/a1 has no version 4; its last is 3"):
        fold_history_until(BankAccount, history, version=4, name="BankAccount/a1")
    with pytest.raises(EsActorsError, match="exactly one of version= or as_of="):
        fold_history_until(BankAccount, history)
    with pytest.raises(EsActorsError, match="exactly one"):
        fold_history_until(BankAccount, history, version=1, as_of=T0)
    with pytest.raises(EsActorsError, match="timezone-aware"):
        fold_history_until(BankAccount, history, as_of=datetime(2026, 1, 1))


@pytest.fixture
def read_only(tmp_path) -> Store:
    """An empty store directory (store.json only) opened read-only: no Ray anywhere."""
    StoreLayout(tmp_path / "s").create_or_check(2, 2)
    store = Store.open(tmp_path / "s", [BankAccount], read_only=True)
    yield store
    store.close()


def test_audit_travels_only_when_it_says_something():
    assert Audit().as_meta() is None
    meta = Audit(principal="alice", metadata={"k": 1}).as_meta()
    assert meta == {"principal": "alice", "correlation_id": None, "causation_id": None, "reason": None,
                    "metadata": {"k": 1}}


def test_bulk_items_fail_alone_naming_what_is_wrong(read_only):
    results = read_only.submit_many([  # each is refused before anything is sent, so no actor is needed
        ("BankAccount", "a1", Deposit(amount=5), "one"),  # expected_version must be a number
        ("BankAccount", "a1"),  # too short
        Submission("BankAccount", "a1", Deposit(amount=5), audit="alice"),  # audit of the wrong type
        Submission("NoSuchAggregate", "a1", Deposit(amount=5)),
        Submission(BankAccount, "a1", "not a command"),
        Submission(BankAccount, "a1", Deposit(amount=5), audit=Audit(principal=0)),  # a principal must be text
    ])
    assert len(results) == 6 and all(isinstance(r, EsActorsError) for r in results)
    assert isinstance(results[0], InvalidPayload) and "expected_version" in str(results[0])
    assert isinstance(results[1], InvalidPayload) and "(aggregate, aggregate_id, command)" in str(results[1])
    assert isinstance(results[2], InvalidPayload) and "audit must be an Audit" in str(results[2])
    assert "NoSuchAggregate" in str(results[3])
    assert isinstance(results[4], InvalidPayload) and "str is not a Command" in str(results[4])
    assert isinstance(results[5], InvalidPayload) and "principal" in str(results[5])
    with pytest.raises(InvalidPayload, match="iterable of Submission"):
        read_only.submit_many(5)
    with pytest.raises(EsActorsError, match="open read-only"):  # a valid command needs the actors
        read_only.submit_many([("BankAccount", "a1", Deposit(amount=5))])


def test_a_read_only_store_reads_and_refuses_writes(read_only):
    acct = read_only.aggregate(BankAccount, "a1")
    assert acct.history() == [] and read_only.history_rows("BankAccount", "a1") == []
    assert acct.state_at(version=0).version == 0
    with pytest.raises(EsActorsError, match="has no version 1; its last is 0"):
        acct.state_at(version=1)
    with pytest.raises(EsActorsError, match="read-only"):
        acct.submit(Deposit(amount=5))
    fut = acct.submit_async(Deposit(amount=5))
    assert isinstance(fut, Future) and isinstance(fut.exception(), EsActorsError)
    with pytest.raises(EsActorsError, match="read-only stores offer history"):
        acct.state()
    with pytest.raises(EsActorsError, match="stats need an open"):
        read_only.admin.stats()
    with pytest.raises(EsActorsError, match="stats need an open"):
        read_only.stats()  # the older name delegates
    read_only.admin.seal()  # nothing to seal: no error
    with pytest.raises(EsActorsError, match="this needs the partition actors"):
        read_only.admin.hydrate()
    assert read_only.projections.running() is None  # no Ray connected: no projector is looked for
    with pytest.raises(EsActorsError, match="no projector runs"):
        read_only.projections.pause("balances")
    with pytest.raises(EsActorsError, match="no projector runs"):
        read_only.wait_for("balances", {0: 1})
    assert read_only.query("SELECT count(*) AS n FROM events").to_pylist() == [{"n": 0}]


def test_a_closed_store_sends_nothing(read_only):
    acct = read_only.aggregate(BankAccount, "a1")
    read_only.close()
    with pytest.raises(StoreClosed):
        acct.submit(Deposit(amount=5))
    with pytest.raises(StoreClosed):
        read_only.submit_many([("BankAccount", "a1", Deposit(amount=5))])
    assert isinstance(acct.submit_async(Deposit(amount=5)).exception(), StoreClosed)


@pytest.fixture
def runner(monkeypatch) -> CliRunner:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # never join a cluster from here
    return CliRunner()


def test_cli_reads_a_store_without_ray(runner, read_only):
    root = str(read_only.root)
    out = runner.invoke(cli, ["query", "SELECT count(*) AS n FROM events", "--store", root])
    assert out.exit_code == 0, out.output
    assert out.output.splitlines()[-1] == "(1 row)"
    out = runner.invoke(cli, ["query", "SELECT $n AS v", "-p", "n=5", "--json", "--store", root])
    assert out.exit_code == 0 and json.loads(out.output) == {"v": 5}
    out = runner.invoke(cli, ["status", "--store", root])
    assert out.exit_code == 0 and "no projections in" in out.output
    out = runner.invoke(cli, ["history", "BankAccount", "a1", "--store", root])
    assert out.exit_code == 1 and "no events for BankAccount/a1" in out.output


def test_cli_argument_errors_name_the_option(runner, read_only, tmp_path):
    root = str(read_only.root)
    out = runner.invoke(cli, ["query", "SELECT ?", "-p", "a=1", "-p", "2", "--store", root])
    assert out.exit_code == 2 and "NAME=VALUE" in out.output
    for command in (["snapshot", "BankAccount"], ["check-contracts"]):
        out = runner.invoke(cli, command + ["--store", root, "--aggregates", "no_colon_here"])
        assert out.exit_code == 2 and "--aggregates" in out.output and "module:Class" in out.output
    out = runner.invoke(cli, ["repair", "--store", root, "--accept"])
    assert out.exit_code == 2 and "--principal and --reason" in out.output
    out = runner.invoke(cli, ["query", "DROP TABLE events", "--store", root])
    assert out.exit_code == 1 and "QueryRefused" in out.output
    out = runner.invoke(cli, ["history", "BankAccount", "a1", "--store", str(tmp_path / "nothing")])
    assert out.exit_code == 1 and "not an es_actors store" in out.output and "Traceback" not in out.output
