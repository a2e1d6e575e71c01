"""The Ray-free partition on a real temporary directory: decide, idempotency by command id,
hydration (one at a time and in bulk, with and without snapshots) and the one snapshot rule."""

from __future__ import annotations

import pytest

from es_actors import CommandIdReused, ConcurrencyError, DomainError
from es_actors.codecs.state import SnapshotFormat
from es_actors.domain import DomainRegistry
from es_actors.examples.bank import BankAccount
from es_actors.codecs.snapshot_rows import SnapshotRow
from es_actors.write.protocol import ImportedEvent, ImportEnvelope
from tests.unit.helpers import command, open_partition


def test_decide_appends_versions_and_positions_in_order_and_refusals_write_nothing(tmp_path):
    p = open_partition(tmp_path / "s")
    try:
        results = p.handle_batch([
            command("a", "OpenAccount"), command("a", payload={"amount": 5}),
            command("a", "Withdraw", {"amount": 100}),  # a business rule: refused alone
            command("a", expected_version=1),  # stale: the aggregate is at 2 by now
            command("b", "OpenAccount"),
        ])
        assert [r.ok for r in results] == [True, True, False, False, True]
        assert isinstance(results[2].error, DomainError) and isinstance(results[3].error, ConcurrencyError)
        assert [(r.version, [row[1] for row in r.rows]) for r in (results[0], results[1], results[4])] == [
            (1, [1]), (2, [2]), (1, [3])]
        assert p.get_state("BankAccount", "a")[1].balance == 5
        assert p.stats()["durable_writes"] == 1  # one batch, one durable write
    finally:
        p.close()


def test_a_retry_gets_the_first_result_and_a_reused_id_is_refused_also_after_a_restart(tmp_path):
    p = open_partition(tmp_path / "s")
    try:
        p.handle_batch([command("a", "OpenAccount")])
        first, again_in_batch = p.handle_batch([command("a", command_id="d-1"), command("a", command_id="d-1")])
        assert not first.duplicate and again_in_batch.duplicate
        assert (again_in_batch.version, again_in_batch.rows) == (first.version, first.rows)
    finally:
        p.close()
    p = open_partition(tmp_path / "s")  # the dedup record is read back from the log
    try:
        [retry] = p.handle_batch([command("a", command_id="d-1")])
        [reused] = p.handle_batch([command("a", payload={"amount": 9}, command_id="d-1")])
        assert retry.duplicate and retry.rows == first.rows
        assert isinstance(reused.error, CommandIdReused)
        assert p.get_state("BankAccount", "a")[0] == 2
    finally:
        p.close()


def test_an_import_is_one_command_and_its_retry_a_duplicate(tmp_path):
    p = open_partition(tmp_path / "s")
    try:
        events = [ImportedEvent("AccountOpened", '{"owner":"o"}', "2020-01-01T00:00:00"),
                  ImportedEvent("MoneyDeposited", '{"amount":3}')]
        [done] = p.handle_batch([ImportEnvelope("BankAccount", "imp", "imp-1", events, 0)])
        [retry] = p.handle_batch([ImportEnvelope("BankAccount", "imp", "imp-1", events, 0)])
        assert done.version == 2 and retry.duplicate and retry.rows == done.rows
    finally:
        p.close()


@pytest.mark.parametrize("snapshot_every", [None, 3])
def test_hydration_one_at_a_time_and_in_bulk_give_the_live_state(tmp_path, snapshot_every, monkeypatch):
    monkeypatch.setattr(BankAccount, "snapshot_every", snapshot_every)
    p = open_partition(tmp_path / "s", snapshot_flush_rows=1)
    try:
        p.handle_batch([command(f"a{i}", "OpenAccount") for i in range(4)])
        for n in range(5):
            p.handle_batch([command(f"a{i}", payload={"amount": n + i}) for i in range(4)])
        live = {i: p.get_state("BankAccount", f"a{i}") for i in range(4)}
        p.flush_snapshots(force=True)
    finally:
        p.close()
    p = open_partition(tmp_path / "s")
    try:
        assert p.passivate() == 0 and len(p.hydrated) == 0  # a restart hydrates nothing up front
        assert p.get_state("BankAccount", "a0") == live[0]  # one at a time
        assert p.hydrate_all() == 4  # the rest in bulk
        assert {i: p.get_state("BankAccount", f"a{i}") for i in range(4)} == live
        assert p.counts["snapshot_used"] == (4 if snapshot_every else 0)
    finally:
        p.close()


def test_a_snapshot_is_used_only_under_the_same_code_and_log():
    fmt = SnapshotFormat(DomainRegistry([BankAccount]))
    good = SnapshotRow("BankAccount", "a", 3, 12, fmt.fingerprint("BankAccount"), "json", b"{}", "ev-3")
    assert fmt.usable(good, 12, "ev-3")
    assert fmt.usable(good, 12)  # the event id left for a later check
    assert not fmt.usable(good, 13, "ev-3")  # another position at that version
    assert not fmt.usable(good, None)  # the log has no version 3 (the snapshot is ahead of it)
    assert not fmt.usable(good, 12, "ev-other")  # another event there (a restored or replaced log)
    assert not fmt.usable(good, 12, None)  # the event id could not be read: not used
    other_code = SnapshotRow("BankAccount", "a", 3, 12, "another-fingerprint", "json", b"{}", "ev-3")
    assert not fmt.usable(other_code, 12, "ev-3")
    unknown = SnapshotRow("Gone", "a", 3, 12, fmt.fingerprint("BankAccount"), "json", b"{}", "ev-3")
    assert not fmt.usable(unknown, 12, "ev-3")
    older_writer = SnapshotRow("BankAccount", "a", 3, 12, fmt.fingerprint("BankAccount"), "json", b"{}", "")
    assert fmt.usable(older_writer, 12, "ev-3")  # rows without an event id: by position only
