"""Read models on a store on object storage (S3 on 127.0.0.1, and blobdir): where the read-model
file lives, the ``events`` relation (sealed segments through pyarrow + the durable tail), status
and queries when no projector runs. The projection behaviour itself runs on both backends in
tests/test_projections.py (``both_backends``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from es_actors import Store
from es_actors.errors import EsActorsError, StoreCorrupted
from es_actors.examples.bank import BankAccount, Deposit, OpenAccount
from es_actors.examples.bank_projections import Balances, BalancesPy
from es_actors.storage.backends import open_backend
from es_actors.storage.layout import read_models_dir


def _fill(store: Store, accounts: int, deposits: int, prefix: str = "a") -> None:
    for i in range(accounts):
        acct = store.aggregate(BankAccount, f"{prefix}{i}")
        acct.submit(OpenAccount(owner=f"o{i}"), expected_version=0)
        for _ in range(deposits):
            acct.submit(Deposit(amount=3))


def _log(store: Store) -> list[tuple[Any, ...]]:
    """(partition, position, event_id) of every durable event, read through the backend."""
    backend = open_backend(store.layout.uri)
    out = []
    for p in range(store.descriptor.partitions):
        table = backend.reader(p).read_all().select(["partition", "position", "event_id"])
        out.extend(tuple(r.values()) for r in table.to_pylist())
    return sorted(out)


def _wait(store: Store, name: str = "balances") -> None:
    """Until ``name`` applied everything durable now."""
    heads: dict[int, int] = {}
    for part, pos, _id in _log(store):
        heads[part] = max(heads.get(part, 0), pos)
    store.projections.wait_for(name, heads, timeout=60)


def _delete_every_object(store: Store) -> None:
    """Remove the store from its bucket prefix (what `aws s3 rm --recursive` does)."""
    from es_actors.storage.backends import blob_store_of

    blobs: Any = blob_store_of(store.layout)
    for page in blobs.client.get_paginator("list_objects_v2").paginate(Bucket=blobs.bucket, Prefix=blobs.prefix):
        for o in page.get("Contents", ()):
            blobs.client.delete_object(Bucket=blobs.bucket, Key=o["Key"])


@pytest.mark.both_backends
def test_the_events_relation_is_every_sealed_and_tail_event_once(store_factory, backend, tmp_path):
    """Sealed segments (on S3: a pyarrow dataset over the objects) UNION ALL the durable tail, each
    event once; filters by position and aggregate give the same slices as the full read."""
    store = store_factory("ev", partitions=2, seal_rows=7, projections=[Balances], read_model_dir=str(tmp_path / "rm"))
    _fill(store, 6, 5)
    want = _log(store)
    got = sorted(tuple(r.values()) for r in store.query("SELECT partition, position, event_id FROM events").to_pylist())
    assert got == want and len(want) == 36
    from es_actors.storage.backends import events_snapshot

    part, rows = events_snapshot(store.layout, 2)
    assert rows.num_rows > 0, "nothing left in the tail: the test would not cover it"
    assert part, "nothing sealed: the test would not cover segments"
    ranged = store.query("SELECT partition, position FROM events WHERE position BETWEEN 3 AND 9 ORDER BY ALL").to_pylist()
    assert [tuple(r.values()) for r in ranged] == [(p, pos) for p, pos, _e in want if 3 <= pos <= 9]
    one = store.query("SELECT version FROM events WHERE aggregate_type = 'BankAccount' AND aggregate_id = 'a2' ORDER BY version")
    assert one.column("version").to_pylist() == [1, 2, 3, 4, 5, 6]


@pytest.mark.both_backends
def test_read_models_live_in_a_local_directory_per_store_id(store_factory, backend, store_uri, tmp_path):
    """An object store's read model is a local file under read_model_dir/<store id>; a store made anew
    at the same prefix (a new id) starts a fresh read model instead of the old one's checkpoints."""
    base = tmp_path / "read-models"
    store = store_factory("rm", partitions=2, projections=[Balances, BalancesPy], read_model_dir=str(base))
    _fill(store, 3, 2)
    _wait(store)
    if backend == "local":
        assert store.layout.read_model_root == store.layout.root and not base.exists()
        return
    first_id = store.descriptor.store_id
    assert store.layout.read_model_root == base.resolve() / first_id
    assert (base / first_id / "readmodels" / "readmodels.duckdb").is_file()
    assert store.query("SELECT sum(balance) AS s FROM balances").column("s")[0].as_py() == 18
    store.shutdown()
    _delete_every_object(store)  # a new store will be made at the same prefix
    again = Store.open(store_uri("rm"), [BankAccount], partitions=2, projections=[Balances], read_model_dir=str(base))
    try:
        assert again.descriptor.store_id != first_id
        _fill(again, 1, 1, prefix="b")
        _wait(again)
        rows = again.query("SELECT account, balance FROM balances").to_pylist()
        assert rows == [{"account": "b0", "balance": 3}], "the new store read the old store's read model"
    finally:
        again.shutdown()


@pytest.mark.both_backends
def test_with_no_projector_status_and_queries_read_the_committed_read_model(store_factory, backend, store_uri, tmp_path):
    base = str(tmp_path / "rm")
    store = store_factory("ro", partitions=2, projections=[Balances], read_model_dir=base)
    _fill(store, 4, 2)
    _wait(store)
    store.shutdown()
    ro = Store.open(store_uri("ro"), [BankAccount], read_only=True, read_model_dir=base)
    assert ro.query("SELECT count(*) AS n, sum(balance) AS s FROM balances").to_pylist() == [{"n": 4, "s": 24}]
    assert ro.query("SELECT count(*) AS n FROM events").column("n")[0].as_py() == 12
    from es_actors.read.readmodel import committed_status

    rows = committed_status(ro.layout, 2)
    assert {r["status"] for r in rows} == {"stopped"} and sum(r["lag_events"] for r in rows) == 0
    assert {r["partition"]: r["head"] for r in rows} == {p: max(pos for q, pos, _ in _log(ro) if q == p) for p in range(2)}


def test_a_read_model_directory_is_never_named_by_a_hostile_store_id(tmp_path):
    """store.json is data: an id that would leave the base directory is refused, not followed."""
    for bad in ("..", "../x", "a/b", "", "x" * 200, "/etc"):
        with pytest.raises(StoreCorrupted):
            read_models_dir(bad, str(tmp_path))
    assert read_models_dir("0f3a", str(tmp_path)) == tmp_path.resolve() / "0f3a"


def test_a_layout_without_its_read_model_directory_says_so():
    from es_actors.storage.layout import StoreLayout

    layout = StoreLayout.from_uri("s3://bucket/prefix?endpoint_url=http://127.0.0.1:9")
    with pytest.raises(EsActorsError, match="local directory"):
        _ = layout.read_model_root
    assert StoreLayout(Path("/x")).read_model_root == Path("/x")
