"""A backfill's work in a whole-object store (no Ray; the directory blob store, whose operations
are S3's): the lease that replaces flock, and numbered checkpoints where the highest whole one wins."""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from es_actors.read.backfill.files import TaskCheckpoint
from es_actors.read.backfill.lease import Lease, LeaseHeld
from es_actors.read.backfill.objects import BackfillObjects
from es_actors.storage.objects.blobs import DirectoryBlobStore


def work(blobs: DirectoryBlobStore, tmp_path, name: str = "w") -> BackfillObjects:
    return BackfillObjects(blobs, "blobdir:///s", "p", 1, "", tmp_path / name)


def test_the_lease_is_exclusive_renewed_and_frees_itself_after_a_crash(tmp_path):
    blobs = DirectoryBlobStore(tmp_path / "store")
    a, b = Lease(blobs, "x/lease/", ttl_s=0.5, renew_s=0.1), Lease(blobs, "x/lease/", ttl_s=0.5)
    a.acquire("owner-a")
    with pytest.raises(LeaseHeld, match="held by"):
        b.acquire("owner-b")
    time.sleep(0.8)  # longer than the TTL, but renewed meanwhile: still held
    assert b.held_by_other("owner-b") is not None and a.number > 1
    a.crash()  # killed: no renewal, no release
    assert b.held_by_other("owner-b") is not None
    time.sleep(0.6)
    b.acquire("owner-b")  # expired: taken over
    assert not a.renew() and a.lost  # the old holder learns it lost the lease at its next renewal
    b.release()
    assert Lease(blobs, "x/lease/").held_by_other() is None and len(blobs.list("x/lease/")) == 1  # older records deleted


def test_the_same_owner_takes_its_lease_back_at_once(tmp_path):
    """A projector that Ray restarts keeps its actor id: it need not wait for its old lease to expire."""
    blobs = DirectoryBlobStore(tmp_path / "store")
    first = Lease(blobs, "x/lease/")
    first.acquire("actor-1")
    first.crash()
    with pytest.raises(LeaseHeld):
        Lease(blobs, "x/lease/").acquire("actor-2")
    again = Lease(blobs, "x/lease/")
    again.acquire("actor-1")
    again.release()


def test_checkpoints_are_numbered_objects_and_the_highest_whole_one_wins(tmp_path):
    blobs = DirectoryBlobStore(tmp_path / "store")
    w = work(blobs, tmp_path)
    t = pa.table({"k": [1, 2]})
    dead = pa.table({"projection": pa.array([], pa.string())})
    for seq in (1, 2):
        w.write_checkpoint(TaskCheckpoint(task="t", seq=seq, positions={0: seq * 10}, applied=seq, parked=0, tables=["a"]), {"a": t}, dead)
    assert w.load_checkpoint("t").seq == 2
    assert len(blobs.list(f"{w.prefix}tasks/t/")) == 3  # checkpoint 1 and its tables are gone
    # a torn newer checkpoint (a crash mid-put) is passed over, and named
    path = blobs.root / w.prefix / "tasks/t/ck-0000000003.json"
    path.write_bytes(b'{"task": "t"')
    assert w.load_checkpoint("t").seq == 2
    assert w.checkpoint_problem("t") is None  # a usable one is there
    # the task resumed from 2 checkpoints again: after the torn number, and that one wins
    w.write_checkpoint(TaskCheckpoint(task="t", seq=3, positions={0: 30}, applied=3, parked=0, tables=["a"]), {"a": t}, dead)
    ck = w.load_checkpoint("t")
    assert ck.positions == {0: 30} and not path.exists()
    assert pq.read_table(w.table_file(ck, "a")).equals(t)
    w.drop_local_copies()
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").rglob("*.parquet"))


def test_discard_removes_the_tasks_and_marks_and_the_plan_last(tmp_path):
    from es_actors.read.backfill.plan import BackfillPlan, TaskSpec

    blobs = DirectoryBlobStore(tmp_path / "store")
    w = work(blobs, tmp_path)
    plan = BackfillPlan(projection="p", version=1, fingerprint="f", split="partition", targets={0: 5},
                        tasks=[TaskSpec(id="t", bounds={0: (0, 5)})], created_at="now")
    w.save_plan(plan)
    w.write_checkpoint(TaskCheckpoint(task="t", seq=1, positions={0: 5}, applied=5, parked=0, tables=[], final=True),
                       {}, pa.table({"x": [1]}))
    w.mark_installed("{}")
    w.request_stop("{}")
    assert w.installed() == "{}" and w.stop_requested()
    w.discard()
    assert w.load_plan() is None and w.load_checkpoint("t") is None and w.installed() is None and not w.stop_requested()
    assert blobs.list("backfills/p/versions/") == ["backfills/p/versions/v1"]  # --status still finds the version
