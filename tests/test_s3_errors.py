"""What a user meets when an S3 store or its server misbehaves, or a tool is pointed at one: clear
es_actors errors that name the bucket and key, in bounded time, and nothing taken from a live writer.
Against a real local S3-compatible server (moto's, 127.0.0.1); no Ray."""

from __future__ import annotations

import json
import socket
import time

import pytest
from click.testing import CliRunner

from es_actors.errors import EsActorsError
from es_actors.storage.layout import StoreLayout
from es_actors.storage.objects.s3 import ObjectStorageError, S3BlobStore, client_config
from es_actors.testing.local_s3 import REGION, shared_local_s3


def _uri(name: str) -> str:
    s3 = shared_local_s3()
    return f"s3://{s3.bucket('es-actors-errors')}/{name}?endpoint_url={s3.endpoint_url}"


def _store(name: str, partitions: int = 2) -> str:
    """An S3 store with a few events, written in this process (no Ray)."""
    from es_actors.storage.objects import ObjectBackend
    from es_actors.testing.storage_conformance import EventLog, small_config

    uri = _uri(name)
    layout = StoreLayout.from_uri(uri)
    layout.create_or_check(partitions, partitions)
    from es_actors.storage.backends import blob_store_of

    log = ObjectBackend(blob_store_of(layout)).open_log(0, small_config())
    EventLog().append(log, ["a", "b"])
    log.close()
    return uri


def test_a_server_that_never_answers_is_an_object_storage_error_naming_the_key_not_an_attribute_error() -> None:
    import boto3
    from botocore.config import Config

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections, never answers
    try:
        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{silent.getsockname()[1]}", region_name=REGION,
                              aws_access_key_id="x", aws_secret_access_key="y",
                              config=Config(connect_timeout=1, read_timeout=1, retries={"max_attempts": 1}))
        blobs = S3BlobStore("es-actors-silent", "p", client=client)
        for call in (lambda: blobs.get("k"), lambda: blobs.put_if_absent("k", b"x"), lambda: blobs.list("d/"),
                     lambda: blobs.exists("k")):
            t0 = time.monotonic()
            with pytest.raises(ObjectStorageError, match="s3://es-actors-silent/p/") as err:
                call()
            assert time.monotonic() - t0 < 10 and "Timeout" in str(err.value)
    finally:
        silent.close()
    cfg = client_config()  # what stores use: bounded, not botocore's 5 x 60 s
    assert cfg.connect_timeout <= 10 and cfg.read_timeout <= 30 and cfg.retries["max_attempts"] <= 3


def test_a_server_that_is_down_is_not_reported_as_a_corrupted_store() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    layout = StoreLayout.from_uri(f"s3://es-actors-down/store?endpoint_url=http://127.0.0.1:{port}")
    with pytest.raises(ObjectStorageError, match="s3://es-actors-down/store/"):
        layout.read_descriptor()


def test_a_missing_bucket_is_named_not_taken_for_a_missing_store() -> None:
    s3 = shared_local_s3()
    layout = StoreLayout.from_uri(f"s3://es-actors-no-such-bucket/x?endpoint_url={s3.endpoint_url}")
    with pytest.raises(ObjectStorageError, match="NoSuchBucket"):
        layout.read_descriptor()


def test_a_second_put_of_the_same_bytes_does_not_also_win() -> None:
    s3 = shared_local_s3()
    blobs = S3BlobStore(s3.bucket("es-actors-errors"), f"same-{time.time_ns()}", client=s3.client())
    assert blobs.put_if_absent("owners/1", b'{"pid": 7}')
    assert not blobs.put_if_absent("owners/1", b'{"pid": 7}')  # exactly one writer of a key wins


def test_a_local_store_copied_into_a_bucket_is_refused_not_opened_empty() -> None:
    s3 = shared_local_s3()
    uri = _uri(f"copied-{time.time_ns()}")
    blobs = S3BlobStore("es-actors-errors", uri.split("/", 3)[3].split("?")[0], client=s3.client())
    blobs.put_if_absent("store.json", json.dumps({"store_id": "x", "partitions": 1}).encode())
    blobs.put_if_absent("log/p0000/g1/00000000000000000001-00000000000000000002-abcd.parquet", b"PAR1")
    with pytest.raises(EsActorsError, match="holds a local-disk store's files"):
        StoreLayout.from_uri(uri).create_or_check(None, 1)


def test_offline_compaction_of_an_s3_store_is_refused_and_claims_nothing() -> None:
    """With no lock, opening a partition here would fence a live writer elsewhere (a newer epoch)."""
    from es_actors.jobs.compaction import compact_store
    from es_actors.storage.backends import blob_store_of

    uri = _store(f"compact-{time.time_ns()}")
    blobs = blob_store_of(StoreLayout.from_uri(uri))
    owners = blobs.list("p0000/owners/")
    with pytest.raises(EsActorsError, match="no writer lock"):
        compact_store(uri)  # no partition actor of it runs anywhere this process can see
    assert blobs.list("p0000/owners/") == owners, "the refused compaction claimed the partition"


@pytest.mark.parametrize("args", [
    ["repair", "--store", "{uri}"], ["upgrade", "--store", "{uri}"], ["verify", "--store", "{uri}"],
])
def test_local_disk_tools_pointed_at_an_s3_store_say_so_in_one_line(args: list[str]) -> None:
    from es_actors.cli import main

    uri = _store(f"cli-{time.time_ns()}")
    result = CliRunner().invoke(main, [a.format(uri=uri) for a in args], env={"RAY_ADDRESS": ""})
    assert result.exit_code != 0
    assert "not supported on s3 stores" in result.output, result.output
    assert "Traceback" not in result.output


def test_no_credentials_is_an_object_storage_error_saying_so_not_corruption(monkeypatch) -> None:
    """Nothing is sent: botocore finds no credentials (none in the environment, no config files)."""
    import boto3
    from botocore.config import Config

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    client = boto3.Session().client("s3", region_name=REGION, endpoint_url="http://127.0.0.1:9",
                                    config=Config(retries={"max_attempts": 1}))
    blobs = S3BlobStore("es-actors-nocreds", "x", client=client)
    with pytest.raises(ObjectStorageError, match="s3://es-actors-nocreds/x/store.json: get failed: no AWS credentials"):
        blobs.get("store.json")
