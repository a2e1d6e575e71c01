"""What a hostile review of the command path found, each fixed at its root (issue 9): a command
that stores far more than its payload, user code that raises SystemExit or an unprintable error,
an event whose live state differs from its replay, unchecked ids on reads, a flooded direct link."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from es_actors import DomainRegistry, InvalidPayload, PayloadTooLarge, StoreConfig, Submission, UserCodeError
from es_actors.write.partition import Partition
from es_actors.write.protocol import CommandEnvelope, ImportedEvent, ImportEnvelope
from es_actors.storage.layout import StoreLayout
from es_actors.storage.local.reader import read_partition_rows
from es_actors.examples.bank import BankAccount, Deposit, OpenAccount
from tests.validation_domains import Actor

REGISTRY = DomainRegistry([BankAccount, Actor])


def open_partition(root: Path, **settings) -> Partition:
    StoreLayout(root).create_or_check(1, 1)
    return Partition(StoreLayout(root), 0, REGISTRY, StoreConfig(lock_timeout_s=0, **settings))


def command(atype: str, aid: str, name: str, payload: dict, meta: dict | None = None):
    return CommandEnvelope(atype, aid, uuid.uuid4().hex, name, json.dumps(payload), **(meta or {}))


def test_metadata_stored_with_every_imported_event_counts_against_the_limit(tmp_path):
    """60 KB of metadata on 4,000 small imported events would store 240 MB: refused alone."""
    p = open_partition(tmp_path / "s")
    events = [ImportedEvent("MoneyDeposited", '{"amount": 1}')] * 4000
    huge = ImportEnvelope("BankAccount", "imp", "imp-1", events, 0, metadata={"note": "x" * 60_000})
    many = ImportEnvelope("BankAccount", "imp2", "imp-2", [ImportedEvent("MoneyDeposited", '{"amount": 1}')] * 20_000, 0)
    results = p.handle_batch([command("BankAccount", "a", "OpenAccount", {"owner": "a"}), huge, many,
                              command("BankAccount", "a", "Deposit", {"amount": 2})])
    assert [r.ok for r in results] == [True, False, False, True]
    assert isinstance(results[1].error, PayloadTooLarge) and "metadata" in str(results[1].error)
    assert isinstance(results[2].error, PayloadTooLarge) and "max_events_per_command" in str(results[2].error)
    assert [r[3] for r in read_partition_rows(StoreLayout(tmp_path / "s"), 0)] == ["a", "a"]
    p.close()


def test_stored_metadata_is_the_compact_utf8_text_the_envelope_measured(tmp_path):
    p = open_partition(tmp_path / "s")
    [result] = p.handle_batch([command("BankAccount", "a", "OpenAccount", {"owner": "a"},
                                       {"metadata": {"note": "é" * 10, "n": [0, 1]}})])
    assert result.ok
    [row] = read_partition_rows(StoreLayout(tmp_path / "s"), 0)
    assert row[-1] == '{"note":"' + "é" * 10 + '","n":[0,1]}'
    p.close()


@pytest.mark.parametrize("how", ["exit", "mute"])
def test_user_code_that_raises_anything_fails_only_its_command(tmp_path, how):
    p = open_partition(tmp_path / "s")
    results = p.handle_batch([command("Actor", "x", "Act", {}), command("Actor", "y", "Act", {"how": how}),
                              command("Actor", "x", "Act", {})])
    assert [r.ok for r in results] == [True, False, True]
    assert isinstance(results[1].error, UserCodeError) and ("SystemExit" in str(results[1].error) or "Mute" in str(results[1].error))
    p.close()


def test_the_live_state_is_the_state_a_replay_builds(tmp_path):
    """A zoned datetime compares equal to its stored offset form; the actor evolves from what it
    stored, so the acknowledged state and the state after a restart are the same."""
    p = open_partition(tmp_path / "s")
    [result] = p.handle_batch([command("Actor", "z", "Act", {"how": "tz"})])
    assert result.ok
    live = p.get_state("Actor", "z")
    p.close()
    p = open_partition(tmp_path / "s")
    assert p.get_state("Actor", "z") == live
    p.close()


def test_imported_occurred_at_must_be_an_iso_time(tmp_path):
    p = open_partition(tmp_path / "s")
    bad = ImportEnvelope("BankAccount", "imp", "imp-1", [ImportedEvent("AccountOpened", '{"owner": "o"}', "yesterday-ish")], 0)
    [result] = p.handle_batch([bad])
    assert isinstance(result.error, InvalidPayload) and "ISO 8601" in str(result.error)
    p.close()


def test_reads_check_their_ids_and_submit_many_takes_any_iterable(store):
    with pytest.raises(InvalidPayload):
        store.history("BankAccount", "acc-\ud800")
    with pytest.raises(InvalidPayload):
        store.history("BankAccount", 123)
    results = store.submit_many(Submission(BankAccount, f"g{i}", OpenAccount(owner="g")) for i in range(3))
    assert [r.version for r in results] == [1, 1, 1]


def test_a_refused_direct_link_falls_back_to_ray_calls(store_factory, monkeypatch):
    """A flooded or refusing link (any local process can connect to it) must not stop commands."""
    from es_actors.write import client as channel
    from es_actors.errors import LinkRefused

    def refuse(address, key, timeout=5.0, tls_cert=None):
        raise LinkRefused(f"direct link to {address}: refused (test)")

    monkeypatch.setattr(channel, "connect", refuse)
    s = store_factory("fallback", partitions=1)
    acct = s.aggregate(BankAccount, "f")
    assert acct.submit(OpenAccount(owner="f"), timeout=30).version == 1
    assert acct.submit(Deposit(amount=3), timeout=30).version == 2
