"""Where the partition jobs' tasks run: spread over the nodes for a store on object storage, Ray's
default (as before) for a directory. No Ray is started."""

from __future__ import annotations

from es_actors.jobs._tasks import task_placement
from es_actors.storage.layout import StoreLayout


def test_tasks_of_an_s3_store_spread_and_a_directorys_keep_rays_default(tmp_path):
    s3 = StoreLayout.from_uri("s3://bucket/stores/bank?endpoint_url=http://127.0.0.1:9000")
    assert task_placement(s3) == {"scheduling_strategy": "SPREAD"}
    assert "endpoint_url=http://127.0.0.1:9000" in s3.uri  # what the tasks get: the URI, endpoint included
    assert task_placement(StoreLayout.from_uri(str(tmp_path))) == {}
    assert task_placement(StoreLayout.from_uri(f"blobdir://{tmp_path}")) == {}  # a directory on this node's disk
