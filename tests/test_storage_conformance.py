"""The storage conformance suite (es_actors.testing.storage_conformance) on every shipped backend.

No Ray: real files in temporary directories. ``pytest -ra`` shows why a case is skipped for a
backend (a capability it lacks)."""

from __future__ import annotations

from es_actors.testing.storage_conformance import StorageConformance
from es_actors.testing.storage_kits import local_kit, object_kit, s3_kit


class TestLocalDisk(StorageConformance):
    kit = local_kit()


class TestWholeObjects(StorageConformance):
    kit = object_kit()


class TestS3(StorageConformance):
    """The whole-object log on a real S3-compatible server (moto's, on 127.0.0.1), through boto3."""

    kit = s3_kit()
