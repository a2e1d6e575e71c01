"""Review 20 (hostile): a backfill's lease and work in a whole-object store (no Ray; the directory
blob store, whose operations are S3's)."""

from __future__ import annotations

import json

import pytest

from es_actors.errors import EsActorsError
from es_actors.read.backfill.lease import Lease
from es_actors.read.backfill.objects import BackfillObjects
from es_actors.storage.objects.blobs import DirectoryBlobStore


def test_a_stalled_holder_learns_it_lost_the_lease_even_after_the_new_holder_renewed(tmp_path):
    """A holds, stalls past the TTL; B takes over and renews once (deleting the record A's next
    renewal would collide with). A's late renewal must still find the lease lost; today it lands
    on the freed number, A believes it holds the lease and both drivers run on."""
    blobs = DirectoryBlobStore(tmp_path / "store")
    a = Lease(blobs, "x/lease/", ttl_s=0.01, renew_s=3600)
    a.acquire("owner-a")
    a.crash()  # stalled (GC pause, network partition): no renewal
    import time

    time.sleep(0.05)
    b = Lease(blobs, "x/lease/", ttl_s=60, renew_s=3600)
    b.acquire("owner-b")
    assert b.renew()  # B's first renewal deletes the records below its number
    renewed = a.renew()  # A wakes up
    assert not renewed and a.lost, "the stalled holder's renewal landed on a freed number: two holders"


@pytest.mark.parametrize("record", [
    b'{"owner": "x", "holder": "h", "expires_at": "soon"}',
    b'{"owner": "x", "holder": "h", "expires_at": null}',
    b'[1, 2]',
    b'"text"',
])
def test_a_hostile_lease_record_is_refused_by_name(tmp_path, record):
    """A lease record that is JSON but not a lease (hand-edited, another tool's) must give an
    es_actors error or count as free, not a ValueError/TypeError/AttributeError traceback from
    `backfill`/`status`."""
    blobs = DirectoryBlobStore(tmp_path / "store")
    w = BackfillObjects(blobs, "blobdir:///s", "p", 1, "", tmp_path / "scratch")
    blobs.put_if_absent(w.prefix + "lease/0000000001.json", record)
    for call in (w.running, w.lock):
        try:
            call()
        except EsActorsError:
            pass
    w.unlock()


def test_a_hostile_plan_task_id_is_refused_by_name(tmp_path):
    """A plan.json whose task id walks out of the backfill's prefix: discarding (restart) must
    refuse it as an es_actors error, not a bare ValueError from the blob store."""
    blobs = DirectoryBlobStore(tmp_path / "store")
    w = BackfillObjects(blobs, "blobdir:///s", "p", 1, "", tmp_path / "scratch")
    plan = {"projection": "p", "version": 1, "fingerprint": "f", "split": "none", "targets": {"0": 1},
            "tasks": [{"id": "../../../../log", "bounds": {"0": [0, 1]}}], "created_at": "now"}
    blobs.put_if_absent(w.prefix + "plan.json", json.dumps(plan).encode())
    try:
        w.discard()
    except EsActorsError:
        pass
    try:
        w.load_checkpoint(w.load_plan().tasks[0].id)
    except EsActorsError:
        pass
