"""The write path as a user drives it: real local Ray, real files."""

from __future__ import annotations

import asyncio
import os
import threading
from datetime import datetime, timezone

import duckdb
import pytest

from es_actors import (
    Command,
    CommandIdReused,
    ConcurrencyError,
    EsActorsError,
    InvalidPayload,
    PayloadTooLarge,
    Store,
    Submission,
    UnknownAggregateType,
    UnknownCommand,
)
from es_actors.examples.bank import (
    AccountOpened,
    BankAccount,
    Deposit,
    InsufficientFunds,
    MoneyDeposited,
    OpenAccount,
    Withdraw,
)

# Every test that opens stores runs on local disk and on S3 (the local S3-compatible server).
BACKENDS = ("local", "s3")

# The stored columns, in order: users query them by name and position (DuckDB, Polars, Spark).
LOG_COLUMNS = [
    "partition", "position", "aggregate_type", "aggregate_id", "version", "event_type", "schema_version",
    "event_id", "command_id", "command_digest", "correlation_id", "causation_id", "principal", "recorded_at",
    "payload", "metadata",
]


class Teleport(Command):
    """A command BankAccount does not declare."""


def opened(store: Store, account: str = "a1"):
    acct = store.aggregate(BankAccount, account)
    acct.submit(OpenAccount(owner="ann"), expected_version=0)
    return acct


def test_submit_returns_version_events_and_positions(store):
    acct = opened(store)
    r = acct.submit(Deposit(amount=100), principal="alice", reason="salary", correlation_id="corr-1",
                    causation_id="cause-1", metadata={"channel": "web"})
    assert r.version == 2 and not r.duplicate
    [ev] = r.events
    assert ev.event == MoneyDeposited(amount=100)
    assert ev.version == 2 and ev.position >= 1 and ev.partition == store.partition_of("BankAccount", "a1")
    assert (ev.principal, ev.correlation_id, ev.causation_id) == ("alice", "corr-1", "cause-1")
    assert ev.metadata == {"channel": "web", "reason": "salary"}
    assert r.positions == ((ev.partition, ev.position),)


def test_state_and_history(store):
    acct = opened(store)
    acct.submit(Deposit(amount=70))
    acct.submit(Withdraw(amount=20))
    st = acct.state()
    assert (st.version, st.state.balance, st.state.owner) == (3, 50, "ann")
    hist = acct.history()
    assert [h.version for h in hist] == [1, 2, 3]
    assert [h.event_type for h in hist] == ["AccountOpened", "MoneyDeposited", "MoneyWithdrawn"]
    assert all(h.recorded_at.tzinfo is not None for h in hist)


def test_async_submit_future_and_awaitable(store):
    acct = opened(store)
    fut = acct.submit_async(Deposit(amount=5))
    assert fut.result(timeout=30).version == 2

    async def go():
        return await acct.asubmit(Deposit(amount=6), expected_version=2)

    assert asyncio.run(go()).version == 3
    assert acct.state().state.balance == 11


def test_expected_version_conflict_names_both_versions_and_writes_nothing(store):
    acct = opened(store)
    acct.submit(Deposit(amount=1))
    with pytest.raises(ConcurrencyError) as info:
        acct.submit(Deposit(amount=999), expected_version=1)
    assert (info.value.expected, info.value.actual) == (1, 2)
    assert "expected version 1" in str(info.value) and "current version is 2" in str(info.value)
    assert [h.version for h in acct.history()] == [1, 2]


def test_same_command_id_returns_the_original_result_and_appends_nothing(store):
    acct = opened(store)
    first = acct.submit(Deposit(amount=10), command_id="cmd-1")
    again = acct.submit(Deposit(amount=10), command_id="cmd-1", expected_version=1)  # stale version: still a retry
    assert again.duplicate and again.version == first.version
    assert [e.event_id for e in again.events] == [e.event_id for e in first.events]
    assert len(acct.history()) == 2 and acct.state().state.balance == 10


def test_reusing_a_command_id_for_another_command_is_an_error(store):
    acct = opened(store)
    acct.submit(Deposit(amount=10), command_id="cmd-2")
    with pytest.raises(CommandIdReused, match="cmd-2"):
        acct.submit(Deposit(amount=11), command_id="cmd-2")
    assert acct.state().state.balance == 10


def test_rejected_command_is_not_remembered_so_its_retry_is_decided_afresh(store):
    acct = opened(store)
    with pytest.raises(InsufficientFunds):
        acct.submit(Withdraw(amount=5), command_id="w-1")
    acct.submit(Deposit(amount=5))
    assert acct.submit(Withdraw(amount=5), command_id="w-1").version == 3


def test_idempotency_survives_an_actor_restart(store_factory):
    s = store_factory("restart", partitions=1)
    acct = opened(s)
    first = acct.submit(Deposit(amount=10), command_id="keep-me")
    s.close()
    s2 = store_factory("restart", partitions=1)  # new actors rebuild the dedup record from the log
    again = s2.aggregate(BankAccount, "a1").submit(Deposit(amount=10), command_id="keep-me")
    assert again.duplicate and again.version == first.version
    assert again.events[0].event_id == first.events[0].event_id
    with pytest.raises(CommandIdReused):
        s2.aggregate(BankAccount, "a1").submit(Deposit(amount=99), command_id="keep-me")


def test_dedup_window_is_bounded_per_aggregate(store_factory):
    s = store_factory("window", partitions=1, dedup_window=3)
    acct = opened(s)
    for i in range(5):
        acct.submit(Deposit(amount=1), command_id=f"d{i}")
    assert acct.submit(Deposit(amount=1), command_id="d4").duplicate  # still remembered
    assert not acct.submit(Deposit(amount=1), command_id="d0").duplicate  # forgotten: decided afresh


@pytest.mark.parametrize(
    "make, error",
    [
        (lambda s: s.aggregate(BankAccount, "a1").submit(Teleport()), UnknownCommand),
        (lambda s: s.aggregate(BankAccount, "a1").submit(Deposit.model_construct(amount=-5)), InvalidPayload),
        (lambda s: s.aggregate(BankAccount, "a1").submit(OpenAccount(owner="x" * 5000)), PayloadTooLarge),
        (lambda s: s.aggregate(BankAccount, "a1").import_events([AccountOpened(owner="y" * 5000)], expected_version=1), PayloadTooLarge),
        (lambda s: s.aggregate(BankAccount, "a1").submit(Withdraw(amount=10**9)), InsufficientFunds),
        (lambda s: s.aggregate("NoSuchAggregate", "a1"), UnknownAggregateType),
    ],
    ids=["unknown-command", "invalid-payload", "oversize-command", "oversize-import", "domain-error", "unknown-aggregate"],
)
def test_bad_commands_get_clear_errors_write_nothing_and_the_actor_keeps_serving(store_factory, make, error):
    s = store_factory("bad", partitions=1, max_event_bytes=1000)
    acct = opened(s)
    with pytest.raises(error):
        make(s)
    assert [h.version for h in acct.history()] == [1]
    assert acct.submit(Deposit(amount=1)).version == 2


def test_bulk_each_command_stands_alone_and_order_is_kept_per_aggregate(store):
    results = store.submit_many(
        [
            Submission(BankAccount, "b1", OpenAccount(owner="bo")),
            Submission(BankAccount, "b1", Deposit(amount=10)),
            Submission(BankAccount, "b1", Withdraw(amount=50)),  # overdraft: its own error
            Submission(BankAccount, "b1", Withdraw(amount=10)),
            Submission("NoSuchAggregate", "x", Deposit(amount=1)),
            (BankAccount, "b2", Deposit(amount=1)),  # not open
            Submission(BankAccount, "b1", Deposit(amount=3), expected_version=3),
        ]
    )
    assert [type(r).__name__ for r in results] == [
        "CommandResult", "CommandResult", "InsufficientFunds", "CommandResult",
        "UnknownAggregateType", "AccountNotOpen", "CommandResult",
    ]
    assert [r.version for r in results if not isinstance(r, EsActorsError)] == [1, 2, 3, 4]
    assert store.aggregate(BankAccount, "b1").state().state.balance == 3


def test_import_history_keeps_guarantees_and_original_time(store):
    acct = store.aggregate(BankAccount, "legacy")
    when = datetime(2018, 5, 4, 3, 2, 1, tzinfo=timezone.utc)
    r = acct.import_events([AccountOpened(owner="old"), MoneyDeposited(amount=40)], expected_version=0,
                           occurred_at=[when, when], command_id="import-1", principal="migrator")
    assert r.version == 2
    assert all(e.metadata["occurred_at"] == when.isoformat() for e in r.events)
    assert all(e.recorded_at > when for e in r.events)  # recorded_at is the append time
    assert acct.import_events([AccountOpened(owner="old"), MoneyDeposited(amount=40)], expected_version=0,
                              occurred_at=[when, when], command_id="import-1").duplicate
    with pytest.raises(ConcurrencyError):
        acct.import_events([MoneyDeposited(amount=1)], expected_version=0)
    with pytest.raises(InvalidPayload):
        acct.import_events([MoneyDeposited.model_construct(amount=-1)], expected_version=2)
    assert acct.state().state.balance == 40


@pytest.mark.local_only("reads the sealed glob of a local store (tests/test_s3_store.py reads S3 through sealed_dataset)")
def test_log_columns_are_the_public_contract_and_duckdb_reads_it_after_close(store_factory):
    s = store_factory("cols", partitions=2)
    acct = opened(s)
    acct.submit(Deposit(amount=9), principal="p")
    s.close()
    con = duckdb.connect()
    described = con.sql(f"DESCRIBE SELECT * FROM read_parquet('{s.sealed_glob}')").fetchall()
    assert [r[0] for r in described] == LOG_COLUMNS  # every column, in this order, nothing else
    types = {r[0]: r[1] for r in described}
    assert (types["partition"], types["schema_version"]) == ("INTEGER", "INTEGER")
    assert types["position"] == types["version"] == "BIGINT"
    assert types["recorded_at"] == "TIMESTAMP WITH TIME ZONE"
    assert {types[c] for c in LOG_COLUMNS if c not in ("partition", "schema_version", "position", "version",
                                                       "recorded_at")} == {"VARCHAR"}
    rows = con.sql(
        f"SELECT version, event_type, payload->>'amount', principal, typeof(recorded_at) "
        f"FROM read_parquet('{s.sealed_glob}') ORDER BY version"
    ).fetchall()
    assert rows == [(1, "AccountOpened", None, None, "TIMESTAMP WITH TIME ZONE"), (2, "MoneyDeposited", "9", "p", "TIMESTAMP WITH TIME ZONE")]


def test_concurrent_commands_share_durable_writes(store_factory):
    s = store_factory("group", partitions=1)
    ids = [f"g{i}" for i in range(32)]
    s.submit_many([Submission(BankAccount, a, OpenAccount(owner="g")) for a in ids])
    before = s.stats()[0]["durable_writes"]
    n_per = 10

    def work(a: str) -> None:
        for _ in range(n_per):
            s.aggregate(BankAccount, a).submit(Deposit(amount=1))

    threads = [threading.Thread(target=work, args=(a,)) for a in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writes = s.stats()[0]["durable_writes"] - before
    assert writes < len(ids) * n_per / 3, writes
    assert all(s.aggregate(BankAccount, a).state().state.balance == n_per for a in ids)


def test_partition_actors_run_at_normal_cpu_priority(store):
    """Ray starts workers at niceness 15; the store's server must not yield to every busy process."""
    for stats in store.stats():
        tasks = f"/proc/{stats['pid']}/task"
        if not os.path.isdir(tasks):
            pytest.skip("per-thread niceness is Linux's")
        assert {os.getpriority(os.PRIO_PROCESS, int(t)) for t in os.listdir(tasks)} == {0}


def test_read_only_store_reads_while_the_writer_runs(store_factory, store_uri):
    s = store_factory("ro", partitions=1)
    acct = opened(s)
    acct.submit(Deposit(amount=3))
    ro = Store.open(store_uri("ro"), read_only=True)
    assert [r[4] for r in ro.history_rows("BankAccount", "a1")] == [1, 2]
    with pytest.raises(EsActorsError, match="read-only"):
        Store.open(store_uri("ro"), [BankAccount], read_only=True).aggregate(BankAccount, "a1").submit(Deposit(amount=1))


def test_store_remembers_its_partition_count(store_factory, store_uri):
    s = store_factory("parts", partitions=3)
    s.close()
    with pytest.raises(EsActorsError, match="3 partitions"):
        Store.open(store_uri("parts"), [BankAccount], partitions=5)


def test_non_local_uri_is_refused_clearly(ray_session):
    with pytest.raises(EsActorsError, match="not supported yet"):
        Store.open("gcs://bucket/store", [BankAccount])


def test_the_ray_call_path_keeps_the_same_guarantees(store_factory):
    """Clients on another node send batches as Ray calls; direct_link=False forces that path."""
    s = store_factory("raypath", partitions=2, direct_link=False)
    acct = opened(s)
    first = acct.submit(Deposit(amount=10), command_id="rp-1")
    assert acct.submit(Deposit(amount=10), command_id="rp-1").duplicate
    with pytest.raises(ConcurrencyError):
        acct.submit(Deposit(amount=1), expected_version=1)
    results = s.submit_many([Submission(BankAccount, "a1", Deposit(amount=1)) for _ in range(50)])
    assert sorted(r.version for r in results) == list(range(first.version + 1, first.version + 51))
    assert s.stats()[s.partition_of("BankAccount", "a1")]["durable_writes"] < 50


def test_state_as_of_a_version_or_a_moment(store_factory, store_uri):
    s = store_factory("travel", partitions=1)
    acct = opened(s)
    r2 = acct.submit(Deposit(amount=10))
    acct.submit(Deposit(amount=5))
    assert acct.state_at(version=2).state.balance == 10
    assert acct.state_at(version=1).state.balance == 0 and acct.state_at(version=3).state.balance == 15
    when = r2.events[0].recorded_at
    assert (acct.state_at(as_of=when).version, acct.state_at(as_of=when).state.balance) == (2, 10)
    with pytest.raises(EsActorsError, match="no version 9"):
        acct.state_at(version=9)
    with pytest.raises(EsActorsError, match="timezone-aware"):
        acct.state_at(as_of=datetime(2030, 1, 1))
    ro = Store.open(store_uri("travel"), [BankAccount], read_only=True)  # no actor needed
    assert ro.aggregate(BankAccount, "a1").state_at(version=2).state.balance == 10


class _NoMallory:
    """A store policy (tests/unit/test_interceptors.py has the Ray-free cases)."""

    def intercept(self, envelope, context):
        from es_actors import CommandRefused

        if envelope.principal == "mallory":
            raise CommandRefused("mallory may not write")


@pytest.mark.parametrize("direct", [True, False])
def test_interceptors_given_to_store_open_run_in_the_partition_actor(store_factory, direct):
    """Both ways a batch reaches the actor (the direct link and Ray calls) pass the pipeline."""
    from es_actors import CommandRefused

    s = store_factory(f"intercepted-{direct}", partitions=1, interceptors=[_NoMallory()], direct_link=direct)
    acct = s.aggregate(BankAccount, "i-1")
    acct.submit(OpenAccount(owner="ann"), principal="alice")
    with pytest.raises(CommandRefused, match="_NoMallory refused command 'evil-1'"):
        acct.submit(Deposit(amount=5), principal="mallory", command_id="evil-1")
    assert acct.submit(Deposit(amount=1), principal="alice").version == 2
