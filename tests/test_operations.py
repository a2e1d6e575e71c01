"""What operators rely on: backpressure, named actors, metrics, the CLI and the demo."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import pytest
import ray

from es_actors import DomainError, InvalidPayload, Overloaded, Submission, UserCodeError
from es_actors.runtime.naming import NAMESPACE
from es_actors.runtime.naming import actor_name
from es_actors.examples.bank import AccountAlreadyOpen, BankAccount, Deposit, MoneyDeposited, OpenAccount
from tests.domains import SlowCounter, Tick


def test_a_slow_partition_makes_submitters_wait_then_get_overloaded(store_factory):
    s = store_factory("slow", aggregates=(SlowCounter,), partitions=1, max_pending=4, max_batch=2, submit_timeout_s=0.3)
    counter = s.aggregate(SlowCounter, "c")
    first = counter.submit_async(Tick(delay_s=0.6))  # occupies the actor
    queued = [counter.submit_async(Tick()) for _ in range(4)]  # fills the queue to max_pending
    t0 = time.monotonic()
    with pytest.raises(Overloaded, match="max_pending=4"):
        counter.submit(Tick())
    assert time.monotonic() - t0 >= 0.25  # it waited for room before giving up
    assert first.result(timeout=30).version == 1
    assert sorted(f.result(timeout=30).version for f in queued) == [2, 3, 4, 5]
    assert counter.state().state.n == 5  # the refused command wrote nothing


def test_a_bulk_call_into_a_full_partition_reports_overload_per_command(store_factory):
    s = store_factory("slowbulk", aggregates=(SlowCounter,), partitions=2, max_pending=2, max_batch=1, submit_timeout_s=0.3)
    ids = [f"c{i}" for i in range(40)]
    slow = next(i for i in ids if s.partition_of("SlowCounter", i) == 0)
    busy = s.aggregate(SlowCounter, slow).submit_async(Tick(delay_s=0.8))  # partition 0 is busy...
    queued = [s.aggregate(SlowCounter, slow).submit_async(Tick()) for _ in range(2)]  # ...and its queue full
    others = [i for i in ids if s.partition_of("SlowCounter", i) == 1][:2]
    results = s.submit_many([Submission(SlowCounter, slow, Tick()), *[Submission(SlowCounter, o, Tick()) for o in others]])
    assert isinstance(results[0], Overloaded)
    assert [r.version for r in results[1:]] == [1, 1]  # the other partition's commands stand alone
    busy.result(timeout=30), [f.result(timeout=30) for f in queued]
    assert s.aggregate(SlowCounter, slow).state().state.n == 3


def test_partition_actors_have_readable_names(store):
    for p in range(store.descriptor.partitions):
        name = actor_name(store.layout, store.descriptor, p)
        assert name.startswith("store.") and name.endswith(f"partition-{p:04d}")
        assert ray.get(ray.get_actor(name, namespace=NAMESPACE).stats.remote())["partition"] == p


def test_write_path_metrics_reach_the_prometheus_endpoint(store):
    acct = store.aggregate(BankAccount, "m1")
    acct.submit(OpenAccount(owner="m"))
    acct.submit(Deposit(amount=1))
    with pytest.raises(AccountAlreadyOpen, match="account is already open"):  # counted as a rejection below
        acct.submit(OpenAccount(owner="again"))
    port = ray._private.worker.global_worker.node.metrics_export_port
    # exactly as the README names them: counters carry _total, histograms _bucket/_sum/_count
    wanted = ["ray_es_actors_commands_total", "ray_es_actors_rejections_total", "ray_es_actors_batch_size_bucket",
              "ray_es_actors_batch_ms_count", "ray_es_actors_unsealed_events", "ray_es_actors_client_call_ms_sum"]
    deadline, shown = time.monotonic() + 40, set()
    while time.monotonic() < deadline:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        shown = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if not line.startswith("#")}
        if all(w in shown for w in wanted) and 'kind="AccountAlreadyOpen"' in text:
            break
        time.sleep(2)
    missing = [w for w in wanted if w not in shown]
    assert not missing, missing
    assert 'kind="AccountAlreadyOpen"' in text


def test_demo_runs_and_the_log_agrees_with_the_actors(ray_session, tmp_path):
    from es_actors.jobs.demo import run

    lines: list[str] = []
    outcomes = run(str(tmp_path / "demo"), accounts=4, commands=200, echo=lines.append)
    assert outcomes["accepted"] > 150 and outcomes.get("rejected: ConcurrencyError") == 1
    text = "\n".join(lines)
    assert "duplicate=True" in text and "MISMATCH" not in text and "read_parquet" in text


def test_history_cli_is_read_only_and_prints_audit_columns(store_factory, tmp_path):
    s = store_factory("cli", partitions=2)
    s.submit_many([Submission(BankAccount, "c1", OpenAccount(owner="cli")),
                   Submission(BankAccount, "c1", Deposit(amount=12))])
    # the store stays open (actors own the partitions) while another process reads it
    cmd = [sys.executable, "-m", "es_actors.cli", "history", "BankAccount", "c1", "--store", str(tmp_path / "cli"), "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["version"], r["event_type"]) for r in rows] == [(1, "AccountOpened"), (2, "MoneyDeposited")]
    assert rows[1]["payload"] == {"amount": 12} and rows[1]["command_id"]
    missing = subprocess.run(cmd[:5] + ["nobody"] + cmd[6:], capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0 and "no events for BankAccount/nobody" in missing.stderr


def test_a_bug_in_decide_is_a_clear_error_and_the_partition_keeps_serving(store_factory):
    s = store_factory("buggy", aggregates=(SlowCounter,), partitions=1)
    counter = s.aggregate(SlowCounter, "c")
    with pytest.raises(UserCodeError, match="ZeroDivisionError.*a bug in decide"):
        counter.submit(Tick(crash=True))
    assert counter.submit(Tick()).version == 1
    assert s.stats()[0]["rejections"] == {"UserCodeError": 1}


def test_awaiting_a_slow_command_times_out_with_an_unknown_outcome(store_factory):
    import asyncio

    from es_actors import CommandTimeout

    s = store_factory("await", aggregates=(SlowCounter,), partitions=1)
    counter = s.aggregate(SlowCounter, "c")
    with pytest.raises(CommandTimeout, match="resubmit with the same command_id"):
        asyncio.run(counter.asubmit(Tick(delay_s=1.0), command_id="slow-1", timeout=0.2))
    # the command was still applied once; resubmitting by id tells the outcome
    again = counter.submit(Tick(delay_s=1.0), command_id="slow-1")
    assert again.duplicate and again.version == 1


@pytest.mark.parametrize("direct_link", [True, False], ids=["direct-link", "ray-calls"])
def test_a_user_error_pickle_cannot_rebuild_fails_only_its_command(store_factory, direct_link):
    s = store_factory("refuse", aggregates=(SlowCounter,), partitions=1, direct_link=direct_link)
    results = s.submit_many([Submission(SlowCounter, "c", Tick()), Submission(SlowCounter, "c", Tick(refuse=True)),
                             Submission(SlowCounter, "c", Tick())])
    assert [getattr(r, "version", None) for r in results] == [1, None, 2]
    assert isinstance(results[1], DomainError) and "refused at 3: too many" in str(results[1])


def test_audit_fields_of_the_wrong_type_are_refused_and_sealing_goes_on(store_factory):
    s = store_factory("types", partitions=1)
    acct = s.aggregate(BankAccount, "t1")
    acct.submit(OpenAccount(owner="t"))
    with pytest.raises(InvalidPayload, match="principal must be a string"):
        acct.submit(Deposit(amount=1), principal=42)
    with pytest.raises(InvalidPayload, match="command_id must be a string"):
        acct.submit(Deposit(amount=1), command_id=7781)
    with pytest.raises(InvalidPayload, match="metadata is not JSON"):  # a later event's bad metadata
        acct.import_events([MoneyDeposited(amount=1), MoneyDeposited(amount=2)], expected_version=1,
                           occurred_at=[None, None], metadata={(1, 2): "tuple key"})
    assert acct.submit(Deposit(amount=5)).version == 2  # nothing half-written: version 2 is free
    s.seal()  # every stored row is sealable
    assert [h.version for h in acct.history()] == [1, 2]


def test_a_copied_store_directory_gets_its_own_actors(store_factory, tmp_path):
    """A copy of a store (same store id) opened beside its original must not share its actors:
    commands through the copy land in the copy's log only."""
    import shutil

    from es_actors.examples.bank import Deposit, OpenAccount

    original = store_factory("a/store", partitions=2)
    original.aggregate(BankAccount, "acc-1").submit(OpenAccount(owner="ann"))
    original.seal()
    shutil.copytree(tmp_path / "a" / "store", tmp_path / "b" / "store", symlinks=True,
                    ignore=shutil.ignore_patterns("LOCK", "*.wal"))
    copy = store_factory("b/store")
    copy.aggregate(BankAccount, "acc-1").submit(Deposit(amount=5))
    assert [e.event_type for e in copy.aggregate(BankAccount, "acc-1").history()] == ["AccountOpened", "MoneyDeposited"]
    assert [e.event_type for e in original.aggregate(BankAccount, "acc-1").history()] == ["AccountOpened"]
    assert original.aggregate(BankAccount, "acc-1").state().version == 1
