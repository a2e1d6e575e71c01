"""One bad command never fails others: every field of a command is checked, per command, in the
client and again in the partition actor; events are stored only if they read back; a closed
Store refuses at once; a joined Store detaches on close."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import duckdb
import pytest
import ray
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from es_actors import (
    Audit,
    CommandResult,
    ConcurrencyError,
    EsActorsError,
    InvalidPayload,
    PayloadTooLarge,
    Store,
    StoreClosed,
    StoreConfig,
    Submission,
    UserCodeError,
)
from es_actors.cli import main as cli
from es_actors.domain import DomainRegistry
from es_actors.write.envelope import validate_envelope
from es_actors.write.partition import Partition
from es_actors.write.protocol import CommandEnvelope
from es_actors.runtime.naming import find_partition_actors
from es_actors.storage.layout import StoreLayout
from es_actors.examples.bank import BankAccount, Deposit, MoneyDeposited, OpenAccount
from tests.validation_domains import Meter, Odd, Record


def deep(n: int) -> dict[str, Any]:
    d: dict[str, Any] = {}
    for _ in range(n):
        d = {"a": d}
    return d


MAX_EVENT_BYTES = 4096
EMOJI = "\U0001F600" * 1500  # 1500 characters, 6000 bytes of UTF-8: over 4096 bytes, under 4096 characters

# (field, bad value): each makes the command invalid on its own.
BAD_ENVELOPE: list[tuple[str, Any]] = [
    ("aggregate_id", "acc-\ud800"), ("aggregate_id", ""), ("aggregate_id", "x" * 300), ("aggregate_id", 5),
    ("aggregate_id", None),
    ("command_id", ""), ("command_id", 0), ("command_id", "\udfff"), ("command_id", "c" * 257), ("command_id", b"id"),
    ("expected_version", "1"), ("expected_version", True), ("expected_version", -1), ("expected_version", 1.0),
    ("expected_version", 2**64),
    ("principal", "\ud83d"), ("principal", 42), ("principal", b"alice"), ("principal", "p" * 257),
    ("correlation_id", "\udc00x"), ("correlation_id", 7), ("correlation_id", "😀" * 65),
    ("causation_id", "\ud800"), ("causation_id", ["x"]), ("causation_id", "c" * 1000),
    ("reason", "\udbff"), ("reason", 3.5), ("reason", "r" * 5000),
    ("metadata", deep(100_000)), ("metadata", deep(40)), ("metadata", {"x": float("nan")}),
    ("metadata", {"x": [1, float("inf")]}), ("metadata", {1: "int key"}), ("metadata", {"s": {1, 2}}),
    ("metadata", {"\ud800": 1}), ("metadata", {"v": "\udc80"}), ("metadata", {"big": "😀" * 20_000}),
    ("metadata", ["not", "a", "dict"]), ("metadata", "text"),
    ("aggregate", 42), ("aggregate", None),
    ("command", "Deposit"), ("command", {"amount": 1}), ("command", Deposit.model_construct(amount="\ud800")),
    ("command", OpenAccount(owner=EMOJI)), ("command", Deposit.model_construct(amount=2**70)),
]
AUDIT_FIELDS = ("principal", "correlation_id", "causation_id", "reason", "metadata")


def submission(account: str, field: str | None = None, bad: Any = None, n: int = 0) -> Submission:
    """A valid Deposit to ``account`` (open), or the same with one field replaced by ``bad``."""
    values: dict[str, Any] = dict(aggregate=BankAccount, aggregate_id=account, command=Deposit(amount=n + 1),
                                  expected_version=None, command_id=f"cmd-{account}-{n}-{time.monotonic_ns()}")
    audit = dict(principal="alice", correlation_id=f"corr-{n}", causation_id=None, reason="test",
                 metadata={"n": n, "tags": ["a", "ü"]})
    if field in AUDIT_FIELDS:
        audit[field] = bad
    elif field is not None:
        values[field] = bad
        if field == "command" and isinstance(bad, OpenAccount):
            values["aggregate_id"] = f"{account}-new"  # a new account: its OpenAccount is too large in bytes
    return Submission(**values, audit=Audit(**audit))


def assert_log_holds_exactly(store: Store, accounts: list[str], acked: dict[str, list[CommandResult]]) -> None:
    for a in accounts:
        events = [e for e in store.history("BankAccount", a) if e.event_type == "MoneyDeposited"]
        assert sorted(e.command_id for e in events) == sorted(r.command_id for r in acked.get(a, []))
        assert [e.version for e in store.history("BankAccount", a)] == list(range(1, len(events) + 2))


@pytest.fixture(scope="module")
def vstore(ray_session, tmp_path_factory):
    s = Store.open(tmp_path_factory.mktemp("validation") / "store", [BankAccount, Meter], partitions=2,
                   max_event_bytes=MAX_EVENT_BYTES)
    yield s
    s.close()


_accounts = iter(range(10**9))


def fresh_accounts(store: Store, n: int) -> list[str]:
    ids = [f"v{next(_accounts)}" for _ in range(n)]
    assert all(isinstance(r, CommandResult) for r in store.submit_many([(BankAccount, a, OpenAccount(owner="o")) for a in ids]))
    return ids


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
slots = st.lists(st.one_of(st.none(), st.sampled_from(range(len(BAD_ENVELOPE)))), min_size=1, max_size=8)


@SETTINGS
@given(slots=slots, direct=st.booleans())
def test_bad_submissions_fail_alone_and_the_log_holds_exactly_the_acknowledged(vstore, slots, direct):
    """submit_many with bad values in any field, mixed into valid commands on the same aggregates."""
    accounts = fresh_accounts(vstore, 2)
    subs = []
    for n, slot in enumerate(slots):
        field, bad = BAD_ENVELOPE[slot] if slot is not None else (None, None)
        subs.append(submission(accounts[n % 2], field, bad, n))
    results = (vstore.submit_many(subs) if direct
               else [_outcome(f) for f in vstore.submit_many_async(subs)])
    acked: dict[str, list[CommandResult]] = {}
    for slot, sub, r in zip(slots, subs, results):
        if slot is None:
            assert isinstance(r, CommandResult) and not r.duplicate, r
            acked.setdefault(sub.aggregate_id, []).append(r)
        else:
            assert isinstance(r, InvalidPayload), (BAD_ENVELOPE[slot][0], repr(r))
            assert BAD_ENVELOPE[slot][0].split("_")[0] in str(r) or BAD_ENVELOPE[slot][0] in ("command", "aggregate"), str(r)
    assert_log_holds_exactly(vstore, accounts, acked)


def _outcome(fut: Any) -> Any:
    try:
        return fut.result(timeout=60)
    except EsActorsError as exc:
        return exc


@SETTINGS
@given(slots=slots)
def test_bad_audit_keywords_fail_alone_through_the_handle(vstore, slots):
    """AggregateHandle.submit_async / submit with every keyword; bad ones get their error in their future."""
    [account] = fresh_accounts(vstore, 1)
    acct = vstore.aggregate(BankAccount, account)
    futures, expect_ok = [], []
    for n, slot in enumerate(slots):
        field, bad = BAD_ENVELOPE[slot] if slot is not None else (None, None)
        if field in ("aggregate", "aggregate_id"):
            field = None  # fixed by the handle
        kw: dict[str, Any] = dict(command_id=f"h-{account}-{n}", principal="p", correlation_id="c",
                                  causation_id="k", reason="r", metadata={"n": n})
        command: Any = Deposit(amount=1)
        if field == "command":
            command = bad
        elif field is not None:
            kw[field] = bad
        futures.append(acct.submit_async(command, **kw))
        expect_ok.append(field is None)
    acked = []
    for fut, ok in zip(futures, expect_ok):
        r = _outcome(fut)
        if ok:
            assert isinstance(r, CommandResult), repr(r)
            acked.append(r)
        else:
            assert isinstance(r, InvalidPayload), repr(r)
    assert_log_holds_exactly(vstore, [account], {account: acked})
    with pytest.raises(InvalidPayload, match="principal must be a string"):
        acct.submit(Deposit(amount=1), principal=0)  # 0 is not "no principal"


def test_command_id_is_never_replaced_and_expected_version_is_typed(vstore):
    [account] = fresh_accounts(vstore, 1)
    acct = vstore.aggregate(BankAccount, account)
    for bad in ("", 0):
        with pytest.raises(InvalidPayload, match="command_id"):
            acct.submit(Deposit(amount=1), command_id=bad)
    with pytest.raises(InvalidPayload, match="expected_version must be an int"):
        acct.submit(Deposit(amount=1), expected_version="1")
    with pytest.raises(ConcurrencyError):
        acct.submit(Deposit(amount=1), expected_version=5)
    assert acct.submit(Deposit(amount=1), expected_version=1).version == 2
    assert [e.version for e in acct.history()] == [1, 2]


# -- the actor-side check, without the client's ---------------------------------------------

def item(aid: str, n: int, /, **over: Any) -> Any:
    """A CommandEnvelope built by hand (past the client's check); ``as_tuple`` gives the old tagged tuple."""
    as_tuple = over.pop("as_tuple", False)
    fields: dict[str, Any] = dict(aggregate_type="BankAccount", aggregate_id=aid, command_id=f"raw-{aid}-{n}",
                                  command_type="Deposit", payload='{"amount":1}')
    fields.update(over)
    if as_tuple:
        return ("command", "BankAccount", aid, fields["command_id"], None, ("Deposit", '{"amount":1}'), None)
    return CommandEnvelope(**fields)


RAW_BAD = [
    dict(command_id=""), dict(command_id=0), dict(command_id="\ud800"), dict(aggregate_id="\udfff"),
    dict(expected_version="1"), dict(expected_version=True),
    dict(principal="\ud800"), dict(principal=42), dict(correlation_id="\udc00"),
    dict(causation_id=b"x"), dict(metadata={"x": float("inf")}), dict(reason="r" * 10**4),
    dict(metadata=deep(300)), dict(metadata=["principal"]),
    dict(payload='{"amount":"' + "😀" * 1500 + '"}'), dict(payload=b'{"amount":1}'), dict(command_type=None),
    dict(as_tuple=True),  # the tagged tuple of before: not a batch item any more
]


@pytest.mark.parametrize("path", ["ray-handle", "direct-link"])
def test_the_actor_checks_every_envelope_itself(store_factory, path):
    """Items sent straight to the partition actor, past the client's check: each bad one fails alone."""
    s = store_factory("raw", partitions=1, max_event_bytes=MAX_EVENT_BYTES, direct_link=path == "direct-link")
    s.aggregate(BankAccount, "r1").submit(OpenAccount(owner="r"))
    batch = []
    for n, over in enumerate(RAW_BAD):
        batch.append(item("r1", 2 * n))
        batch.append(item("r1", 2 * n + 1, **over))
    if path == "ray-handle":
        results = ray.get(s._actors[0].handle_batch.remote(batch))
    else:  # the same list of raw items over the actor's direct local link
        import pickle

        from es_actors.write.direct_link import connect

        _node, address, key, _cert = ray.get(s._actors[0].endpoint.remote())
        from es_actors.write.protocol import batch_to_wire, results_from_wire

        with connect(address, key) as conn:  # the link's wire form (plain tuples) both ways
            conn.send_bytes(pickle.dumps(batch_to_wire(batch)))
            tag, results = pickle.loads(conn.recv_bytes())
        assert tag == "ok"
        results = results_from_wire(results)
    assert [r.ok for r in results[0::2]] == [True] * len(RAW_BAD)
    for over, r in zip(RAW_BAD, results[1::2]):
        assert isinstance(r.error, InvalidPayload), (over, r)
    assert [e.version for e in s.aggregate(BankAccount, "r1").history()] == list(range(1, len(RAW_BAD) + 2))


def test_the_partition_checks_envelopes_without_ray(tmp_path):
    """The Ray-free partition: metadata 100,000 deep, lone surrogates, wrong types, duplicates too."""
    part = Partition(StoreLayout(tmp_path / "store"), 0, DomainRegistry([BankAccount]), StoreConfig(partitions=1))
    try:
        assert part.handle_batch([item("p1", 0, command_type="OpenAccount", payload='{"owner":"o"}')])[0].ok
        batch = [item("p1", 1), item("p1", 2, metadata=deep(100_000)), item("p1", 3, command_id="\ud800"),
                 item("p1", 1, expected_version="1"),  # a retry of an accepted id, with a bad field: refused too
                 item("p1", 4, principal="\ud83d"), item("p1", 5)]
        results = part.handle_batch(batch)
        assert [r.ok for r in results] == [True, False, False, False, False, True]
        assert all(isinstance(r.error, InvalidPayload) for r in results[1:5])
        assert "max_metadata_depth" in str(results[1].error) and "lone surrogate" in str(results[2].error)
        assert "expected_version" in str(results[3].error)
        assert part.get_state("BankAccount", "p1")[0] == 3
    finally:
        part.close()


def test_one_command_that_fails_while_being_written_fails_alone(tmp_path):
    """A row that passes every check but that the log cannot encode fails only its command."""
    part = Partition(StoreLayout(tmp_path / "store"), 0, DomainRegistry([Odd]), StoreConfig(partitions=1))
    try:
        cmd = lambda n, kind: CommandEnvelope("Odd", "o1", f"odd-{n}", "Record", f'{{"kind":"{kind}"}}')
        results = part.handle_batch([cmd(1, "ok"), cmd(2, "odd"), cmd(3, "ok")])
        assert [r.ok for r in results] == [True, False, True]
        assert isinstance(results[1].error, InvalidPayload) and "cannot be written" in str(results[1].error)
        assert part.get_state("Odd", "o1")[0] == 2
        assert [r[4] for r in part.log.read_positions(1, 2)] == [1, 2]
    finally:
        part.close()


def test_validate_envelope_is_one_model_for_client_and_actor():
    config = StoreConfig()
    ok = item("a", 0)
    assert validate_envelope(ok, config) == ok
    with pytest.raises(PayloadTooLarge, match="max_id_bytes"):
        validate_envelope(item("a", 0, command_id="é" * 200), config)  # 200 characters, 400 bytes
    with pytest.raises(InvalidPayload, match="metadata is not JSON"):
        validate_envelope(item("a", 0, metadata={"t": (1, object())}), config)


# -- events that cannot be read back are never acknowledged --------------------------------

@pytest.mark.parametrize(
    "kind, says",
    [("inf", "'Measured'.*value"), ("ok-then-inf", "'Measured'.*value"), ("nan-optional", "'MaybeMeasured'.*value"),
     ("too-long", "'Labelled'.*label"), ("surrogate", "'Labelled'"), ("constant", "'Constant'.*Infinity")],
)
def test_an_event_that_cannot_be_read_back_is_refused_and_the_aggregate_lives_on(vstore, kind, says):
    meter = vstore.aggregate(Meter, f"m-{kind}")
    results = vstore.submit_many([Submission(Meter, meter.aggregate_id, Record(kind=k)) for k in ("ok", kind, "ok")])
    assert isinstance(results[0], CommandResult) and isinstance(results[2], CommandResult)
    assert isinstance(results[1], InvalidPayload) and not isinstance(results[1], UserCodeError)
    assert re.search(says, str(results[1]), re.S), str(results[1])
    assert [e.version for e in meter.history()] == [1, 2]  # nothing of the refused command
    assert meter.submit(Record(kind="ok")).version == 3  # and the aggregate still reads and decides
    assert meter.state().version == 3


def test_any_exception_in_decide_fails_only_its_command(vstore):
    meter = vstore.aggregate(Meter, "m-exc")
    results = vstore.submit_many([Submission(Meter, "m-exc", Record(kind=k)) for k in ("ok", "recursion", "unicode", "ok")])
    assert [type(r).__name__ for r in results] == ["CommandResult", "UserCodeError", "UserCodeError", "CommandResult"]
    assert "RecursionError" in str(results[1]) and "UnicodeEncodeError" in str(results[2])
    assert [e.version for e in meter.history()] == [1, 2]


def test_bank_amounts_are_bounded(vstore):
    [account] = fresh_accounts(vstore, 1)
    acct = vstore.aggregate(BankAccount, account)
    with pytest.raises(InvalidPayload, match="amount"):
        acct.submit(Deposit.model_construct(amount=2**70))  # built past validation: the actor refuses it
    with pytest.raises(InvalidPayload, match="amount"):
        acct.import_events([MoneyDeposited.model_construct(amount=2**70)], expected_version=1)
    with pytest.raises(Exception, match="amount"):
        Deposit(amount=2**70)


# -- closing -----------------------------------------------------------------------------------

def gone(store: Store) -> bool:
    """The store's actors are stopped (Ray releases their names a moment after)."""
    deadline = time.monotonic() + 15
    while find_partition_actors(store.layout, store.descriptor):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_after_close_every_submit_path_refuses_at_once(store_factory):
    s = store_factory("closed", partitions=1)
    acct = s.aggregate(BankAccount, "c1")
    acct.submit(OpenAccount(owner="c"))
    queued = [acct.submit_async(Deposit(amount=1)) for _ in range(50)]
    s.close()
    assert all(f.done() for f in queued) and sum(f.result().version for f in queued) == sum(range(2, 52))
    t0 = time.monotonic()
    with pytest.raises(StoreClosed):
        acct.submit(Deposit(amount=1))
    with pytest.raises(StoreClosed):
        s.submit_many([(BankAccount, "c1", Deposit(amount=1))])
    fut = acct.submit_async(Deposit(amount=1))
    assert fut.done() and isinstance(fut.exception(), StoreClosed)
    assert all(isinstance(f.exception(), StoreClosed) for f in s.submit_many_async([(BankAccount, "c1", Deposit(amount=1))]))
    with pytest.raises(StoreClosed):
        asyncio.run(acct.asubmit(Deposit(amount=1)))
    with pytest.raises(StoreClosed):
        acct.import_events([MoneyDeposited(amount=1)], expected_version=51)
    assert time.monotonic() - t0 < 1.0
    assert [e.version for e in acct.history()] == list(range(1, 52))


def test_a_joined_client_detaches_on_close_and_shutdown_stops_the_actors(store_factory, tmp_path):
    first = store_factory("joined", partitions=2)
    first.aggregate(BankAccount, "j1").submit(OpenAccount(owner="j"))
    joined = Store.open(tmp_path / "joined", [BankAccount])
    joined.aggregate(BankAccount, "j1").submit(Deposit(amount=2))
    joined.close()  # detaches only
    with pytest.raises(StoreClosed):
        joined.aggregate(BankAccount, "j1").submit(Deposit(amount=1))
    assert first.aggregate(BankAccount, "j1").submit(Deposit(amount=3)).version == 3  # the actors still serve
    other = Store.open(tmp_path / "joined", [BankAccount])
    other.shutdown()  # explicit: stops the actors for everyone, sealed
    assert gone(first)
    sealed = duckdb.sql(f"SELECT count(*) FROM read_parquet('{first.sealed_glob}')").fetchall()[0][0]
    assert sealed == 3


def test_cli_stop_seals_and_stops_a_running_store(store_factory, tmp_path):
    s = store_factory("cli-stop", partitions=2)
    s.aggregate(BankAccount, "k1").submit(OpenAccount(owner="k"))
    result = CliRunner().invoke(cli, ["stop", "--store", str(tmp_path / "cli-stop")])
    assert result.exit_code == 0, result.output
    assert "stopped 2 partition actor(s)" in result.output
    assert gone(s)
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{s.sealed_glob}')").fetchall()[0][0] == 1
