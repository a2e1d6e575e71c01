"""The S3 blob store against a real S3-compatible server on 127.0.0.1 (moto's, through boto3): the
whole-object contract, and errors that name what failed without ever showing a credential. No Ray."""

from __future__ import annotations

import logging
import socket

import pytest

from es_actors.errors import EsActorsError
from es_actors.storage.objects.s3 import ObjectStorageError, S3BlobStore
from es_actors.testing.local_s3 import REGION, shared_local_s3

SECRET = "sEcReT-never-shown-0123456789"


def _client(endpoint: str, secret: str = SECRET):  # type: ignore[no-untyped-def]
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key=secret,
                        region_name=REGION)


@pytest.fixture()
def blobs(request: pytest.FixtureRequest) -> S3BlobStore:
    s3 = shared_local_s3()
    return S3BlobStore(s3.bucket("es-actors-blobs"), request.node.name, client=_client(s3.endpoint_url))


def test_put_if_absent_creates_once_and_never_overwrites(blobs: S3BlobStore) -> None:
    assert blobs.put_if_absent("p0000/tail/1", b"first")
    assert not blobs.put_if_absent("p0000/tail/1", b"second")
    assert blobs.get("p0000/tail/1") == b"first"


def test_get_of_a_missing_key_is_file_not_found_and_delete_is_idempotent(blobs: S3BlobStore) -> None:
    with pytest.raises(FileNotFoundError):
        blobs.get("nothing/here")
    blobs.put_if_absent("a/b", b"x")
    blobs.delete("a/b")
    blobs.delete("a/b")
    assert not blobs.exists("a/b")


def test_list_is_one_level_like_a_directory(blobs: S3BlobStore) -> None:
    for key in ("d/1", "d/2", "d/sub/3", "e/4"):
        blobs.put_if_absent(key, b".")
    assert blobs.list("d/") == ["d/1", "d/2"] == blobs.list("d")
    assert blobs.list("none/") == []


def test_keys_that_climb_out_of_the_prefix_are_refused(blobs: S3BlobStore) -> None:
    for bad in ("../other/x", "/abs", "a/../../b"):
        with pytest.raises(ValueError):
            blobs.get(bad)


def test_errors_name_bucket_key_and_code_and_never_a_credential(caplog: pytest.LogCaptureFixture) -> None:
    s3 = shared_local_s3()
    missing = S3BlobStore("es-actors-no-such-bucket", "pfx", client=_client(s3.endpoint_url))
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(ObjectStorageError) as err:
            missing.put_if_absent("k", b"data")
    text = str(err.value)
    assert "es-actors-no-such-bucket/pfx/k" in text and "NoSuchBucket" in text
    assert isinstance(err.value, EsActorsError) and isinstance(err.value, OSError)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert SECRET not in text and SECRET not in logged and SECRET not in repr(err.value)


def test_an_unreachable_endpoint_is_an_object_storage_error_naming_the_bucket() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from botocore.config import Config
    import boto3

    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id="AKIDEXAMPLE",
                          aws_secret_access_key=SECRET, region_name=REGION,
                          config=Config(retries={"max_attempts": 1}, connect_timeout=1))
    blobs = S3BlobStore("es-actors-offline", "", client=client)
    with pytest.raises(ObjectStorageError, match="es-actors-offline/x: get failed") as err:
        blobs.get("x")
    assert SECRET not in str(err.value)
