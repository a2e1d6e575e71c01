"""Whole-object backend: reading and following cost what is asked for (no Ray, real files).

Counted, not timed: a blob store on a directory that counts its GETs and LISTs by kind of object."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from es_actors.config import StoreConfig
from es_actors.storage.backends import open_backend
from es_actors.storage.objects import DirectoryBlobStore, ObjectBackend, ObjectFollower
from es_actors.testing.storage_conformance import EventLog, rows_of

CONFIG = StoreConfig.model_validate({"seal_rows": 50, "compact_small_rows": 1000, "compact_min_run": 2,
                                     "gc_grace_s": 0.0, "lock_timeout_s": 0.3})


class CountingBlobs(DirectoryBlobStore):
    """A directory blob store that counts GETs by key and LISTs by prefix."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.gets: Counter[str] = Counter()
        self.lists: Counter[str] = Counter()

    def get(self, key: str) -> bytes:
        self.gets[key] += 1
        return super().get(key)

    def list(self, prefix: str) -> list[str]:
        self.lists[prefix] += 1
        return super().list(prefix)

    def segment_gets(self) -> Counter[str]:
        return Counter({k: n for k, n in self.gets.items() if "/segs/" in k})

    def reset(self) -> None:
        self.gets.clear()
        self.lists.clear()


def _store(root: Path, rows: int = 500, group: int = 10) -> EventLog:
    ev = EventLog()
    log = ObjectBackend.on_directory(root).open_log(0, CONFIG)
    try:
        for i in range(rows // group):
            ev.append(log, [f"a{(i + k) % 7}" for k in range(group)])  # sealed every 50 rows
    finally:
        log.close()
    return ev


def test_a_catch_up_in_small_runs_reads_each_segment_once(tmp_path: Path) -> None:
    ev = _store(tmp_path, rows=505, group=5)  # 10 segments of 50 rows and one commit in the tail
    blobs = CountingBlobs(tmp_path)
    follower = ObjectBackend(blobs).follower(0)
    got = []
    polls = 0
    while (batch := follower.poll(max_rows=7)) is not None:
        got.extend(rows_of(batch.to_table()))
        polls += 1
    assert got == ev.acked and polls == 73
    segs = blobs.segment_gets()
    assert len(segs) == 10 and set(segs.values()) == {1}, segs  # not once per poll (73 polls)
    assert follower.head == 505


def test_followers_at_different_places_each_read_a_segment_once_even_with_a_tiny_shared_cache(tmp_path: Path) -> None:
    ev = _store(tmp_path, rows=300)  # 6 segments
    blobs = CountingBlobs(tmp_path)
    backend = ObjectBackend(blobs)
    backend.segments.max_bytes = 1  # keeps only the newest segment: each follower holds the one it is in
    ahead, behind = backend.follower(0, 120), backend.follower(0)
    got: dict[int, list[tuple[object, ...]]] = {id(ahead): [], id(behind): []}
    while True:
        batches = [(f, f.poll(max_rows=9)) for f in (ahead, behind)]
        if all(b is None for _f, b in batches):
            break
        for f, b in batches:
            if b is not None:
                got[id(f)].extend(rows_of(b.to_table()))
    assert got[id(ahead)] == ev.acked[120:] and got[id(behind)] == ev.acked
    assert sum(blobs.segment_gets().values()) <= 4 + 6  # at most once per follower and segment


def test_following_the_head_reads_no_segment(tmp_path: Path) -> None:
    _store(tmp_path)
    blobs = CountingBlobs(tmp_path)
    follower = ObjectBackend(blobs).follower(0)
    while follower.poll(10_000_000) is not None:  # what a runner's head follower does
        pass
    assert follower.head == 500 and not blobs.segment_gets()


def test_read_range_reads_only_the_segments_it_overlaps_and_the_tail_only_when_it_reaches_it(tmp_path: Path) -> None:
    ev = _store(tmp_path, rows=520)  # 10 segments of 50, 20 rows in the tail
    blobs = CountingBlobs(tmp_path)
    reader = ObjectBackend(blobs).reader(0)
    assert rows_of(reader.read_range(120, 160)) == ev.acked[119:160]
    assert sorted(k.rsplit("-", 2)[1:] for k in blobs.segment_gets()) == [
        [f"{101:020d}", f"{150:020d}.parquet"], [f"{151:020d}", f"{200:020d}.parquet"]]
    assert not [k for k in blobs.gets if "/tail/" in k] and not [p for p in blobs.lists if p.endswith("tail/")]
    blobs.reset()
    assert rows_of(reader.read_range(495, 510)) == ev.acked[494:510]
    assert len(blobs.segment_gets()) == 1 and [p for p in blobs.lists if p.endswith("tail/")]
    assert reader.high_water() == 520


def test_followers_of_one_backend_share_one_look_within_its_interval(tmp_path: Path) -> None:
    _store(tmp_path)
    blobs = CountingBlobs(tmp_path)
    backend = ObjectBackend(blobs, poll_s=3600.0)  # no look expires during the test
    followers = [backend.follower(0, 0) for _ in range(4)]
    for _ in range(10):
        for f in followers:
            while (batch := f.poll(max_rows=100)) is not None:
                batch.to_table()
    assert blobs.lists == Counter({"p0000/gens/": 1, "p0000/tail/": 1})  # 40+ polls, one look
    assert set(blobs.segment_gets().values()) == {1}  # one cache: each segment read once for all four
    assert [f.after for f in followers] == [500] * 4
    late = backend.follower(0, 500)  # a follower made after that look does not answer from it
    assert late.poll() is None and blobs.lists["p0000/tail/"] == 2


def test_a_new_follower_sees_rows_written_before_it_was_made_despite_a_shared_look(tmp_path: Path) -> None:
    ev = _store(tmp_path, rows=20)
    backend = ObjectBackend(DirectoryBlobStore(tmp_path), poll_s=3600.0)
    first = backend.follower(0)
    assert first.poll() is not None
    log = backend.open_log(0, CONFIG)
    ev.append(log, ["z"])
    log.close()
    assert first.poll() is None  # the shared look is not expired: nothing newer yet, never a gap
    late = backend.follower(0, 20)
    batch = late.poll()
    assert batch is not None and (batch.first, batch.last) == (21, 21)
    assert first.poll() is not None  # and the look it took is shared


def test_a_batch_whose_segments_were_compacted_away_reads_them_where_they_are_now(tmp_path: Path) -> None:
    ev = _store(tmp_path, rows=200)  # 4 small segments
    follower = ObjectFollower(DirectoryBlobStore(tmp_path), 0)
    batch = follower.poll(max_rows=120)
    assert batch is not None
    log = ObjectBackend.on_directory(tmp_path).open_log(0, CONFIG)
    assert log.compact() == 4  # gc_grace_s=0: the batch's segments are deleted at once
    log.close()
    assert rows_of(batch.to_table()) == ev.acked[:120]


def test_open_backend_passes_object_poll_s_to_its_followers(tmp_path: Path) -> None:
    backend = open_backend(f"blobdir://{tmp_path}", StoreConfig(object_poll_s=0.5))
    assert isinstance(backend, ObjectBackend) and backend.poll_s == 0.5 and backend.watch(0).interval_s == 0.5
    assert ObjectBackend.on_directory(tmp_path).poll_s == 0.0  # without a config: every poll looks
