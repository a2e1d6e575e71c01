"""The bank demo as a Ray job: ``python -m es_actors.jobs.demo [store]`` or ``ray job submit -- python -m es_actors.jobs.demo``.

Runs the example bank domain on a local store and prints what happened: commands
accepted and rejected (and why), a concurrency conflict, an idempotent retry, an import,
read-your-writes on a live DuckDB read model, its status, and final balances three ways:
from the actors, from the read model, and from plain DuckDB over the log.
"""

from __future__ import annotations

import random
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Callable

import duckdb

from es_actors import ConcurrencyError, EsActorsError, Store, Submission
from es_actors.runtime.naming import store_actor_prefix
from es_actors.examples.bank import AccountOpened, BankAccount, Deposit, MoneyDeposited, OpenAccount, Withdraw
from es_actors.examples.bank_projections import Balances

BALANCES_SQL = """
SELECT aggregate_id AS account,
       sum(CASE event_type WHEN 'MoneyDeposited' THEN (payload->>'amount')::BIGINT
                           WHEN 'MoneyWithdrawn' THEN -(payload->>'amount')::BIGINT ELSE 0 END) AS balance,
       max(version) AS version
FROM read_parquet('{glob}')
WHERE aggregate_type = 'BankAccount'
GROUP BY ALL ORDER BY account
"""


def run(store_path: str = "./demo-store", accounts: int = 10, commands: int = 2000, echo: Callable[[str], None] = print) -> dict[str, int]:
    started = time.perf_counter()
    store = Store.open(store_path, [BankAccount], projections=[Balances])
    echo(f"store: {store.root}  ({store.descriptor.partitions} partitions, Ray actors named "
         f"'{store_actor_prefix(store.layout, store.descriptor)}.partition-NNNN' and '.projector')")
    ids = [f"acc-{i:03d}" for i in range(1, accounts + 1)]
    outcomes: Counter[str] = Counter()

    # 1. Open accounts in one bulk call: each command gets its own result.
    for r in store.submit_many([Submission(BankAccount, a, OpenAccount(owner=f"owner of {a}")) for a in ids]):
        outcomes["accepted" if not isinstance(r, EsActorsError) else f"rejected: {type(r).__name__}"] += 1

    # 2. Random deposits and withdrawals from 8 concurrent clients; overdrafts are refused.
    rng = random.Random(7)
    work = [(rng.choice(ids), rng.random() < 0.6, rng.randint(1, 200)) for _ in range(commands)]

    def one(job: tuple[str, bool, int]) -> str:
        account, deposit, amount = job
        cmd = Deposit(amount=amount) if deposit else Withdraw(amount=amount)
        try:
            store.aggregate(BankAccount, account).submit(cmd, principal="demo", reason="random traffic")
            return "accepted"
        except EsActorsError as exc:
            return f"rejected: {type(exc).__name__}"

    with ThreadPoolExecutor(8) as pool:
        outcomes.update(pool.map(one, work))

    # 3. Optimistic concurrency: two clients both expect the same version; one wins.
    acct = store.aggregate(BankAccount, ids[0])
    v = acct.state().version
    acct.submit(Deposit(amount=5), expected_version=v)
    try:
        acct.submit(Deposit(amount=7), expected_version=v)
    except ConcurrencyError as exc:
        echo(f"conflict, as expected: {exc}")
        outcomes["rejected: ConcurrencyError"] += 1
    outcomes["accepted"] += 1

    # 4. Idempotency: the same command id twice appends once.
    cid = f"demo-retry-{int(time.time())}"
    first = acct.submit(Deposit(amount=1), command_id=cid)
    again = acct.submit(Deposit(amount=1), command_id=cid)
    echo(f"retry of command {cid}: version {first.version} then {again.version} (duplicate={again.duplicate})")
    outcomes["accepted"] += 1

    # 5. Import history from another system; the original time goes to metadata.occurred_at.
    legacy = store.aggregate(BankAccount, f"legacy-{int(time.time())}")
    t0 = datetime(2019, 3, 1, tzinfo=timezone.utc)
    imported = legacy.import_events(
        [AccountOpened(owner="migrated"), MoneyDeposited(amount=1000)],
        expected_version=0, occurred_at=[t0, t0 + timedelta(days=1)], principal="importer",
    )
    echo(f"imported {len(imported.events)} events into {legacy.aggregate_id} (occurred_at {t0:%Y-%m-%d})")

    # 6. Read-your-writes: wait until the live read model has applied that command, then query it.
    store.wait_for("balances", imported, timeout=30)
    row = store.query(f"SELECT balance FROM balances WHERE account = '{legacy.aggregate_id}'").to_pylist()
    echo(f"read model after wait_for: {legacy.aggregate_id} balance {row[0]['balance']}")
    store.wait_for("balances", None, timeout=60)  # caught up with everything written so far
    read_model = {r["account"]: r["balance"] for r in store.query("SELECT account, balance FROM balances").to_pylist()}
    status = store.projection_status()
    echo("projection status: " + "; ".join(
        f"{r['projection']} p{r['partition']} at {r['checkpoint']}/{r['head']} {r['status']}" for r in status))

    states = {a: store.aggregate(BankAccount, a).state() for a in ids}
    stats = store.stats()
    commits = sum(s["durable_writes"] for s in stats)
    events = sum(s["next_position"] - 1 for s in stats)
    store.close()  # seals the tail: plain DuckDB now sees every event

    echo("\ncommands: " + ", ".join(f"{k}={n}" for k, n in sorted(outcomes.items())))
    echo(f"durable writes this run: {commits} group commits for the commands above; events in the log: {events}")
    rows = duckdb.execute(BALANCES_SQL.format(glob=store.sealed_glob)).fetchall()
    by_sql = {r[0]: r[1] for r in rows}
    echo("\naccount   balance (actor)  (read model)  (DuckDB over the log)  version")
    for a in ids:
        echo(f"{a}   {states[a].state.balance:>14}  {read_model.get(a, 0):>12}  {by_sql.get(a, 0):>21}  {states[a].version:>7}")
    mismatched = [
        a for a in ids if not (by_sql.get(a, 0) == read_model.get(a, 0) == states[a].state.balance)
    ]
    echo(f"\nthe log lives in {store.root}; read it with plain DuckDB:")
    echo(f"  SELECT * FROM read_parquet('{store.sealed_glob}') ORDER BY partition, position")
    echo(f"  es-actors history BankAccount {ids[0]} --store {store_path}")
    echo(f"  es-actors query \"SELECT * FROM balances ORDER BY balance DESC LIMIT 5\" --store {store_path}")
    echo(f"done in {time.perf_counter() - started:.1f}s" + (f"; MISMATCH for {mismatched}" if mismatched else ""))
    if mismatched:
        raise SystemExit(1)
    return dict(outcomes)


if __name__ == "__main__":
    run(sys.argv[1] if len(sys.argv) > 1 else "./demo-store")
