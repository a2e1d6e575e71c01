"""Projections isolated from each other, and still joinable (ADR-017), against a real store.

Each projection runs on its own thread and cursor in the projector: a handler that hangs
stalls only its projection (the others keep their lag at 0 and their waits return), pause on
it returns promptly and nothing of its batch in flight commits, status names it as stalled;
after the hang ends and resume, it catches up exactly (equal to a replay). And since all read
models stay in the store's one DuckDB file, one query joins several projections' tables and
the ``events`` relation.
"""

from __future__ import annotations

import time
from typing import Any

from es_actors import Store
from es_actors.examples.bank import BankAccount, Deposit, Withdraw
from es_actors.examples.bank_projections import Balances, BalancesPy
from tests.projection_domains import flagged_projection
from tests.test_projections import checkpoints, heads, high_water, open_accounts, read_model, replay, status_of, wait_until


def moves(accounts: list[str], n: int) -> list[tuple[Any, str, Any]]:
    out: list[tuple[Any, str, Any]] = []
    for i in range(n):
        a = accounts[i % len(accounts)]
        out.append((BankAccount, a, Deposit(amount=7 + i) if i % 3 else Withdraw(amount=1)))
    return out


def statuses(store: Store, name: str) -> set[str]:
    return {r["status"] for r in status_of(store, name)}


def test_a_hung_handler_stalls_only_its_projection_and_pause_returns_promptly(store_factory, tmp_path):
    flag = tmp_path / "hang"
    flag.touch()  # while it exists, every batch of "hung" blocks in its handler (at most 60 s)
    hung = flagged_projection("hung", str(flag), mode="block")
    store = store_factory("iso", partitions=2, projections=[Balances, hung], projection_stall_s=1.0)
    try:
        accounts = [f"iso-{i}" for i in range(8)]
        results = open_accounts(store, accounts)
        results += store.submit_many(moves(accounts, 80))
        hw = high_water(results)

        store.wait_for("balances", hw, timeout=60)  # the healthy projection keeps up...
        wait_until(lambda: statuses(store, "hung") == {"stalled"}, 30, "the hung projection to show stalled")
        rows = status_of(store, "balances")
        assert {r["status"] for r in rows} == {"running"} and all(r["lag_events"] == 0 for r in rows), rows
        assert sum(r["lag_events"] for r in status_of(store, "hung")) > 0
        store.submit_many(moves(accounts, 20))  # ...and keeps up with what comes next
        hw = heads(store)
        store.wait_for("balances", hw, timeout=20)  # (one shared loop: stuck in the hung handler for 60 s)
        assert all(r["lag_events"] == 0 for r in status_of(store, "balances"))

        t0 = time.monotonic()
        store.pause("hung")
        assert time.monotonic() - t0 < 2.0, "pause waited for the hung handler"
        assert statuses(store, "hung") == {"paused"}
        frozen_rows, frozen_cps = read_model(store, "hung"), checkpoints(store, "hung")

        flag.unlink()  # the handler returns; its batch reaches the commit and is rolled back
        time.sleep(1.5)
        assert read_model(store, "hung") == frozen_rows and checkpoints(store, "hung") == frozen_cps

        store.resume("hung")
        store.wait_for("hung", hw, timeout=60)
        expected = replay(store)
        assert read_model(store, "balances") == expected == read_model(store, "hung")  # each event once
        assert statuses(store, "hung") == {"running"} == statuses(store, "balances")
    finally:
        flag.unlink(missing_ok=True)


def test_one_query_joins_two_projections_and_the_events_relation(store_factory):
    store = store_factory("join", partitions=2, projections=[Balances, BalancesPy])
    accounts = [f"join-{i}" for i in range(6)]
    results = open_accounts(store, accounts)
    results += store.submit_many(moves(accounts, 30))
    hw = high_water(results)
    for name in ("balances", "balances_py"):
        store.wait_for(name, hw, timeout=60)
    t = store.query("""
        SELECT b.account, b.balance, p.balance AS balance_py, b.events, count(e.position) AS logged
        FROM balances b JOIN balances_py p USING (account)
        JOIN events e ON e.aggregate_type = 'BankAccount' AND e.aggregate_id = b.account
        GROUP BY ALL ORDER BY b.account""")
    rows = t.to_pylist()
    assert [r["account"] for r in rows] == sorted(accounts)
    assert all(r["balance"] == r["balance_py"] and r["events"] == r["logged"] for r in rows), rows
    assert {(r["account"], r["balance"]) for r in rows} == {(a, bal) for a, _o, bal, _n, _v in replay(store)}
