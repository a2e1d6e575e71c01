"""The Ray-free half of ``store.dataset`` (es_actors.read.dataset_plan): the filters as checked and as
pushed down, rows brought to current versions with the version each was stored at (also for batches
of several partitions and split events), and the errors for bad input. Real files and DuckDB, no Ray."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pytest

from es_actors import Store
from es_actors.codecs.rows import rows_to_table
from es_actors.domain import DomainRegistry
from es_actors.errors import EsActorsError, UnknownAggregateType
from es_actors.examples.bank import AccountOpened, BankAccount, MoneyDeposited, OpenAccount
from es_actors.read.dataset_plan import DATASET_SCHEMA, EventFilter, current_rows, event_filter, plan_dataset
from es_actors.storage.layout import StoreLayout
from tests.test_schema_evolution import fixture_copy

REG = DomainRegistry([BankAccount])
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def row(partition: int, position: int, event_type: str, version: int, payload: dict, minutes: int = 0) -> tuple:
    at = T0 + timedelta(minutes=minutes)
    us = int((at - datetime(1970, 1, 1, tzinfo=timezone.utc)) / timedelta(microseconds=1))
    return (partition, position, "BankAccount", f"a{partition}", position, event_type, version, f"e{partition}-{position}",
            "c", "d", None, None, None, us, json.dumps(payload), "{}")


# Positions repeat across partitions: the stored version is found by (partition, position).
MIXED = rows_to_table([
    row(0, 1, "AccountOpened", 1, {"owner": "x"}),  # older: SQL upcaster
    row(0, 2, "MoneyDeposited", 2, {"amount": 5}),  # current
    row(1, 1, "AccountOpened", 2, {"owner": "y", "currency": "USD"}),  # current
    row(1, 2, "AccountOpenedWithDeposit", 1, {"owner": "y", "initial": 7}, minutes=5),  # older: a split, Python
    row(1, 3, "FundsDeposited", 1, {"amt": 3}, minutes=10),  # renamed, then MoneyDeposited v1 -> v2
])


def test_rows_become_current_events_keeping_the_stored_version_per_partition_and_position():
    out = current_rows(MIXED, REG, EventFilter())
    assert out.schema == DATASET_SCHEMA
    got = [(r["partition"], r["position"], r["event_type"], r["schema_version"], r["stored_schema_version"],
            json.loads(r["payload"])) for r in out.to_pylist()]
    assert got == [
        (0, 1, "AccountOpened", 2, 1, {"owner": "x", "currency": "EUR"}),
        (0, 2, "MoneyDeposited", 2, 2, {"amount": 5}),
        (1, 1, "AccountOpened", 2, 2, {"owner": "y", "currency": "USD"}),
        (1, 2, "AccountOpened", 2, 1, {"owner": "y", "currency": "EUR"}),  # the split's pieces, in order
        (1, 2, "MoneyDeposited", 2, 1, {"amount": 7}),
        (1, 3, "MoneyDeposited", 2, 1, {"amount": 3}),
    ]


def test_current_rows_pass_through_unchanged():
    current = MIXED.slice(1, 2)
    out = current_rows(current, REG, EventFilter())
    assert out.drop_columns(["stored_schema_version"]).equals(current)
    assert out.column("stored_schema_version").to_pylist() == [2, 2]


def test_filters_pushed_down_keep_what_may_become_a_wanted_event_then_the_exact_types():
    where = event_filter(REG, [MoneyDeposited], "BankAccount", T0 + timedelta(minutes=5))
    assert set(where.stored_types) >= {"MoneyDeposited", "FundsDeposited", "AccountOpenedWithDeposit"}
    stored = where.stored(MIXED)  # the as_of cut drops the FundsDeposited row (10 minutes)
    assert stored.column("position").to_pylist() == [1, 2, 1, 2]
    out = current_rows(stored, REG, where)
    assert [(r["partition"], r["position"], r["event_type"]) for r in out.to_pylist()] == [
        (0, 2, "MoneyDeposited"), (1, 2, "MoneyDeposited")]
    assert EventFilter().expression() is None and EventFilter().stored(MIXED) is MIXED


def test_as_of_is_compared_in_utc():
    plus_two = timezone(timedelta(hours=2))
    where = event_filter(REG, as_of=datetime(2026, 1, 1, 2, 5, tzinfo=plus_two))  # = T0 + 5 minutes
    assert where.stored(MIXED).num_rows == 4


@pytest.mark.parametrize("kwargs, error, message", [
    ({"event_types": ["MoneyDeposited", "Nope", "Gone"]}, EsActorsError, r"unknown event types \['Gone', 'Nope'\]"),
    ({"event_types": ["FundsDeposited"]}, EsActorsError, r"unknown event types \['FundsDeposited'\].*older stored names"),
    ({"event_types": []}, EsActorsError, "event_types is empty"),
    ({"event_types": [42]}, EsActorsError, "event_types holds 42"),
    ({"event_types": [OpenAccount]}, EsActorsError, "event_types holds"),
    ({"aggregate_type": "Nope"}, UnknownAggregateType, "unknown aggregate type 'Nope'"),
    ({"aggregate_type": 3}, EsActorsError, "aggregate_type must be an Aggregate class"),
    ({"as_of": datetime(2026, 1, 1)}, EsActorsError, "as_of must be timezone-aware"),
    ({"as_of": "2026-01-01"}, EsActorsError, "as_of must be a timezone-aware datetime"),
])
def test_bad_arguments_are_es_actors_errors_before_anything_is_read(tmp_path, kwargs, error, message):
    store = Store.open(fixture_copy(tmp_path), [BankAccount], read_only=True)
    with pytest.raises(error, match=message):
        store.dataset(**kwargs)


def test_event_types_take_classes_names_or_one_of_either():
    for types in ([AccountOpened, "MoneyDeposited"], AccountOpened, "AccountOpened"):
        assert event_filter(REG, types).event_types is not None
    assert event_filter(REG, [AccountOpened, "AccountOpened"]).event_types == ("AccountOpened",)


def test_a_store_opened_without_its_aggregates_is_refused(tmp_path):
    store = Store.open(fixture_copy(tmp_path), read_only=True)
    with pytest.raises(EsActorsError, match="open the store with its aggregates"):
        store.dataset()


def test_other_storage_backends_are_refused_like_the_rest_of_the_read_path(tmp_path):
    layout = StoreLayout.from_uri(f"blobdir://{tmp_path}/store")
    with pytest.raises(EsActorsError, match="datasets read local Parquet and tail files; not supported on blobdir"):
        plan_dataset(layout, 1, EventFilter())


def test_the_plan_pins_each_sealed_segment_and_the_filtered_tail(tmp_path):
    root = fixture_copy(tmp_path)
    layout = StoreLayout.from_uri(root)
    plan = plan_dataset(layout, Store.open(root, [BankAccount], read_only=True).descriptor.partitions, EventFilter())
    assert plan.tail.num_rows == 0 and sum(p.last - p.first + 1 for p in plan.pieces) == 23
    assert all(p.size_bytes > 0 and str(root) in p.path for p in plan.pieces)
    assert isinstance(plan.tail, pa.Table)
