"""Whole-object operations on S3-compatible object storage: the :class:`~es_actors.storage.api.BlobStore`
the whole-object log (:mod:`.log`) runs on in a cluster.

``put_if_absent`` is a PUT with ``If-None-Match: *``: of two writers of one key exactly one
gets 200, the other 412 (S3 has offered it since 2024; ``pyarrow.fs`` has no conditional
PUT, hence boto3). A PUT is atomic: an object is seen whole or not at all, and a 200 means
it is durable (S3's own replication), so there is no fsync and no completion mark.

Credentials come from boto3's standard chain (environment, profile, instance role) and the
endpoint from ``endpoint_url`` or boto3's ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``; neither
appears in an error this module raises (they name the bucket, the key and S3's error code).
"""

from __future__ import annotations

import time
from typing import Any

from es_actors.errors import EsActorsError
from es_actors.storage.api import Capabilities

S3_CAPABILITIES = Capabilities(
    can_append=False, can_rename=False, can_fsync=False, can_lock=False, atomic_put=True,
    injects_write_faults=True, background_sealing=False,
)

#: S3 answers 409 ConditionalRequestConflict while another conditional PUT of the key is in
#: flight; the retry then gets 412 (the other won) or 200 (it failed).
_CONFLICT_RETRIES = 20


class ObjectStorageError(EsActorsError, OSError):
    """A request to the object store failed (network, permissions, throttling): names the bucket,
    the key and the service's error code, never a credential. An OSError, so the log treats it as a
    failed write (nothing acknowledged) like an I/O error on local disk."""


def _response(exc: Any) -> dict[str, Any]:
    """The service's answer carried by a botocore error (none for a timeout or a refused connection)."""
    response = getattr(exc, "response", None)
    return response if isinstance(response, dict) else {}


def _code(exc: Any) -> str:
    return str(_response(exc).get("Error", {}).get("Code", "")) or type(exc).__name__


def _status(exc: Any) -> int:
    return int(_response(exc).get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _retried(exc: Any) -> bool:
    """Whether botocore sent the request more than once before this answer."""
    return int(_response(exc).get("ResponseMetadata", {}).get("RetryAttempts", 0) or 0) > 0


def client_config() -> Any:
    """Bounded waits: a server that accepts and never answers fails a request in about a minute
    (3 attempts of 5 s connect + 15 s read), not in botocore's default 5 x 60 s."""
    from botocore.config import Config

    return Config(connect_timeout=5, read_timeout=15, retries={"max_attempts": 3, "mode": "standard"})


class S3BlobStore:
    """:class:`~es_actors.storage.api.BlobStore` on ``s3://bucket/prefix`` (keys are relative to the prefix)."""

    capabilities = S3_CAPABILITIES

    def __init__(self, bucket: str, prefix: str = "", client: Any = None, endpoint_url: str | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        if client is None:
            import boto3

            # Standard retries with backoff on throttling and 5xx; a conditional PUT is safe to
            # retry (a retried put that had in fact succeeded answers 412 and is resolved below).
            client = boto3.client("s3", endpoint_url=endpoint_url, config=client_config())
        self.client = client
        self._errors = client.exceptions

    def _key(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"{key!r} is not a relative object key")
        return self.prefix + key

    def _fail(self, what: str, key: str, exc: Exception) -> ObjectStorageError:
        if _code(exc) in ("NoCredentialsError", "PartialCredentialsError"):  # never sent: say why, not "HTTP none"
            return ObjectStorageError(f"s3://{self.bucket}/{self._key(key)}: {what} failed: no AWS credentials were found "
                                      "(environment, ~/.aws, instance profile); nothing was sent to the bucket")
        return ObjectStorageError(f"s3://{self.bucket}/{self._key(key)}: {what} failed: {_code(exc)} "
                                  f"(HTTP {_status(exc) or 'none'})")

    def _put(self, key: str, data: bytes) -> Any:
        """The raw conditional PUT (module tests replace it to inject faults)."""
        return self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*")

    def put_if_absent(self, key: str, data: bytes) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        for attempt in range(_CONFLICT_RETRIES):
            try:
                self._put(key, data)
                return True
            except ClientError as exc:
                status = _status(exc)
                if status == 412:  # exists: ours only if an earlier send of this very put reached S3
                    return (attempt > 0 or _retried(exc)) and self._ours(key, data)
                if status == 409:  # another conditional PUT of this key is in flight
                    time.sleep(0.05)
                    continue
                raise self._fail("conditional put", key, exc) from None
            except BotoCoreError as exc:
                raise self._fail("conditional put", key, exc) from None
        raise ObjectStorageError(f"s3://{self.bucket}/{self._key(key)}: conditional put kept conflicting "
                                 f"({_CONFLICT_RETRIES} tries)")

    def _ours(self, key: str, data: bytes) -> bool:
        """412 after a retried PUT whose first try reached S3: the object holds our bytes, so the put
        succeeded; with anyone else's bytes, it exists and ours was not written."""
        try:
            return self.get(key) == data
        except FileNotFoundError:
            return False

    def get(self, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()
        except ClientError as exc:
            if _status(exc) == 404 and _code(exc) != "NoSuchBucket":
                raise FileNotFoundError(f"s3://{self.bucket}/{self._key(key)}") from None
            raise self._fail("get", key, exc) from None
        except BotoCoreError as exc:
            raise self._fail("get", key, exc) from None

    def exists(self, key: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as exc:
            if _status(exc) == 404 and _code(exc) != "NoSuchBucket":
                return False
            raise self._fail("head", key, exc) from None
        except BotoCoreError as exc:
            raise self._fail("head", key, exc) from None

    def list(self, prefix: str) -> list[str]:
        """Keys directly under ``prefix`` (a "directory"), like a directory listing: not deeper ones."""
        from botocore.exceptions import BotoCoreError, ClientError

        stem = prefix if prefix.endswith("/") or not prefix else prefix + "/"
        keys: list[str] = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + stem, Delimiter="/"
            ):
                keys.extend(o["Key"][len(self.prefix):] for o in page.get("Contents", ()))
        except ClientError as exc:
            raise self._fail("list", stem, exc) from None
        except BotoCoreError as exc:
            raise self._fail("list", stem, exc) from None
        return sorted(keys)

    def any_under(self, prefix: str) -> bool:
        """Whether any object's key starts with ``prefix`` (at any depth)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            page = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix + prefix, MaxKeys=1)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("list", prefix, exc) from None
        return bool(page.get("KeyCount") or page.get("Contents"))

    def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("delete", key, exc) from None
