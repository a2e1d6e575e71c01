"""Event schema evolution: logs written by older code stay readable, and are never rewritten.

`fixtures/bank-v1-store/` was written by version 1 of the bank domain
(`fixtures/legacy_bank.py`, through the real write path, then sealed) and is committed as
Parquet. These tests read it with the current domain (`es_actors/examples/bank.py`), whose upcasters
turn every v1 event into current events: on the actor's rehydration path, in history and
in time travel. Each test works on a copy of the fixture; the committed files are never opened
for writing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import Field

from es_actors import Aggregate, DomainRegistry, Event, Store, upgrade_store
from es_actors.storage.local.segments import file_crc32, parse_segment_name, segment_name
from es_actors.domain.upcasting import EventDecoder, StoredEvent, UnreadableEvent, Upcaster, upcaster
from es_actors.examples.bank import (
    Account,
    AccountOpened,
    BankAccount,
    Deposit,
    InsufficientFunds,
    MoneyDeposited,
    MoneyWithdrawn,
    OpenAccount,
    Withdraw,
)

FIXTURE = Path(__file__).parent / "fixtures" / "bank-v1-store"


def opened(owner: str) -> AccountOpened:
    return AccountOpened(owner=owner, currency="EUR")


def dep(amount: int) -> MoneyDeposited:
    return MoneyDeposited(amount=amount)


def wd(amount: int) -> MoneyWithdrawn:
    return MoneyWithdrawn(amount=amount)


# What legacy_bank.SCRIPT stored, read as the current events: (stored version, event).
# AccountOpenedWithDeposit (bob, cid, fay at version 1) reads as two events at one version.
EXPECTED_HISTORY = {
    "acc-ann": [(1, opened("ann")), (2, dep(100)), (3, dep(50)), (4, wd(30))],
    "acc-bob": [(1, opened("bob")), (1, dep(500)), (2, wd(200)), (3, dep(25))],
    "acc-cid": [(1, opened("cid")), (1, dep(80)), (2, wd(80)), (3, dep(10))],
    "acc-dee": [(1, opened("dee"))],  # its overdraft attempt was refused: nothing stored
    "acc-eve": [(1, opened("eve")), (2, dep(1000)), (3, wd(1)), (4, wd(2)), (5, dep(3)), (6, wd(400))],
    "acc-fay": [(1, opened("fay")), (1, dep(42))],
    "acc-gus": [(1, opened("gus")), (2, dep(7)), (3, dep(8)), (4, dep(9)), (5, wd(24))],
}
# Balances worked out by hand from legacy_bank.SCRIPT (version, balance):
# ann 100+50-30, bob 500-200+25, cid 80-80+10, eve 1000-1-2+3-400, fay 42, gus 7+8+9-24.
EXPECTED_BALANCE = {
    "acc-ann": (4, 120),
    "acc-bob": (3, 325),
    "acc-cid": (3, 10),
    "acc-dee": (1, 0),
    "acc-eve": (6, 600),
    "acc-fay": (1, 42),
    "acc-gus": (5, 0),
}


def fixture_copy(tmp_path: Path, name: str = "store", upgrade: bool = True) -> Path:
    """A copy of the format-1 fixture, upgraded to the current format (explicitly, as a user must)."""
    dest = tmp_path / name
    shutil.copytree(FIXTURE, dest, symlinks=True)  # keeps the `current` symlinks
    if upgrade:
        upgrade_store(dest)
    return dest


def segment_digests(root: Path) -> dict[str, str]:
    """Digest of each current segment, keyed by partition and position range (an upgrade adds
    the file's CRC-32 to its name but never changes its bytes)."""
    return {
        f"{p.parent.parent.name}/{p.name[:45]}": hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((root / "log").glob("p*/current/seg-*.parquet"))
    }


def expected_account(aid: str) -> Account:
    owner = aid.removeprefix("acc-")
    return Account(opened=True, owner=owner, currency="EUR", balance=EXPECTED_BALANCE[aid][1])


# -- the fixture itself ------------------------------------------------------------------------


def test_fixture_holds_only_v1_events_under_their_old_names():
    """A guard on the fixture: it really is what the old code stored (sealed Parquet only)."""
    rows = duckdb.sql(
        f"SELECT event_type, schema_version, count(*) FROM read_parquet('{FIXTURE}/log/*/current/*.parquet') "
        "GROUP BY ALL ORDER BY 1"
    ).fetchall()
    assert rows == [
        ("AccountOpened", 1, 4),
        ("AccountOpenedWithDeposit", 1, 3),
        ("FundsDeposited", 1, 9),
        ("MoneyWithdrawn", 1, 7),
    ]
    assert not list(FIXTURE.rglob("*.wal")) and not list(FIXTURE.rglob("LOCK"))


# -- reading old events as current ones --------------------------------------------------------


def test_history_reads_v1_events_as_current_events(tmp_path):
    """history() gives current event classes for every stored v1 event, with stored_schema_version 1."""
    store = Store.open(fixture_copy(tmp_path), [BankAccount], read_only=True)
    for aid, expected in EXPECTED_HISTORY.items():
        hist = store.aggregate(BankAccount, aid).history()
        assert [(h.version, h.event) for h in hist] == expected, aid
        assert all(h.stored_schema_version == 1 for h in hist)
        assert all(type(h.event).schema_version == (1 if isinstance(h.event, MoneyWithdrawn) else 2) for h in hist)


def test_split_event_keeps_its_version_position_and_audit(tmp_path):
    """One stored AccountOpenedWithDeposit reads as two events sharing its row: version, position, ids, audit."""
    store = Store.open(fixture_copy(tmp_path), [BankAccount], read_only=True)
    first, second, *_ = store.aggregate(BankAccount, "acc-bob").history()
    assert (first.event, second.event) == (opened("bob"), dep(500))
    assert (first.partition, first.position, first.version) == (second.partition, second.position, second.version)
    assert first.event_id == second.event_id and first.recorded_at == second.recorded_at
    for e in (first, second):
        assert (e.command_id, e.principal, e.correlation_id) == ("v1-cmd-04", "teller-2", "promo-2019")


def test_audit_columns_of_old_events_are_preserved(tmp_path):
    """principal, correlation_id and command_id read back as v1 stored them (correlation defaults to the command id)."""
    store = Store.open(fixture_copy(tmp_path), [BankAccount], read_only=True)
    ann = store.aggregate(BankAccount, "acc-ann").history()
    assert [(e.command_id, e.principal, e.correlation_id) for e in ann] == [
        ("v1-cmd-00", "teller-1", "branch-open-1"),
        ("v1-cmd-01", None, "v1-cmd-01"),
        ("v1-cmd-02", "atm-7", "v1-cmd-02"),
        ("v1-cmd-03", "atm-7", "cash-1"),
    ]
    eve = store.aggregate(BankAccount, "acc-eve").history()
    assert (eve[1].principal, eve[1].correlation_id) == ("payroll", "salary-03")


def test_state_at_version_folds_through_the_split_event(tmp_path):
    """Time travel on a read-only store upcasts too; version 1 of bob includes the split's deposit."""
    store = Store.open(fixture_copy(tmp_path), [BankAccount], read_only=True)
    bob = store.aggregate(BankAccount, "acc-bob")
    assert bob.state_at(version=1).state == Account(opened=True, owner="bob", currency="EUR", balance=500)
    assert [bob.state_at(version=v).state.balance for v in (1, 2, 3)] == [500, 300, 325]
    assert store.aggregate(BankAccount, "acc-cid").state_at(version=2).state.balance == 0
    fay = store.aggregate(BankAccount, "acc-fay").state_at(version=1)
    assert (fay.version, fay.state.balance) == (1, 42)


# -- the write path on an old log --------------------------------------------------------------


def test_actor_rehydrates_old_log_and_appends_current_versions(store_factory, tmp_path):
    """The owning actor rebuilds state from v1 events; new events are written at the current
    schema_version beside them; the old segment files stay byte-identical."""
    root = fixture_copy(tmp_path)
    before = segment_digests(root)
    assert before == segment_digests(FIXTURE)
    store = store_factory("store")
    for aid, (version, _balance) in EXPECTED_BALANCE.items():
        st = store.aggregate(BankAccount, aid).state()
        assert (st.version, st.state) == (version, expected_account(aid)), aid

    ann, bob = store.aggregate(BankAccount, "acc-ann"), store.aggregate(BankAccount, "acc-bob")
    r = ann.submit(Deposit(amount=5), expected_version=4, principal="v2-teller")
    assert (r.version, r.events[0].event, r.events[0].stored_schema_version) == (5, dep(5), 2)
    assert bob.submit(Withdraw(amount=325), expected_version=3).version == 4  # the whole upcast balance
    with pytest.raises(InsufficientFunds):
        bob.submit(Withdraw(amount=1))
    new = store.aggregate(BankAccount, "acc-new")
    assert new.submit(OpenAccount(owner="neo")).events[0].stored_schema_version == 2
    new.submit(Deposit(amount=9))

    # Mixed v1/v2 history: passivate so the next read replays it from the log.
    store.passivate()
    assert ann.state().state.balance == 125 and bob.state().state.balance == 0
    store.close()  # seals the new events into new segments

    raw = duckdb.sql(
        f"SELECT aggregate_id, version, event_type, schema_version, payload FROM read_parquet('{store.sealed_glob}') "
        "WHERE aggregate_id IN ('acc-ann', 'acc-bob', 'acc-new') ORDER BY aggregate_id, version"
    ).fetchall()
    assert [r for r in raw if r[0] == "acc-ann"][-1] == ("acc-ann", 5, "MoneyDeposited", 2, '{"amount":5}')
    assert [r for r in raw if r[0] == "acc-bob"][-1][2:4] == ("MoneyWithdrawn", 1)
    assert [r[1:4] for r in raw if r[0] == "acc-new"] == [(1, "AccountOpened", 2), (2, "MoneyDeposited", 2)]
    assert json.loads([r for r in raw if r[0] == "acc-new"][0][4]) == {"owner": "neo", "currency": "EUR"}
    assert [r[2:5] for r in raw if r[0] == "acc-ann"][:2] == [
        ("AccountOpened", 1, '{"owner":"ann"}'), ("FundsDeposited", 1, '{"amt":100}')
    ]
    after = segment_digests(root)
    assert {k: after.get(k) for k in before} == before  # stored events are never rewritten
    assert len(after) > len(before)
    history = Store.open(root, [BankAccount], read_only=True).aggregate(BankAccount, "acc-ann").history()
    assert [(h.version, h.stored_schema_version) for h in history] == [(1, 1), (2, 1), (3, 1), (4, 1), (5, 2)]


# -- what cannot be read is an error, never a skip ---------------------------------------------


def rewrite_row(root: Path, aggregate_id: str, version: int, **columns: str) -> int:
    """Edit one stored row of a fixture COPY in place (a damaged or foreign log); returns its position."""
    for seg in (root / "log").glob("p*/gen-*/seg-*.parquet"):
        table = pq.read_table(seg)
        rows = table.to_pylist()
        for row in rows:
            if row["aggregate_id"] == aggregate_id and row["version"] == version:
                row.update(columns)
                tmp = seg.with_name(".rewrite.tmp")
                pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), tmp)
                target = seg
                if parse_segment_name(seg).crc is not None:  # a well-formed file: its name carries its CRC
                    named = parse_segment_name(seg)
                    target = seg.with_name(segment_name(named.first, named.last, file_crc32(tmp)))
                    seg.unlink()
                os.replace(tmp, target)
                return row["position"]
    raise AssertionError(f"no row {aggregate_id} v{version}")


BROKEN = [
    pytest.param({"event_type": "MysteryEvent"}, "MysteryEvent v1", "no event class and no upcaster", id="unknown-type"),
    pytest.param({"payload": '{"amt": "not a number"}'}, "FundsDeposited v1", "does not validate", id="invalid-payload"),
]


@pytest.mark.parametrize("columns, names, why", BROKEN)
def test_unreadable_stored_event_is_a_clear_error_in_history(tmp_path, columns, names, why):
    """history(), state_at() and a subscription raise UnreadableEvent naming the event's type, version
    and position."""
    root = fixture_copy(tmp_path, upgrade=False)
    pos = rewrite_row(root, "acc-ann", 2, **columns)  # a well-formed log with a foreign row ...
    upgrade_store(root)  # ... that the upgrade vouches for as a file: its rows must still be refused
    store = Store.open(root, [BankAccount], read_only=True)
    ann = store.aggregate(BankAccount, "acc-ann")
    for read in (ann.history, lambda: ann.state_at(version=4), lambda: list(store.subscribe(follow=False)),
                 lambda: list(store.subscribe(order="merged", follow=False))):
        with pytest.raises(UnreadableEvent) as info:
            read()
        msg = str(info.value)
        assert names in msg and f"position {pos}" in msg and "acc-ann version 2" in msg and why in msg
    assert len(store.aggregate(BankAccount, "acc-eve").history()) == 6  # the rest of the log still reads


@pytest.mark.parametrize("columns, names, why", BROKEN)
def test_unreadable_stored_event_fails_its_aggregates_commands_only(store_factory, tmp_path, columns, names, why):
    """On a writable store, commands to that aggregate fail with UnreadableEvent (each time: nothing is
    skipped or cached); other aggregates, in the same partition too, keep working."""
    root = fixture_copy(tmp_path, upgrade=False)
    pos = rewrite_row(root, "acc-ann", 2, **columns)  # a well-formed log with a foreign row ...
    upgrade_store(root)  # ... that the upgrade vouches for as a file: its rows must still be refused
    store = store_factory("store")
    ann = store.aggregate(BankAccount, "acc-ann")
    for _ in range(2):
        with pytest.raises(UnreadableEvent) as info:
            ann.submit(Deposit(amount=1))
        assert names in str(info.value) and f"position {pos}" in str(info.value) and why in str(info.value)
    eve = store.aggregate(BankAccount, "acc-eve")
    assert store.partition_of("BankAccount", "acc-eve") == store.partition_of("BankAccount", "acc-ann")
    assert eve.submit(Deposit(amount=1), expected_version=6).version == 7
    assert store.aggregate(BankAccount, "acc-bob").state().state.balance == 325
    assert len(Store.open(root, [BankAccount], read_only=True).history_rows("BankAccount", "acc-ann")) == 4


# -- the decoder on its own (no Ray, no files) ---------------------------------------------------


class Thing(Event):
    """A toy event at v3: v1 {n}, v2 {count}, v3 {count, unit}."""

    schema_version = 3
    count: int = Field(ge=0)
    unit: str


class Other(Event):
    label: str


def decoder(*upcasters) -> EventDecoder:
    return EventDecoder({"Thing": Thing, "Other": Other}, list(upcasters))


trail: list[str] = []


@upcaster("Thing", from_version=1)
def thing_v1(p):
    trail.append("Thing v1")
    return {"count": p["n"]}


@upcaster("Thing", from_version=2)
def thing_v2(p):
    trail.append("Thing v2")
    return {**p, "unit": "pcs"}


@upcaster("OldThing", from_version=7)
def old_thing_v7(p):
    trail.append("OldThing v7")
    return [StoredEvent("Thing", 1, p)]


def test_decoder_chains_steps_in_order_until_current():
    """A renamed type at an old version walks every step: OldThing v7 -> Thing v1 -> v2 -> v3."""
    trail.clear()
    d = decoder(thing_v2, old_thing_v7, thing_v1)  # registration order does not matter
    assert d.decode("OldThing", 7, '{"n": 4}') == [Thing(count=4, unit="pcs")]
    assert trail == ["OldThing v7", "Thing v1", "Thing v2"]
    assert d.decode("Thing", 3, '{"count": 1, "unit": "kg"}') == [Thing(count=1, unit="kg")]  # current: no step
    assert trail == ["OldThing v7", "Thing v1", "Thing v2"]


def test_bank_upcasters_read_both_shapes_of_money_deposited_v1():
    """MoneyDeposited v1 was stored as {amt} (via FundsDeposited) and, by the first release of
    es_actors/examples/bank.py, as {amount}: both read as v2; anything else is an error, not a guess."""
    reg = DomainRegistry([BankAccount])
    assert reg.decode("FundsDeposited", 1, '{"amt": 5}') == [dep(5)]
    assert reg.decode("MoneyDeposited", 1, '{"amt": 6}') == [dep(6)]
    assert reg.decode("MoneyDeposited", 1, '{"amount": 7}') == [dep(7)]
    assert reg.decode("AccountOpened", 1, '{"owner": "x"}') == [opened("x")]
    with pytest.raises(UnreadableEvent, match="MoneyDeposited v1 at p 3: upcast to MoneyDeposited v2, the payload"):
        reg.decode("MoneyDeposited", 1, '{"sum": 8}', "p 3")


def test_split_keeps_the_order_of_its_pieces():
    """Each piece is upcast to the end before the next: the result keeps the split's order."""

    @upcaster("Pair", from_version=1)
    def pair(p):
        return [StoredEvent("Other", 1, {"label": "a"}), StoredEvent("Thing", 1, {"n": 2}), StoredEvent("Other", 1, {"label": "b"})]

    d = decoder(pair, thing_v1, thing_v2)
    assert d.decode("Pair", 1, "{}") == [Other(label="a"), Thing(count=2, unit="pcs"), Other(label="b")]
    reg = DomainRegistry([BankAccount])
    assert reg.decode("AccountOpenedWithDeposit", 1, '{"owner": "x", "initial": 3}') == [opened("x"), dep(3)]


def test_a_wide_split_is_not_mistaken_for_a_cycle():
    """The chain-length limit applies to each piece's chain, not to the sum over many pieces."""

    @upcaster("Batch", from_version=1)
    def batch(p):
        return [StoredEvent("Thing", 1, {"n": n}) for n in p["ns"]]

    d = decoder(batch, thing_v1, thing_v2)
    ns = list(range(3 * EventDecoder.MAX_STEPS))
    assert d.decode("Batch", 1, json.dumps({"ns": ns})) == [Thing(count=n, unit="pcs") for n in ns]


def test_missing_upcaster_for_an_older_version_is_an_error():
    with pytest.raises(UnreadableEvent, match=r"Thing v1 at here: no upcaster from Thing v1 \(current is v3\)"):
        decoder(thing_v2).decode("Thing", 1, '{"n": 1}', "here")
    with pytest.raises(UnreadableEvent, match=r"Thing v1.*no upcaster from Thing v2"):
        decoder(thing_v1).decode("Thing", 1, '{"n": 1}')  # the chain stops half-way


def test_version_newer_than_the_code_is_an_error():
    with pytest.raises(UnreadableEvent, match=r"Thing v4: Thing v4 is newer than this code's v3: written by newer code"):
        decoder(thing_v1, thing_v2).decode("Thing", 4, '{"count": 1, "unit": "kg", "colour": "red"}')


def test_unknown_type_and_bad_payloads_are_errors():
    with pytest.raises(UnreadableEvent, match="no event class and no upcaster for type 'Nope' v1"):
        decoder().decode("Nope", 1, "{}")
    with pytest.raises(UnreadableEvent, match="Thing v3: payload does not validate"):
        decoder().decode("Thing", 3, '{"count": -1, "unit": "kg"}')
    with pytest.raises(UnreadableEvent, match="Thing v1: payload is not JSON"):
        decoder(thing_v1, thing_v2).decode("Thing", 1, "{not json")
    with pytest.raises(UnreadableEvent, match="Thing v1: upcast to Thing v3, the payload does not validate"):
        decoder(thing_v1, thing_v2).decode("Thing", 1, '{"n": -5}')


def test_an_upcaster_that_raises_is_an_error_naming_it():
    with pytest.raises(UnreadableEvent, match="OldThing v7: upcaster Thing v1 failed: KeyError"):
        decoder(old_thing_v7, thing_v1, thing_v2).decode("OldThing", 7, '{"wrong": 1}')

    @upcaster("Thing", from_version=2)
    def returns_junk(p):
        return ["not a StoredEvent"]

    with pytest.raises(UnreadableEvent, match="upcaster Thing v2 failed: TypeError"):
        decoder(returns_junk).decode("Thing", 2, '{"count": 1}')


def test_a_cycle_of_renames_ends_with_an_error():
    @upcaster("Ping", from_version=1)
    def ping(p):
        return [StoredEvent("Pong", 1, p)]

    @upcaster("Pong", from_version=1)
    def pong(p):
        return [StoredEvent("Ping", 1, p)]

    with pytest.raises(UnreadableEvent, match=r"Ping v1: upcaster chain does not end \(a cycle\?\)"):
        decoder(ping, pong).decode("Ping", 1, "{}")


def test_two_upcasters_for_one_type_and_version_are_refused_up_front():
    """The registry refuses ambiguous upcasters when the store opens, not on first read."""

    @upcaster("Thing", from_version=1)
    def another_v1(p):
        return {"count": 0}

    class Counter(Aggregate[int]):
        events = (Thing,)
        upcasters = (thing_v1, thing_v2, another_v1)

    with pytest.raises(ValueError, match="two upcasters for 'Thing' v1"):
        DomainRegistry([Counter])

    @upcaster("Thing", from_version=3)
    def from_current(p):
        return p

    with pytest.raises(ValueError, match="not older than the current schema_version 3"):
        decoder(from_current)


def test_an_upcaster_that_returns_nothing_is_an_error():
    """A stored event is never dropped silently: an upcaster returning [] names the event."""
    dropper = Upcaster("Thing", 1, lambda p: [])
    with pytest.raises(UnreadableEvent, match=r"Thing v1 at here: upcaster Thing v1 failed: ValueError: it returned no events"):
        decoder(dropper).decode("Thing", 1, '{"n": 1}', "here")


def test_projections_read_the_v1_fixture_like_the_actors(store_factory, tmp_path):
    """Both projection kinds see old events upcast (the SQL kind through the upcasters' SQL
    forms, the split through Python) and agree with the actors' states, account by account."""
    from es_actors.examples.bank_projections import Balances, BalancesPy

    copy = fixture_copy(tmp_path, "v1-projected")
    store = store_factory(copy.name, projections=[Balances, BalancesPy])
    store.wait_for("balances", None, timeout=60)
    store.wait_for("balances_py", None, timeout=60)
    sql = {r["account"]: r["balance"] for r in store.query("SELECT account, balance FROM balances").to_pylist()}
    py = {r["account"]: r["balance"] for r in store.query("SELECT account, balance FROM balances_py").to_pylist()}
    actors = {a: store.aggregate(BankAccount, a).state().state.balance for a in sql}
    assert sql == py == actors
    assert sql == {a: balance for a, (_v, balance) in EXPECTED_BALANCE.items()}
