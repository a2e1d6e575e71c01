"""A Store on S3-compatible object storage (``s3://bucket/prefix?endpoint_url=...``, a real server on
127.0.0.1): commands, state and history through the partition actors, surviving a restart; nothing
on local disk; credentials from the environment, never in what the store writes or says."""

from __future__ import annotations

import pytest

from es_actors import Store
from es_actors.errors import EsActorsError
from es_actors.examples.bank import BankAccount, Deposit, OpenAccount
from es_actors.storage.layout import StoreLayout
from es_actors.testing.local_s3 import LOCAL_SECRET_KEY, shared_local_s3
from tests.test_object_store_end_to_end import write_read_recover


@pytest.fixture()
def s3_uri(request: pytest.FixtureRequest) -> str:
    s3 = shared_local_s3()
    bucket = s3.bucket("es-actors-stores")
    return f"s3://{bucket}/{request.node.name[:40]}?endpoint_url={s3.endpoint_url}"


def test_a_store_on_s3_writes_reads_and_recovers(ray_session, tmp_path, monkeypatch, s3_uri):
    monkeypatch.chdir(tmp_path)
    write_read_recover(s3_uri)  # the blobdir scenario, on S3
    assert list(tmp_path.iterdir()) == [], "an s3 store wrote to the local disk"
    reader = Store.open(s3_uri, [BankAccount], read_only=True)  # no Ray needed to read
    assert [h.version for h in reader.aggregate(BankAccount, "a0").history()] == [1, 2, 3, 4, 5]
    layout = StoreLayout.from_uri(s3_uri)
    from es_actors.storage.backends import blob_store_of

    blobs = blob_store_of(layout)
    stored = b"".join(blobs.get(k) for k in blobs.list("") + blobs.list("p0000/owners/"))
    assert LOCAL_SECRET_KEY.encode() not in stored, "a credential was written into the store"


@pytest.mark.parametrize("backend", ["s3", "local"])
def test_the_sealed_log_reads_with_pyarrow_and_duckdb_like_the_store(ray_session, s3_uri, tmp_path, backend):
    """The documented way to read the sealed log from outside: store.sealed_dataset() (on S3 through
    pyarrow's S3FileSystem), queried by DuckDB; it equals the events read through the store."""
    import duckdb

    uri = s3_uri if backend == "s3" else str(tmp_path / "local")
    store = Store.open(uri, [BankAccount], partitions=2, seal_rows=4)
    try:
        for i in range(6):
            acct = store.aggregate(BankAccount, f"d{i}")
            acct.submit(OpenAccount(owner="ann"), expected_version=0)
            for _ in range(4):
                acct.submit(Deposit(amount=10))
    finally:
        store.close()  # seals every tail
    reader = Store.open(uri, [BankAccount], read_only=True)
    ds = reader.sealed_dataset()
    table = ds.to_table()
    assert table.num_rows == 30
    got = duckdb.sql("SELECT aggregate_id, count(*) AS n, max(version) AS v FROM ds GROUP BY 1 ORDER BY 1").fetchall()
    assert got == [(f"d{i}", 5, 5) for i in range(6)]
    events = sorted((h.aggregate_id, h.version, h.event_id) for i in range(6)
                    for h in reader.aggregate(BankAccount, f"d{i}").history())
    assert sorted(zip(*(table.column(c).to_pylist() for c in ("aggregate_id", "version", "event_id")))) == events
