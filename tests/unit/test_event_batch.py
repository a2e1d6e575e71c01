"""EventBatch (codecs.event_batch): a table of stored rows read as RecordedEvents slice by slice
gives exactly what reading each row on its own gives (RecordedEvent.from_row), whatever the
slices, the mix of current and older versions, splits and the event type filter; an unreadable
event raises the same UnreadableEvent, naming it, when its slice is read. No Ray, no files."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from es_actors import DomainRegistry
from es_actors.codecs.event_batch import EventBatch
from es_actors.codecs.rows import rows_to_table
from es_actors.codecs.views import RecordedEvent
from es_actors.domain.upcasting import UnreadableEvent
from es_actors.examples.bank import BankAccount

REGISTRY = DomainRegistry([BankAccount])

# (event_type, schema_version, payload): current rows, older ones upcast, one split in two
KINDS: list[tuple[str, int, dict[str, Any]]] = [
    ("MoneyDeposited", 2, {"amount": 5}),
    ("MoneyWithdrawn", 1, {"amount": 3}),
    ("AccountOpened", 2, {"owner": "o", "currency": "USD"}),
    ("AccountOpened", 1, {"owner": "old"}),
    ("MoneyDeposited", 1, {"amt": 7}),
    ("FundsDeposited", 1, {"amt": 9}),
    ("AccountOpenedWithDeposit", 1, {"owner": "w", "initial": 4}),  # reads as two events
]
TYPES = ["AccountOpened", "MoneyDeposited", "MoneyWithdrawn"]


def stored_rows(kinds: list[int], partition: int = 1) -> list[tuple[Any, ...]]:
    rows = []
    for n, k in enumerate(kinds):
        t, v, payload = KINDS[k]
        pos = 100 + n
        rows.append((partition, pos, "BankAccount", f"a-{k}", n + 1, t, v, f"e-{pos}", f"c-{pos}", "d", f"c-{pos}",
                     None, "alice" if n % 2 else None, 1_767_225_600_000_000 + n, json.dumps(payload), "{}"))
    return rows


def view(e: RecordedEvent) -> tuple[Any, ...]:
    return (e.partition, e.position, e.aggregate_type, e.aggregate_id, e.version, e.event, e.stored_schema_version,
            e.event_id, e.command_id, e.correlation_id, e.causation_id, e.principal, e.recorded_at_us, e.metadata)


def sliced(rows: list[tuple[Any, ...]], step: int, event_types: list[str] | None,
           window: int | None = None) -> tuple[list[Any], list[bool]]:
    batch = EventBatch(rows_to_table(rows), REGISTRY, event_types, window)
    out, simple = [], []
    for start in range(0, len(rows), step):
        events, s = batch.events(start, start + step)
        out.extend(events)
        simple.append(s)
    return out, simple


@settings(max_examples=60, deadline=None)
@given(kinds=st.lists(st.integers(0, len(KINDS) - 1), min_size=1, max_size=40), step=st.integers(1, 45),
       types=st.one_of(st.none(), st.lists(st.sampled_from(TYPES), min_size=1, unique=True)),
       window=st.one_of(st.none(), st.integers(1, 20)))
def test_slices_read_like_each_row_on_its_own(kinds: list[int], step: int, types: list[str] | None,
                                              window: int | None) -> None:
    rows = stored_rows(kinds)
    want = [e for r in rows for e in RecordedEvent.from_row(r, REGISTRY) if types is None or e.event_type in types]
    got, simple = sliced(rows, step, types, window)
    assert [view(e) for e in got] == [view(e) for e in want]
    assert got == want and [e.recorded_at for e in got] == [e.recorded_at for e in want]
    # a slice says it is simple only if each of its rows read as exactly one event
    for start, s in zip(range(0, len(rows), step), simple):
        if s:
            n = sum(1 for r in rows[start:start + step] for e in RecordedEvent.from_row(r, REGISTRY)
                    if types is None or e.event_type in types)
            assert n == len(rows[start:start + step])
    assert RecordedEvent.from_table(rows_to_table(rows), REGISTRY, types) == want


def test_a_slice_of_current_rows_builds_one_event_per_row() -> None:
    rows = stored_rows([0, 1, 2, 0, 1])
    batch = EventBatch(rows_to_table(rows), REGISTRY, window_rows=2)
    events, simple = batch.events(1, 4)
    assert simple and [e.position for e in events] == [101, 102, 103]
    assert [e.position for e in batch.events(0, 1)[0]] == [100] and batch.position(4) == 104  # back, and ahead


@pytest.mark.parametrize("bad", [{"amount": -1}, {"amount": 1, "extra": 2}, "not json"])
def test_an_unreadable_event_raises_naming_it_when_its_slice_is_read(bad: Any) -> None:
    rows = stored_rows([0, 1, 0, 0, 0, 1])
    r = list(rows[3])
    r[14] = bad if isinstance(bad, str) else json.dumps(bad)
    rows[3] = tuple(r)
    batch = EventBatch(rows_to_table(rows), REGISTRY, window_rows=2)
    assert [e.position for e in batch.events(0, 3)[0]] == [100, 101, 102]  # the slice before it reads
    with pytest.raises(UnreadableEvent, match=r"MoneyDeposited v2 at partition 1 position 103 \(BankAccount/a-0 "
                                              r"version 4\): payload does not validate"):
        batch.events(3, 6)
    with pytest.raises(UnreadableEvent, match="position 103"):
        RecordedEvent.from_table(rows_to_table(rows), REGISTRY)


def test_an_upcast_that_fails_names_the_event() -> None:
    rows = stored_rows([0, 4, 0])
    r = list(rows[1])
    r[14] = json.dumps({"amt": "many"})
    rows[1] = tuple(r)
    with pytest.raises(UnreadableEvent, match=r"MoneyDeposited v1 at partition 1 position 101 .*does not validate"):
        EventBatch(rows_to_table(rows), REGISTRY).events(0, 2)
