"""The log as a Ray Dataset (issue 12): ``store.dataset(...)`` holds every event durable at the call
exactly once (sealed or still in the tail, also when a seal, a compaction and its garbage collection
move the files before the dataset runs), current event versions with the audit columns, the filters,
and an unreadable event failing the run by name (argument checks: tests/unit/test_dataset_plan.py).
Real stores, the session's Ray."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest

from es_actors import Store, upgrade_store
from es_actors.config import StoreConfig
from es_actors.domain import UnreadableEvent
from es_actors.examples.bank import AccountOpened, BankAccount, Deposit, MoneyDeposited, MoneyWithdrawn, OpenAccount, Withdraw
from es_actors.read.dataset_plan import DATASET_SCHEMA, EventFilter, plan_dataset
from es_actors.storage.local.backend import LocalBackend
from tests.domains import SlowCounter, Tick
from tests.test_schema_evolution import EXPECTED_HISTORY, fixture_copy, rewrite_row

pytestmark = pytest.mark.usefixtures("ray_session")


def rows_of(dataset) -> list[dict]:
    return sorted(dataset.take_all(), key=lambda r: (r["partition"], r["position"]))


def keys(rows) -> Counter:
    return Counter((r["partition"], r["position"]) for r in rows)


def history_of(store: Store, accounts, counters=()) -> list:
    events = [e for a in accounts for e in store.aggregate(BankAccount, a).history()]
    events += [e for c in counters for e in store.aggregate(SlowCounter, c).history()]
    return sorted(events, key=lambda e: (e.partition, e.position))


def write_bank(store: Store, accounts, deposits: int = 2) -> None:
    for a in accounts:
        h = store.aggregate(BankAccount, a)
        h.submit(OpenAccount(owner=a))
        for i in range(deposits):
            h.submit(Deposit(amount=10 + i))
        h.submit(Withdraw(amount=5))


def as_audit(e) -> tuple:
    """What a dataset row must say about a RecordedEvent."""
    return (e.partition, e.position, e.aggregate_type, e.aggregate_id, e.version, e.event_type,
            type(e.event).schema_version, e.stored_schema_version, e.event_id, e.command_id, e.correlation_id,
            e.causation_id, e.principal, e.recorded_at, e.event)


def row_audit(store: Store, r: dict) -> tuple:
    event = store.registry.events[r["event_type"]].model_validate_json(r["payload"])
    return (r["partition"], r["position"], r["aggregate_type"], r["aggregate_id"], r["version"], r["event_type"],
            r["schema_version"], r["stored_schema_version"], r["event_id"], r["command_id"], r["correlation_id"],
            r["causation_id"], r["principal"], r["recorded_at"], event)


# -- every event once --------------------------------------------------------------------------


def test_dataset_holds_each_durable_event_once_sealed_or_in_the_tail(store_factory):
    store = store_factory(aggregates=(BankAccount, SlowCounter), partitions=2)
    write_bank(store, ["a1", "a2", "a3"])
    store.admin.seal()
    write_bank(store, ["a4", "a5"])  # still in the tail
    for c in ("c1", "c2"):
        store.aggregate(SlowCounter, c).submit(Tick())
    plan = plan_dataset(store.layout, 2, EventFilter())
    assert plan.pieces and plan.tail.num_rows  # both kinds of source are in play

    ds = store.dataset()
    rows = rows_of(ds)
    expected = history_of(store, ["a1", "a2", "a3", "a4", "a5"], ["c1", "c2"])
    assert set(keys(rows).values()) == {1}
    assert sorted(row_audit(store, r) for r in rows) == sorted(as_audit(e) for e in expected)
    assert ds.schema().names == DATASET_SCHEMA.names
    assert rows_of(ds) == rows  # runs again: the same rows


def test_dataset_is_the_log_at_the_call_even_after_seal_compaction_and_gc(store_factory, tmp_path):
    """Every file the call listed is compacted away and collected before the dataset runs, and more events
    are written: the dataset still holds exactly the events durable at the call, each once."""
    store = store_factory(partitions=1, gc_grace_s=0.0, compact_min_run=1000)
    for batch in (["a1"], ["a2"], ["a3"]):
        write_bank(store, batch)
        store.admin.seal()  # one segment each, no compaction yet
    write_bank(store, ["a4"])  # in the tail at the call
    expected = history_of(store, ["a1", "a2", "a3", "a4"])
    plan = plan_dataset(store.layout, 1, EventFilter())
    assert len(plan.pieces) == 3 and plan.tail.num_rows == 4
    ds = store.dataset()

    store.close()  # seals the tail
    log = LocalBackend(store.layout.root).open_log(
        0, StoreConfig(compact_small_rows=10_000, compact_min_run=2, gc_grace_s=0.0))
    try:
        assert log.compact() == 4  # the three listed segments and the sealed tail: one file
    finally:
        log.close()
    assert not any(Path(p.path).exists() for p in plan.pieces)
    later = store_factory(partitions=1)
    write_bank(later, ["a5"])  # after the call: not in the dataset

    rows = rows_of(ds)
    assert set(keys(rows).values()) == {1}
    assert sorted(row_audit(store, r) for r in rows) == sorted(as_audit(e) for e in expected)


def test_an_empty_store_gives_an_empty_dataset(store_factory):
    store = store_factory(partitions=2)
    ds = store.dataset()
    assert ds.count() == 0 and ds.schema().names == DATASET_SCHEMA.names


# -- upcasting ------------------------------------------------------------------------------------


def test_rows_are_current_events_like_history_on_an_old_read_only_log(tmp_path):
    """The v1 fixture (renamed, split and older-version events, SQL and Python upcasters) read
    read-only: the dataset's rows are history()'s events with their audit columns."""
    store = Store.open(fixture_copy(tmp_path), [BankAccount], read_only=True)
    rows = rows_of(store.dataset())
    expected = history_of(store, EXPECTED_HISTORY)
    assert [row_audit(store, r) for r in rows] == [as_audit(e) for e in expected]  # a split event's pieces keep their order
    assert {r["stored_schema_version"] for r in rows} == {1}
    assert {(r["event_type"], r["schema_version"]) for r in rows} == {
        ("AccountOpened", 2), ("MoneyDeposited", 2), ("MoneyWithdrawn", 1)}


def test_event_types_filter_after_upcasting_classes_or_names(tmp_path):
    """MoneyDeposited includes what was stored as FundsDeposited and the deposit half of a split."""
    store = Store.open(fixture_copy(tmp_path), [BankAccount], read_only=True)
    deposits = [(aid, v, e) for aid, evs in EXPECTED_HISTORY.items() for (v, e) in evs if isinstance(e, MoneyDeposited)]
    for types in ([MoneyDeposited], ["MoneyDeposited"], MoneyDeposited, "MoneyDeposited"):
        rows = rows_of(store.dataset(event_types=types))
        got = sorted((r["aggregate_id"], r["version"], MoneyDeposited.model_validate_json(r["payload"])) for r in rows)
        assert got == sorted(deposits, key=lambda t: (t[0], t[1])), types
    both = rows_of(store.dataset(event_types=[AccountOpened, "MoneyWithdrawn"]))
    assert Counter(r["event_type"] for r in both) == Counter({"AccountOpened": 7, "MoneyWithdrawn": 7})


# -- filters --------------------------------------------------------------------------------------


def test_aggregate_type_and_as_of_filters(store_factory):
    store = store_factory(aggregates=(BankAccount, SlowCounter), partitions=2)
    write_bank(store, ["a1", "a2"])
    store.aggregate(SlowCounter, "c1").submit(Tick())
    store.admin.seal()
    write_bank(store, ["a3"])
    store.aggregate(SlowCounter, "c2").submit(Tick())
    everything = history_of(store, ["a1", "a2", "a3"], ["c1", "c2"])

    for atype in (SlowCounter, "SlowCounter"):
        rows = rows_of(store.dataset(aggregate_type=atype))
        assert sorted(row_audit(store, r) for r in rows) == sorted(
            as_audit(e) for e in everything if e.aggregate_type == "SlowCounter")

    cut = sorted(e.recorded_at for e in everything)[len(everything) // 2]
    rows = rows_of(store.dataset(as_of=cut))
    assert sorted(row_audit(store, r) for r in rows) == sorted(as_audit(e) for e in everything if e.recorded_at <= cut)
    assert rows_of(store.dataset(as_of=datetime(2000, 1, 1, tzinfo=timezone.utc))) == []

    rows = rows_of(store.dataset(event_types=[MoneyWithdrawn], aggregate_type=BankAccount, as_of=cut))
    assert sorted(row_audit(store, r) for r in rows) == sorted(
        as_audit(e) for e in everything if e.recorded_at <= cut and e.event_type == "MoneyWithdrawn")


def test_readme_example_per_account_totals(store_factory):
    """The README's example (groupby over a map_batches, to_pandas, iter_batches)."""
    import json

    store = store_factory(partitions=2)
    write_bank(store, ["a1", "a2"], deposits=3)
    deposits = store.dataset(event_types=[MoneyDeposited], as_of=datetime.now(timezone.utc))

    def amounts(df):  # a pandas batch; payload is the current event's JSON
        df["amount"] = [json.loads(p)["amount"] for p in df["payload"]]
        return df[["aggregate_id", "amount"]]

    by_account = deposits.map_batches(amounts, batch_format="pandas").groupby("aggregate_id", num_partitions=2)
    df = by_account.sum("amount").to_pandas()  # (two shuffle partitions instead of 200: a small store)
    assert dict(zip(df["aggregate_id"], df["sum(amount)"])) == {"a1": 33, "a2": 33}
    batches = list(deposits.iter_batches(batch_format="pyarrow", batch_size=100_000))
    assert sum(b.num_rows for b in batches) == 6


# -- what cannot be read (bad arguments: tests/unit/test_dataset_plan.py) -------------------------


def test_an_unreadable_stored_event_fails_the_run_naming_it(tmp_path):
    root = fixture_copy(tmp_path, upgrade=False)
    pos = rewrite_row(root, "acc-ann", 2, event_type="MysteryEvent")
    upgrade_store(root)
    store = Store.open(root, [BankAccount], read_only=True)
    with pytest.raises(UnreadableEvent, match=f"MysteryEvent v1 at partition 0 position {pos}"):
        store.dataset().take_all()
    assert len(rows_of(store.dataset(event_types=[MoneyWithdrawn]))) == 7  # a filter that never reads it
