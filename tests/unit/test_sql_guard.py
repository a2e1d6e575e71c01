"""The SQL kind's optimistic path (es_actors.read.readmodel.sql_kind): rows of a type the
projection does not consume but that has upcasters are final at their current version (left
out in the scan); at an older version they still send the batch to the full path."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from es_actors import DomainRegistry, StoreConfig
from es_actors.examples.bank import BankAccount
from es_actors.examples.bank_projections import DailyTotals
from es_actors.read.readmodel import ReadModel
from es_actors.storage.layout import StoreLayout
from es_actors.storage.local.follower import LogFollower
from es_actors.write.partition import Partition
from es_actors.write.protocol import CommandEnvelope

REGISTRY = DomainRegistry([BankAccount])


def _item(aid: str, name: str, payload: dict[str, Any]) -> CommandEnvelope:
    return CommandEnvelope("BankAccount", aid, uuid.uuid4().hex, name, json.dumps(payload))


def _sealed_batch(layout: StoreLayout, registry: DomainRegistry, items: list[CommandEnvelope]) -> Any:
    writer = Partition(layout, 0, registry, StoreConfig(lock_timeout_s=0))
    assert all(r.error is None for r in writer.handle_batch(items))
    writer.seal()
    writer.close()
    batch = LogFollower(layout, 0, 0).poll()
    assert batch is not None and batch.table is None  # sealed: the SQL kind scans the files
    return batch


def test_current_rows_of_an_unconsumed_type_with_upcasters_stay_on_the_optimistic_path(tmp_path: Path) -> None:
    layout = StoreLayout(tmp_path / "store")
    items = [_item(f"a{i}", "OpenAccount", {"owner": f"o{i}"}) for i in range(3)]  # AccountOpened v2: has upcasters
    items += [_item(f"a{i}", "Deposit", {"amount": i + 1}) for i in range(3)]
    batch = _sealed_batch(layout, REGISTRY, items)
    rm = ReadModel(layout.root, REGISTRY, [DailyTotals], database=":memory:", threads=1)
    try:
        cur, handler = rm.cursors[DailyTotals.name], rm.handlers[DailyTotals.name]
        assert not handler.needs_full_path(cur, DailyTotals, batch)
        cur.execute("BEGIN")
        assert handler.apply(cur, DailyTotals, batch, optimistic=True) == batch.count  # no guard error
        assert cur.execute("SELECT sum(deposited), sum(events) FROM daily_totals").fetchone() == (6, 3)
        cur.execute("ROLLBACK")
    finally:
        rm.close()


def test_older_rows_of_an_unconsumed_type_still_take_the_full_path(tmp_path: Path) -> None:
    from tests.projection_domains import LegacyBankAccount  # writes v1 rows of the bank's events

    layout = StoreLayout(tmp_path / "store")
    items = [_item(f"old-{i}", "LegacyOpen", {"owner": f"o{i}", "initial": 10 * i + 1}) for i in range(3)]
    batch = _sealed_batch(layout, DomainRegistry([LegacyBankAccount]), items)
    rm = ReadModel(layout.root, REGISTRY, [DailyTotals], database=":memory:", threads=1)
    try:
        assert rm.handlers[DailyTotals.name].needs_full_path(rm.cursors[DailyTotals.name], DailyTotals, batch)
        assert rm.apply(DailyTotals, batch) >= 3  # upcast: each legacy open carries its initial deposit
        cur = rm.con.cursor()
        assert cur.execute("SELECT sum(deposited) FROM daily_totals").fetchone() == (sum(10 * i + 1 for i in range(3)),)
    finally:
        rm.close()
