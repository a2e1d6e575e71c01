"""The partition jobs (snapshots, contract checks) and their CLI, on a real Ray, on local disk and
on the local S3-compatible server (every test runs on both)."""

from __future__ import annotations

import hashlib
import json
import random
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from es_actors import Store, Submission
from es_actors.cli import main
from es_actors.codecs.state import SnapshotFormat
from es_actors.storage.backends import blob_store_of
from es_actors.storage.local.snapshots import snapshot_dir
from es_actors.domain.upcasting import UnreadableEvent
from es_actors.examples.bank import BankAccount, Deposit, OpenAccount, Withdraw
from es_actors.jobs.contract_check import check_contracts
from es_actors.jobs.snapshots import build_snapshots
from tests.job_domains import Ledger, LedgerRenamed, LedgerV2, LedgerV2Buggy, Post


def write_bank_traffic(store: Store, accounts: int, commands: int, seed: int) -> dict[str, int]:
    """Open accounts, make random deposits, then withdraw 1 from each; returns the expected balances."""
    rng = random.Random(seed)
    ids = [f"acc-{i:03d}" for i in range(accounts)]
    store.submit_many([Submission(BankAccount, a, OpenAccount(owner=a)) for a in ids])
    balances = dict.fromkeys(ids, 0)
    subs = []
    for _ in range(commands):
        a = rng.choice(ids)
        subs.append(Submission(BankAccount, a, Deposit(amount=rng.randint(1, 100))))
    for s, r in zip(subs, store.submit_many(subs)):
        assert not isinstance(r, Exception), r
        balances[s.aggregate_id] += s.command.amount
    withdrawals = [Submission(BankAccount, a, Withdraw(amount=1)) for a in ids]
    store.submit_many([Submission(BankAccount, a, Deposit(amount=1)) for a in ids if balances[a] == 0])
    balances = {a: max(b, 1) for a, b in balances.items()}
    for s, r in zip(withdrawals, store.submit_many(withdrawals)):
        assert not isinstance(r, Exception), r
        balances[s.aggregate_id] -= 1
    return balances


def write_ledgers(store: Store, ledgers: int, posts: int) -> dict[str, int]:
    totals = dict.fromkeys((f"l{i}" for i in range(ledgers)), 0)
    subs = [Submission(Ledger, f"l{i % ledgers}", Post(amount=i + 1)) for i in range(posts)]
    for s, r in zip(subs, store.submit_many(subs)):
        assert not isinstance(r, Exception), r
        totals[s.aggregate_id] += s.command.amount
    return totals


BACKENDS = ("local", "s3")


def tree_digest(store: Store) -> dict[str, str]:
    """Every file (or object) of the store and its hash."""
    if not store.layout.scheme:
        root = store.root
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}
    blobs = blob_store_of(store.layout)
    pages = blobs.client.get_paginator("list_objects_v2").paginate(Bucket=blobs.bucket, Prefix=blobs.prefix)
    keys = sorted(o["Key"][len(blobs.prefix):] for page in pages for o in page.get("Contents", ()))
    return {k: hashlib.sha256(blobs.get(k)).hexdigest() for k in keys}


def snapshot_objects(store: Store) -> list[str]:
    """Every snapshot file (or object) of the store, whole or not."""
    if not store.layout.scheme:
        return [str(p) for p in store.root.glob("snapshots/*/*")]
    blobs = blob_store_of(store.layout)
    return [k for p in range(store.descriptor.partitions) for k in blobs.list(f"p{p:04d}/snaps/")]


def written_snapshot(store: Store, partition: int, written: str) -> pa.Table:
    """The snapshot group a job reported writing: a file in snapshots/pNNNN/, or an object's key."""
    if not store.layout.scheme:
        assert Path(written).parent == snapshot_dir(store.root, partition)
        return pq.read_table(written)
    assert written.startswith(f"p{partition:04d}/snaps/")
    return pq.read_table(pa.BufferReader(blob_store_of(store.layout).get(written)))


def lifecycle(store: Store) -> tuple[int, int]:
    stats = store.stats()
    return sum(s["snapshot_used"] for s in stats), sum(s["events_replayed"] for s in stats)


# -- snapshots ------------------------------------------------------------------------------

def test_snapshot_job_on_a_live_store_writes_snapshots_the_actors_use(store_factory):
    store = store_factory("bank", partitions=4)
    balances = write_bank_traffic(store, accounts=30, commands=300, seed=1)
    versions = {a: store.aggregate(BankAccount, a).state().version for a in balances}
    total_events = sum(versions.values())
    seen: list[dict] = []

    report = build_snapshots(store.layout.uri, [BankAccount], "BankAccount", progress=seen.append)  # store still open

    assert sorted(r["partition"] for r in seen) == [0, 1, 2, 3]  # one progress report per partition
    t = report.totals
    assert (t["events"], t["aggregates"], t["snapshotted"]) == (total_events, 30, 30)
    assert t["rows_read"] == total_events and t["partitions_failed"] == 0
    assert report.fingerprint == SnapshotFormat(store.registry).fingerprint("BankAccount")
    for r in report.partitions:  # one file per partition, holding exactly what the report says
        table = written_snapshot(store, r["partition"], r["file"])
        assert table.num_rows == r["snapshotted"]
        for aid, version in zip(table.column("aggregate_id").to_pylist(), table.column("version").to_pylist()):
            assert version == versions[aid] and store.partition_of("BankAccount", aid) == r["partition"]
        if "event_id" in table.column_names:  # the snapshot names its event by id too
            last = {aid: store.history("BankAccount", aid)[-1] for aid in table.column("aggregate_id").to_pylist()}
            assert table.column("event_id").to_pylist() == [last[a].event_id for a in table.column("aggregate_id").to_pylist()]
            assert table.column("position").to_pylist() == [last[a].position for a in table.column("aggregate_id").to_pylist()]

    used_before, replayed_before = lifecycle(store)
    assert store.passivate() > 0
    for a, balance in balances.items():
        got = store.aggregate(BankAccount, a).state()
        assert (got.version, got.state.balance) == (versions[a], balance)
    used, replayed = lifecycle(store)
    assert used - used_before == 30  # every account came back from the job's snapshot...
    assert replayed == replayed_before  # ...with no event left to replay

    # Again while commands keep arriving: up-to-date aggregates are skipped, the rest
    # snapshotted at whatever version was durable when read; the actors stay exact.
    stop = threading.Event()
    extra: dict[str, int] = dict.fromkeys(balances, 0)

    def keep_writing() -> None:
        rng = random.Random(2)
        while not stop.is_set():
            a = rng.choice(list(balances))
            store.aggregate(BankAccount, a).submit(Deposit(amount=3))
            extra[a] += 3

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        again = build_snapshots(store.layout.uri, [BankAccount], BankAccount, progress=False)
    finally:
        stop.set()
        writer.join()
    assert again.totals["aggregates"] == 30
    assert again.totals["snapshotted"] + again.totals["up_to_date"] + again.totals["unconfirmed"] == 30
    store.passivate()
    for a in balances:
        assert store.aggregate(BankAccount, a).state().state.balance == balances[a] + extra[a]
    assert lifecycle(store)[0] - used >= 30


def test_snapshot_job_upcasts_old_events_fails_on_unreadable_ones_and_a_fresh_open_hydrates_from_it(store_factory):
    old = store_factory("ledger", aggregates=(Ledger,), partitions=2)
    totals = write_ledgers(old, ledgers=6, posts=60)
    old.close()  # its actors stop: the next open starts new ones, which know nothing yet

    with pytest.raises(UnreadableEvent, match=r"stored event Entry v1 at partition \d position \d+ \(Ledger/l\d version 1\)"):
        build_snapshots(old.layout.uri, [LedgerRenamed], "Ledger", progress=False)
    assert not snapshot_objects(old)  # no file, not even a partial one

    report = build_snapshots(old.layout.uri, [LedgerV2], "Ledger", progress=False)  # the same log, read by v2 code
    assert (report.totals["events"], report.totals["snapshotted"]) == (60, 6)
    new = store_factory("ledger", aggregates=(LedgerV2,))
    for lid, total in totals.items():
        assert new.aggregate(LedgerV2, lid).state().state.total == total * 100  # upcast: amount -> cents
    assert sum(s["hydrations"] for s in new.stats()) == 6
    assert lifecycle(new) == (6, 0)  # every ledger came from the job's snapshot, no event replayed


def test_a_task_given_no_store_names_the_store_the_job_and_the_host(store_uri):
    import socket

    from es_actors.errors import EsActorsError
    from es_actors.jobs.contract_check import check_partition
    from es_actors.jobs.snapshots import snapshot_partition

    uri = store_uri("nothing-here")
    for run, what in ((lambda: snapshot_partition(uri, 0, [BankAccount], "BankAccount"), "snapshot job"),
                      (lambda: check_partition(uri, 0, [BankAccount]), "contract check")):
        with pytest.raises(EsActorsError) as err:
            run()
        assert what in str(err.value) and "nothing-here" in str(err.value) and socket.gethostname() in str(err.value)


# -- contract checks ------------------------------------------------------------------------

def test_contract_check_on_a_clean_store_counts_and_flags_unregistered_types(store_factory):
    store = store_factory("mixed", aggregates=(BankAccount, Ledger), partitions=2)
    balances = write_bank_traffic(store, accounts=12, commands=100, seed=3)
    write_ledgers(store, ledgers=4, posts=20)
    deposits = sum(s["next_position"] - 1 for s in store.stats()) - 12 - 12 - 20  # opens, withdrawals, posts

    report = check_contracts(store.layout.uri, [BankAccount, Ledger], progress=False)  # live store
    assert report.clean and report.failure_count == 0 and report.failures == []
    by_key = {(c["event_type"], c["schema_version"]): c for c in report.counts}
    assert by_key[("AccountOpened", 2)]["read"] == 12
    assert by_key[("MoneyDeposited", 2)]["read"] == deposits >= 100
    assert by_key[("MoneyWithdrawn", 1)]["read"] == 12
    assert by_key[("Entry", 1)]["read"] == 20
    assert report.events == 12 + deposits + 12 + 20 and report.upcast == 0
    assert report.aggregates_checked == 16 and not report.unregistered

    only_bank = check_contracts(store.layout.uri, [BankAccount], progress=False)
    assert only_bank.clean  # other types are reported, not failures...
    assert only_bank.unregistered["Ledger"]["events"] == 20
    assert only_bank.unregistered["Ledger"]["aggregates"] == 4
    assert not check_contracts(store.layout.uri, [BankAccount], progress=False, strict=True).clean  # ...unless strict


def test_contract_check_reports_each_failure_and_changes_nothing(store_factory):
    store = store_factory("contracts", aggregates=(Ledger,), partitions=2)
    write_ledgers(store, ledgers=5, posts=25)
    store.close()
    before = tree_digest(store)
    rows = store.sealed_dataset().to_table().to_pylist()
    assert len(rows) == 25

    broken = check_contracts(store.layout.uri, [LedgerRenamed], progress=False)
    assert not broken.clean and broken.failure_count == 25 == len(broken.failures)
    assert broken.failures_by_stage == {"decode": 25}
    expected = sorted((r["partition"], r["position"], r["aggregate_id"], r["version"]) for r in rows)
    assert sorted((f["partition"], f["position"], f["aggregate_id"], f["version"]) for f in broken.failures) == expected
    f = broken.failures[0]
    assert (f["aggregate_type"], f["event_type"], f["schema_version"], f["stage"]) == ("Ledger", "Entry", 1, "decode")
    assert f"position {f['position']}" in f["error"] and "cents" in f["error"] and "does not validate" in f["error"]
    assert {(c["event_type"], c["schema_version"]): (c["read"], c["failed"]) for c in broken.counts} == {("Entry", 1): (25, 25)}

    buggy = check_contracts(store.layout.uri, [LedgerV2Buggy], progress=False)
    assert buggy.upcast == 25 and buggy.failures_by_stage == {"evolve": 5}  # the first event of each ledger
    assert all(f["version"] == 1 and "TypeError" in f["error"] for f in buggy.failures)
    assert sorted(f["aggregate_id"] for f in buggy.failures) == [f"l{i}" for i in range(5)]

    good = check_contracts(store.layout.uri, [LedgerV2], progress=False)
    assert good.clean and good.upcast == 25 and good.counts == [
        {"event_type": "Entry", "schema_version": 1, "read": 25, "upcast": 25, "failed": 0}
    ]
    assert tree_digest(store) == before  # read-only: not a byte changed


# -- the command line -----------------------------------------------------------------------

@pytest.mark.local_only("the CLI passes --store (a path or URI) to the same jobs, whose S3 runs are above")
def test_cli_check_contracts_and_snapshot(store_factory):
    store = store_factory("cli", aggregates=(Ledger,), partitions=2)
    write_ledgers(store, ledgers=4, posts=16)
    runner = CliRunner()
    path = store.layout.uri

    ok = runner.invoke(main, ["check-contracts", "--store", path, "--aggregates", "tests.job_domains:Ledger"])
    assert ok.exit_code == 0, ok.output
    assert "clean" in ok.stdout and "Entry" in ok.stdout
    assert ok.stderr.count("checked:") == 2  # a progress line per partition

    bad = runner.invoke(main, ["check-contracts", "--store", path, "--aggregates", "tests.job_domains:LedgerRenamed"])
    assert bad.exit_code == 1, bad.output
    assert "FAILURES: 16" in bad.stdout and "does not validate" in bad.stdout
    as_json = runner.invoke(main, ["check-contracts", "--store", path, "--aggregates",
                                   "tests.job_domains:LedgerRenamed", "--json", "--quiet"])
    assert as_json.exit_code == 1
    data = json.loads(as_json.stdout)
    assert data["clean"] is False and data["failure_count"] == 16 and len(data["failures"]) == 16

    unknown = runner.invoke(main, ["check-contracts", "--store", path, "--aggregates", "tests.job_domains:Nope"])
    assert unknown.exit_code == 2 and "has no 'Nope'" in unknown.output

    snap = runner.invoke(main, ["snapshot", "Ledger", "--store", path, "--aggregates", "tests.job_domains:Ledger", "--json"])
    assert snap.exit_code == 0, snap.output
    data = json.loads(snap.stdout)
    assert data["totals"]["snapshotted"] == 4 and data["totals"]["events"] == 16
    table = runner.invoke(main, ["snapshot", "Ledger", "--store", path, "--aggregates", "tests.job_domains:Ledger"])
    assert table.exit_code == 0 and "up to date" in table.stdout and "total" in table.stdout
    store.passivate()
    assert store.aggregate(Ledger, "l0").state().state.entries == 4
    assert lifecycle(store)[0] >= 1

    failing = runner.invoke(main, ["snapshot", "Ledger", "--store", path, "--aggregates", "tests.job_domains:LedgerRenamed"])
    assert failing.exit_code == 1 and "UnreadableEvent: stored event Entry v1 at partition" in failing.output
