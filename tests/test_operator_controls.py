"""The operator's controls that go through Ray (issue 14): compaction asked of the running
partition actors (``store.admin.compact``, ``es-actors compact`` joining the cluster), and a
parallel backfill stopped on request (its Ray tasks cancelled, checkpoints kept) and resumed."""

from __future__ import annotations


from es_actors import Store, StoreConfig
from es_actors.examples.bank import BankAccount, Deposit, OpenAccount
from es_actors.jobs.backfill import backfill, backfill_status, stop_backfill
from es_actors.jobs.compaction import compact_store
from es_actors.read.backfill_tasks import BackfillStopped
from es_actors.storage.layout import StoreLayout, partition_of
from es_actors.storage.local.reader import read_partition_rows
from es_actors.storage.local.verify import verify_store
from es_actors.write.partition import Partition
from tests.test_backfill import sequential_replay
from tests.test_backfill_control import SlowPy, balances, start
from tests.test_integrity import ACCOUNTS, REGISTRY, cmd


def test_running_actors_compact_on_request(ray_session, tmp_path):
    root = tmp_path / "store"
    StoreLayout(root).create_or_check(2, 1)
    p = Partition(StoreLayout(root), 0, REGISTRY, StoreConfig(lock_timeout_s=0, compact_min_run=100))
    mine = [a for a in (f"acc-{i}" for i in range(40)) if partition_of("BankAccount", a, 2) == 0][:len(ACCOUNTS)]
    p.handle_batch([cmd(a, "OpenAccount", {"owner": a}) for a in mine])  # aggregates of partition 0 (verify checks)
    for _ in range(6):  # six small segments an earlier writer left (it never merged them)
        p.handle_batch([cmd(a) for a in mine])
        p.seal()
    p.close()
    rows = read_partition_rows(StoreLayout(root), 0)
    store = Store.open(root, [BankAccount])  # its actors merge runs of >= 4 small segments
    try:
        [r0, r1] = store.admin.compact()
        assert (r0["partition"], r0["segments_before"], r0["segments_after"]) == (0, 6, 1)
        assert r1["segments_before"] == r1["segments_after"]
        again = compact_store(root)  # this process is in the cluster: the running actors do it
        assert [c.by for c in again.partitions] == ["actor", "actor"]
        assert again.partitions[0].segments_before == again.partitions[0].segments_after == 1
        store.submit_many([(BankAccount, "fresh", OpenAccount(owner="o"))])
        assert verify_store(root).clean  # while the store runs
    finally:
        store.shutdown()
    assert read_partition_rows(StoreLayout(root), 0)[: len(rows)] == rows


def test_a_parallel_backfill_stops_on_request_and_resumes(ray_session, tmp_path):
    root = tmp_path / "store"
    store = Store.open(root, [BankAccount], partitions=2)
    try:
        store.submit_many([(BankAccount, f"b-{i}", OpenAccount(owner="o")) for i in range(8)])
        for _ in range(60):
            store.submit_many([(BankAccount, f"b-{i}", Deposit(amount=2)) for i in range(8)])
    finally:
        store.shutdown()
    t, outcome = start(root, parallelism=2)
    stopped = stop_backfill(root, "slow_py", 1)
    t.join(60)
    assert isinstance(outcome[0], BackfillStopped), outcome
    assert stopped.state == "stopped" and 0 < stopped.events_done < stopped.events_total == 488
    report = backfill(root, SlowPy, [BankAccount], parallelism=2, progress=False, checkpoint_events=20)
    assert report.tasks_resumed >= 1
    assert backfill_status(root, "slow_py").state == "installed"
    assert balances(root) == sequential_replay(root, SlowPy)["slow_py"]
