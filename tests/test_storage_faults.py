"""Storage faults stop cleanly (issue 8): injected failures in the sealer, the compaction swap,
``fdatasync`` and ``close()``, and the durable mark that keeps readers off frames written but
not yet synced. Ray-free: one PartitionLog on real files in ``tmp_path``; faults are injected by
replacing the module-level syscall hooks (``wal._fdatasync``, ``*.fsync_dir``) or ``Path.unlink``.

Which test covers which item of the issue's "Storage faults stop cleanly" / "Only durable events
are visible" sections:

- the sealer is retry-safe when unlink or the directory fsync fails after a segment was written:
  ``test_sealer_is_retry_safe_when_a_step_after_the_segment_write_fails`` (three faults);
- a failure after the compaction swap cannot leave the in-memory generation stale:
  ``test_a_failure_after_the_compaction_swap_does_not_leave_the_generation_stale``;
- after a failed fdatasync the partition stops, acknowledges nothing more, recovers from disk:
  ``test_after_a_failed_fdatasync_nothing_more_is_acknowledged_and_reopen_recovers`` and
  ``test_a_failed_log_stays_failed_when_its_tail_file_is_rotated``;
- close() waits for a running seal or compaction before releasing the lock:
  ``test_close_waits_for_a_running_seal_before_releasing_the_lock`` (seal and compaction);
- only durable frames are visible (writer held between write and fdatasync):
  ``test_readers_do_not_see_a_frame_held_between_write_and_fdatasync``.
"""

from __future__ import annotations

import errno
import os
import re
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import pytest

from es_actors import StorageError, StoreConfig, WriterFenced
from es_actors.codecs.rows import COL, table_to_rows
from es_actors.storage.local import partition_log, segments, wal
from es_actors.storage.local.follower import LogFollower
from es_actors.storage.layout import StoreLayout
from es_actors.storage.local.partition_log import PartitionLog, acquire_partition_lock
from es_actors.storage.local.reader import read_partition_rows
from es_actors.storage.local.segments import resolve_current
from es_actors.storage.local.wal import list_tail_files, read_tail_file
from tests.test_faults import make_row

POS = COL["position"]
SEGMENT_NAME = re.compile(r"^seg-(\d{20})-(\d{20})(?:-[0-9a-f]{8})?\.parquet$")  # first, last, crc32


# -- helpers -------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path):
    """A fresh one-partition store; every PartitionLog opened through ``open_log`` is closed."""
    layout = StoreLayout(tmp_path / "store")
    layout.create_or_check(1, 1)
    opened: list[PartitionLog] = []

    def open_log(**settings: Any) -> PartitionLog:
        plog = PartitionLog(layout, 0, StoreConfig(partitions=1, lock_timeout_s=0, **settings))
        opened.append(plog)
        return plog

    yield layout, open_log
    for plog in opened:
        plog.close()


def rows(first: int, last: int) -> list[tuple[Any, ...]]:
    return [make_row(p) for p in range(first, last + 1)]


def positions(rs: list[tuple[Any, ...]]) -> list[int]:
    return [r[POS] for r in rs]


def in_sealer() -> bool:
    return threading.current_thread().name.startswith("sealer-")


def current_segment_ranges(layout: StoreLayout) -> list[tuple[int, int]]:
    """(first, last) of every segment file in the generation readers see."""
    gen = resolve_current(layout.log_dir(0))
    assert gen is not None
    found = [m for p in gen.iterdir() if (m := SEGMENT_NAME.match(p.name))]
    return sorted((int(m.group(1)), int(m.group(2))) for m in found)


def assert_each_position_sealed_once(layout: StoreLayout, last: int) -> None:
    covered = Counter(p for first, end in current_segment_ranges(layout) for p in range(first, end + 1))
    assert sorted(covered) == list(range(1, last + 1)), current_segment_ranges(layout)
    assert set(covered.values()) == {1}, f"a position is in two segment files: {current_segment_ranges(layout)}"
    gen = resolve_current(layout.log_dir(0))
    assert gen is not None
    assert not list(gen.glob(".*.tmp")), "a temp segment file was left behind"


def fail_once(original: Callable[..., Any], when: Callable[..., bool]) -> tuple[Callable[..., Any], threading.Event]:
    """A wrapper that raises OSError(EIO) on the first call matching ``when``, then behaves."""
    fired = threading.Event()

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not fired.is_set() and when(*args, **kwargs):
            fired.set()
            raise OSError(errno.EIO, "injected I/O error")
        return original(*args, **kwargs)

    return wrapper, fired


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# -- 1. the sealer is retry-safe -----------------------------------------------------------


@pytest.mark.parametrize("fault", ["unlink-tail-file", "fsync-segment-dir", "fsync-tail-dir"])
def test_sealer_is_retry_safe_when_a_step_after_the_segment_write_fails(store, monkeypatch, fault):
    layout, open_log = store
    tail_dir = layout.tail_dir(0)
    plog = open_log(seal_rows=10**6)
    for first in (1, 5, 9):
        plog.append(rows(first, first + 3))

    if fault == "unlink-tail-file":  # the segment is published, deleting the sealed tail file fails
        orig_unlink = Path.unlink
        wrapper, fired = fail_once(
            orig_unlink, lambda self, *a, **k: in_sealer() and self.suffix == ".wal" and self.parent == tail_dir
        )
        monkeypatch.setattr(Path, "unlink", wrapper)
    elif fault == "fsync-segment-dir":  # write_segment: the rename happened, the directory fsync fails
        wrapper, fired = fail_once(
            segments.fsync_dir, lambda d: in_sealer() and Path(d).name.startswith("gen-")
        )
        monkeypatch.setattr(segments, "fsync_dir", wrapper)
    else:  # the seal loop: tail file unlinked, the tail directory's fsync fails
        wrapper, fired = fail_once(partition_log.fsync_dir, lambda d: in_sealer() and Path(d) == tail_dir)
        monkeypatch.setattr(partition_log, "fsync_dir", wrapper)

    plog.seal_all(timeout_s=10)  # returns: the retry finished the seal
    assert fired.is_set(), "the fault was never injected"
    assert positions(read_partition_rows(layout, 0)) == list(range(1, 13))
    assert_each_position_sealed_once(layout, 12)
    assert [(s.first, s.last) for s in plog.segments.segments] == [(1, 12)]
    assert all(first > 12 for first, _p in list_tail_files(tail_dir)), "the sealed tail file is still there"

    # the log goes on: more rows, another seal, no duplicate or missing segment
    plog.append(rows(13, 17))
    plog.seal_all(timeout_s=10)
    assert positions(read_partition_rows(layout, 0)) == list(range(1, 18))
    assert_each_position_sealed_once(layout, 17)
    plog.close()

    again = open_log(seal_rows=10**6)
    assert again.next_position == 18
    assert again.unsealed_rows() == []
    again.append(rows(18, 19))
    again.close()
    assert read_partition_rows(layout, 0) == rows(1, 19)
    assert_each_position_sealed_once(layout, 17)


# -- 2. a failure after the compaction swap --------------------------------------------------


def test_a_failure_after_the_compaction_swap_does_not_leave_the_generation_stale(store, monkeypatch):
    layout, open_log = store
    log_dir = layout.log_dir(0)
    # segments under 8 rows are small; two side by side are merged
    settings = dict(seal_rows=10**6, compact_small_rows=8, compact_min_run=2)
    plog = open_log(**settings)
    plog.append(rows(1, 5))
    plog.seal_all(timeout_s=10)  # seg 1-5: alone, nothing to compact
    assert resolve_current(log_dir) == log_dir / "gen-000001"

    # the fsync of the partition directory right after `current` was replaced fails once
    wrapper, fired = fail_once(segments.fsync_dir, lambda d: in_sealer() and Path(d) == log_dir)
    monkeypatch.setattr(segments, "fsync_dir", wrapper)
    plog.append(rows(6, 10))
    plog.seal_all(timeout_s=10)  # seg 6-10, then the compaction of 1-5 + 6-10 into gen-000002
    assert fired.wait(5), "the compaction never swapped"
    assert resolve_current(log_dir) == log_dir / "gen-000002", "the swap itself happened"
    wait_for(lambda: plog.seal_error is not None)  # the sealer saw the failure
    assert plog.segments.gen_dir == resolve_current(log_dir), "the writer's generation is stale"
    assert [(s.first, s.last) for s in plog.segments.segments] == [(1, 10)]
    assert all(s.path.parent == plog.segments.gen_dir for s in plog.segments.segments)

    # rows sealed after the failure land where readers look
    plog.append(rows(11, 15))
    plog.seal_all(timeout_s=10)
    assert positions(read_partition_rows(layout, 0)) == list(range(1, 16))
    assert current_segment_ranges(layout) == [(1, 10), (11, 15)]
    assert_each_position_sealed_once(layout, 15)
    plog.close()
    assert read_partition_rows(layout, 0) == rows(1, 15)

    again = open_log(**settings)
    assert again.next_position == 16
    assert again.unsealed_rows() == []
    assert [(s.first, s.last) for s in again.segments.segments] == [(1, 10), (11, 15)]
    again.close()
    assert read_partition_rows(layout, 0) == rows(1, 15)


def test_a_compaction_that_fails_before_its_swap_is_redone_by_the_next_one(store, monkeypatch):
    """Companion case: the merged file of the next generation is renamed, its directory fsync
    fails; ``current`` was not swapped, so the writer stays in the old generation, and the next
    compaction rebuilds the half-built one."""
    layout, open_log = store
    log_dir = layout.log_dir(0)
    settings = dict(seal_rows=10**6, compact_small_rows=8, compact_min_run=2)
    plog = open_log(**settings)
    plog.append(rows(1, 5))
    plog.seal_all(timeout_s=10)
    wrapper, fired = fail_once(segments.fsync_dir, lambda d: in_sealer() and Path(d).name == "gen-000002")
    monkeypatch.setattr(segments, "fsync_dir", wrapper)
    plog.append(rows(6, 10))
    plog.seal_all(timeout_s=10)
    assert fired.wait(5), "the compaction never ran"
    wait_for(lambda: plog.seal_error is not None)
    assert resolve_current(log_dir) == log_dir / "gen-000001"
    assert plog.segments.gen_dir == resolve_current(log_dir)
    assert [(s.first, s.last) for s in plog.segments.segments] == [(1, 5), (6, 10)]
    assert positions(read_partition_rows(layout, 0)) == list(range(1, 11))

    plog.append(rows(11, 15))
    plog.seal_all(timeout_s=10)
    plog.close()  # waits for the compaction the seal started
    assert read_partition_rows(layout, 0) == rows(1, 15)
    assert_each_position_sealed_once(layout, 15)
    again = open_log(**settings)
    assert again.next_position == 16 and again.unsealed_rows() == []
    assert again.segments.gen_dir == resolve_current(log_dir)
    again.close()
    assert read_partition_rows(layout, 0) == rows(1, 15)


# -- 3. a failed fdatasync stops the writer -------------------------------------------------


def fail_fdatasync(monkeypatch: pytest.MonkeyPatch, times: int) -> list[int]:
    """``wal._fdatasync`` raises EIO on its next ``times`` calls, then works again."""
    calls: list[int] = []

    def flaky(fd: int) -> None:
        calls.append(fd)
        if len(calls) <= times:
            raise OSError(errno.EIO, "injected fdatasync failure")
        os.fdatasync(fd)

    monkeypatch.setattr(wal, "_fdatasync", flaky)
    return calls


# times=1: the frame's sync fails, the cut-back's sync works; times=2: both fail
@pytest.mark.parametrize("times", [1, 2])
def test_after_a_failed_fdatasync_nothing_more_is_acknowledged_and_reopen_recovers(store, monkeypatch, times):
    layout, open_log = store
    tail_dir = layout.tail_dir(0)
    plog = open_log(seal_rows=10**6)
    plog.append(rows(1, 2))
    plog.append(rows(3, 4))
    assert plog.failed is None

    calls = fail_fdatasync(monkeypatch, times)
    with pytest.raises(StorageError):
        plog.append(rows(5, 7))
    assert calls, "the fault was never injected"
    assert plog.failed, "a failed fdatasync must mark the log failed"
    assert plog.next_position == 5, "the failed batch must not advance the position"

    # fdatasync works again now, but nothing more is acknowledged
    for _ in range(3):
        with pytest.raises(StorageError):
            plog.append(rows(5, 7))
    assert plog.failed
    assert plog.next_position == 5
    assert positions(read_partition_rows(layout, 0)) == [1, 2, 3, 4]
    batch = LogFollower(layout, 0, after=0).poll()
    assert batch is not None and (batch.first, batch.last) == (1, 4)
    assert wal.DurableMark.read(tail_dir) == 4
    (_first, tail), = list_tail_files(tail_dir)
    file_rows, valid_end, size = read_tail_file(tail)
    assert positions(file_rows) == [1, 2, 3, 4] and valid_end == size, "the failed frame was not cut back"
    plog.close()

    again = open_log(seal_rows=10**6)
    assert again.failed is None
    assert again.unsealed_rows() == rows(1, 4), "the log must hold exactly the acknowledged appends"
    assert again.next_position == 5
    again.append(rows(5, 7))
    again.append(rows(8, 8))
    again.close()
    assert read_partition_rows(layout, 0) == rows(1, 8)

    third = open_log(seal_rows=10**6)
    assert third.next_position == 9
    assert third.unsealed_rows() == rows(1, 8)
    third.seal_all(timeout_s=10)
    third.close()
    assert read_partition_rows(layout, 0) == rows(1, 8)


def test_a_failed_log_stays_failed_when_its_tail_file_is_rotated(store, monkeypatch):
    """The failure belongs to the owner, not to one tail file: sealing (which starts a new tail
    file) must not turn a stopped log back into one that acknowledges appends."""
    layout, open_log = store
    plog = open_log(seal_rows=10**6)
    plog.append(rows(1, 4))
    fail_fdatasync(monkeypatch, 1)
    with pytest.raises(StorageError):
        plog.append(rows(5, 7))
    assert plog.failed
    try:
        plog.seal_all(timeout_s=10)  # may refuse (StorageError) or seal what was acknowledged
    except StorageError:
        pass
    assert plog.failed, "rotating the tail file cleared the failure"
    with pytest.raises(StorageError):
        plog.append(rows(5, 7))
    plog.close()
    again = open_log(seal_rows=10**6)
    assert again.next_position == 5 and read_partition_rows(layout, 0) == rows(1, 4)


# -- 4. close() waits for the sealer --------------------------------------------------------


@pytest.mark.parametrize("slow", ["seal", "compaction"])
def test_close_waits_for_a_running_seal_before_releasing_the_lock(store, monkeypatch, slow):
    layout, open_log = store
    tail_dir, log_dir = layout.tail_dir(0), layout.log_dir(0)
    settings = dict(seal_rows=10**6, compact_small_rows=8, compact_min_run=2)
    plog = open_log(**settings)
    plog.append(rows(1, 5))
    if slow == "compaction":  # a first small segment, so the next seal starts a compaction
        plog.seal_all(timeout_s=10)
        plog.append(rows(6, 10))

    started = threading.Event()
    orig_write_table = segments.pq.write_table

    def slow_write_table(table: Any, where: Any, *args: Any, **kwargs: Any) -> Any:
        if slow == "seal" or Path(where).parent.name != "gen-000001":  # compaction writes the next gen
            started.set()
            time.sleep(1.0)
        return orig_write_table(table, where, *args, **kwargs)

    monkeypatch.setattr(segments.pq, "write_table", slow_write_table)
    plog.rotate()  # hands the tail file to the sealer, which starts at once
    assert started.wait(5), f"the {slow} did not start"

    closer = threading.Thread(target=plog.close, name="closer")
    closer.start()
    time.sleep(0.1)
    assert closer.is_alive(), f"close() returned while a {slow} was still running"
    with pytest.raises(WriterFenced):
        acquire_partition_lock(tail_dir, 0)  # a new owner must not get in while the sealer writes
    assert closer.is_alive(), f"the lock check did not happen while the {slow} was running"
    closer.join(10)
    assert not closer.is_alive()

    fd = acquire_partition_lock(tail_dir, 0)  # released once close() returned
    os.close(fd)
    last = 5 if slow == "seal" else 10
    if slow == "compaction":
        assert resolve_current(log_dir) == log_dir / "gen-000002", "the running compaction was abandoned"
    assert current_segment_ranges(layout) == [(1, last)], "the running seal was not completed"
    assert read_partition_rows(layout, 0) == rows(1, last)
    again = open_log(**settings)
    assert again.next_position == last + 1 and again.unsealed_rows() == []


# -- 5. the durable mark ------------------------------------------------------------------


def test_readers_do_not_see_a_frame_held_between_write_and_fdatasync(store, monkeypatch):
    layout, open_log = store
    tail_dir = layout.tail_dir(0)
    plog = open_log(seal_rows=10**6)
    plog.append(rows(1, 3))
    follower = LogFollower(layout, 0, after=0)
    batch = follower.poll()
    assert batch is not None and (batch.first, batch.last) == (1, 3)

    held, release = threading.Event(), threading.Event()
    armed = [True]

    def gated_fdatasync(fd: int) -> None:
        if armed[0]:
            armed[0] = False
            held.set()
            release.wait(10)
        os.fdatasync(fd)

    monkeypatch.setattr(wal, "_fdatasync", gated_fdatasync)
    errors: list[BaseException] = []

    def append_held() -> None:
        try:
            plog.append(rows(4, 6))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    writer = threading.Thread(target=append_held, name="held-append")
    writer.start()
    try:
        assert held.wait(5), "the append never reached fdatasync"
        (_first, tail), = list_tail_files(tail_dir)
        assert positions(read_tail_file(tail)[0]) == [1, 2, 3, 4, 5, 6], "the held frame's bytes are in the file"

        assert positions(read_partition_rows(layout, 0)) == [1, 2, 3], "a reader saw a frame not yet durable"
        assert follower.poll() is None, "the follower returned a frame not yet durable"
        fresh = LogFollower(layout, 0, after=0).poll()
        assert fresh is not None and (fresh.first, fresh.last) == (1, 3)
        assert wal.DurableMark.read(tail_dir) == 3
    finally:
        release.set()
        writer.join(10)
    assert not errors, errors

    assert read_partition_rows(layout, 0) == rows(1, 6)
    batch = follower.poll()
    assert batch is not None and (batch.first, batch.last) == (4, 6)
    assert table_to_rows(batch.to_table()) == rows(4, 6)
    assert follower.poll() is None
    assert wal.DurableMark.read(tail_dir) == 6
