"""The writer's key files of the tail (storage/local/tail_keys.py, tail_key_index.py; ADR-015): a
reader finds an aggregate's unsealed rows from the records, reading only the frames that hold it;
whatever does not check out (damage, a foreign or stale key file, a mark of an older writer) is read
by parsing the tail instead, never with a row missing. Real tail files, no Ray."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from es_actors.codecs.rows import COL
from es_actors.storage import files
from es_actors.storage.backends import aggregate_rows
from es_actors.storage.layout import StoreLayout
from es_actors.storage.local import tail_cursor, tail_key_index, tail_keys
from es_actors.storage.local.backend import LocalBackend
from es_actors.storage.local.reader import read_partition_rows
from es_actors.storage.local.stream_index import runs
from es_actors.testing.storage_conformance import EventLog, small_config

AID, VER, POS, EVENT_ID = COL["aggregate_id"], COL["version"], COL["position"], COL["event_id"]
NO_SEAL = {"seal_rows": 10**7}


def open_log(root: Path, **config: Any) -> Any:
    StoreLayout(root).create_or_check(1, 1)
    return LocalBackend(root).open_log(0, small_config().model_copy(update=config or NO_SEAL))


def full_scan(root: Path, agg: str) -> list[Any]:
    rows = [r for r in read_partition_rows(StoreLayout(root), 0) if r[AID] == agg]
    return sorted(rows, key=lambda r: r[VER])


def index(root: Path) -> tail_key_index.TailKeyIndex:
    return tail_key_index.tail_key_index(tail_cursor.resolved_root(root), 0)


def fresh_reader(root: Path) -> None:
    """Forget what this process read of the store: the next read starts as a new process's would."""
    tail_cursor.release(root)


def tail_dir(root: Path) -> Path:
    return StoreLayout(root).tail_dir(0)


def read(root: Path, agg: str) -> list[Any]:
    return aggregate_rows(StoreLayout(root), 0, "Account", agg)


def test_a_fresh_reader_reads_only_the_frames_of_the_aggregate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new reader process of a long tail: frame bytes read and frames decoded stay those of the
    aggregate's own frames from a tail of 300 frames to one of 3,000 (before: every frame, per process)."""
    costs = []
    for scale in (1, 10):
        root = tmp_path / f"s{scale}"
        log, ev = open_log(root), EventLog()
        try:
            for i in range(300 * scale):
                ev.append(log, ["probe" if i % (30 * scale) == 0 else f"x{i % 50}"])
        finally:
            log.close()
        fresh_reader(root)
        tally = {"wal_bytes": 0, "decoded": 0}
        real_open, real_pread, real_loads = files.open_fd, files.pread_fd, json.loads
        wal_fds: set[int] = set()

        def open_fd(path: Any) -> int:
            fd = real_open(path)
            if str(path).endswith(".wal"):
                wal_fds.add(fd)
            return fd

        def pread(fd: int, length: int, offset: int) -> bytes:
            data = real_pread(fd, length, offset)
            if fd in wal_fds:
                tally["wal_bytes"] += len(data)
            return data

        monkeypatch.setattr(files, "open_fd", open_fd)
        monkeypatch.setattr(files, "pread_fd", pread)
        monkeypatch.setattr(json, "loads", lambda data: tally.__setitem__("decoded", tally["decoded"] + 1) or real_loads(data))
        try:
            got = read(root, "probe")
        finally:
            monkeypatch.undo()
        assert [r[VER] for r in got] == list(range(1, 11)) and got == full_scan(root, "probe")
        assert index(root).held() == 300 * scale  # the key path answered (no fall back to parsing)
        costs.append(tally)
    assert costs[0]["decoded"] == costs[1]["decoded"] == 10  # the probe's 10 frames
    assert costs[1]["wal_bytes"] <= costs[0]["wal_bytes"] * 1.1  # (positions a digit longer)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_key_files_answer_as_a_full_scan_across_rotations_restarts_and_seals(tmp_path_factory: Any, data: Any) -> None:
    root = tmp_path_factory.mktemp("keys") / "s"
    ev = EventLog()
    sizes = pytest.MonkeyPatch()  # records taken one by one, in bulk, and moved from the dict to the sorted array
    sizes.setattr(tail_key_index, "SMALL_INTAKE", data.draw(st.sampled_from([0, 3, 256])))
    sizes.setattr(tail_key_index, "MAX_RECENT", data.draw(st.sampled_from([1, 7, 16_384])))
    log = open_log(root, seal_rows=data.draw(st.sampled_from([5, 17, 10**7])))
    aggs = ["a", "b", "c", "d"]
    try:
        for _ in range(data.draw(st.integers(1, 12))):
            step = data.draw(st.sampled_from(["append", "append", "append", "rotate", "seal", "restart", "read"]))
            if step == "append":
                ev.append(log, data.draw(st.lists(st.sampled_from(aggs), min_size=1, max_size=6)))
            elif step == "rotate":
                log.owner.rotate()  # a closed file waits for the sealer
            elif step == "seal":
                log.seal()
            elif step == "restart":
                seal_rows = log.owner.config.seal_rows
                log.close()
                log = open_log(root, seal_rows=seal_rows)
            else:
                fresh_reader(root) if data.draw(st.booleans()) else None
                for agg in aggs:
                    assert read(root, agg) == full_scan(root, agg)
        for agg in aggs:
            assert read(root, agg) == full_scan(root, agg)
            assert [r[VER] for r in read(root, agg)] == list(range(1, ev.versions.get(agg, 0) + 1))
        assert index(root).retry_at == 0.0, "the key files checked out throughout"
    finally:
        log.close()
        sizes.undo()


def _store_with_tail(root: Path) -> EventLog:
    log, ev = open_log(root), EventLog()
    try:
        for i in range(40):
            ev.append(log, ["a", f"x{i % 7}"] if i % 3 else ["a"])
    finally:
        log.close()
    return ev


def _keys_file(root: Path) -> Path:
    [path] = tail_dir(root).glob("*.keys")
    return path


def _flip_hash_of_record(path: Path, record: int) -> None:
    data = bytearray(path.read_bytes())
    data[tail_keys.HEADER_SIZE + record * tail_keys.RECORD_SIZE + 8] ^= 0xFF  # the stream hash's first byte
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["a record's stream hash", "cut short", "missing", "another tail file's",
                                    "a mark of an older writer", "not a readable file"])
def test_key_files_that_do_not_check_out_are_read_around(tmp_path: Path, damage: str) -> None:
    """Every row still comes back (the tail is parsed instead) and the key path reports it declined."""
    root = tmp_path / "s"
    ev = _store_with_tail(root)
    keys = _keys_file(root)
    if damage == "a record's stream hash":
        _flip_hash_of_record(keys, 3)  # position 4 would be filed under another stream
    elif damage == "cut short":
        os.truncate(keys, keys.stat().st_size - tail_keys.RECORD_SIZE)
    elif damage == "missing":
        keys.unlink()
    elif damage == "not a readable file":
        keys.unlink()
        keys.mkdir()  # opens, but every read fails (EISDIR), as an unreadable file's would
    elif damage == "another tail file's":
        other = tmp_path / "other"
        _store_with_tail(other)
        shutil.copy(_keys_file(other), keys)  # the same names and positions, another file's inode
    else:
        mark = tail_dir(root) / "DURABLE"
        mark.write_bytes(mark.read_bytes()[:20])  # as a writer of before the key files leaves it
    fresh_reader(root)
    for agg in ["a", *(f"x{i}" for i in range(7))]:
        assert read(root, agg) == full_scan(root, agg)
    assert [r[VER] for r in read(root, "a")] == list(range(1, ev.versions["a"] + 1))
    if damage == "a mark of an older writer":
        assert index(root).held() == 0  # never tried: no key file was published
    else:
        assert index(root).retry_at > 0, "the key path declined"
    log = open_log(root)  # derived data: whatever the key file is, the next writer recovers, writes, seals
    try:
        EventLog().append(log, ["z"])
        log.seal()  # (removes the tail file's key file, whatever it is)
    finally:
        log.close()
    fresh_reader(root)
    assert [r[VER] for r in read(root, "a")] == list(range(1, ev.versions["a"] + 1))


def test_a_recovering_writer_rewrites_the_key_files(tmp_path: Path) -> None:
    """Key files are derived data: a damaged one is replaced when the next writer opens the log."""
    root = tmp_path / "s"
    _store_with_tail(root)
    _flip_hash_of_record(_keys_file(root), 0)
    stray = [tail_dir(root) / "00000000000000000099.wal.keys", tail_dir(root) / ".00000000000000000001.wal.keys.tmp"]
    for path in stray:  # a crash between a seal's two unlinks; a crash mid-rewrite
        path.write_bytes(b"left by a crash")
    open_log(root).close()
    assert not any(path.exists() for path in stray)
    fresh_reader(root)
    assert read(root, "a") == full_scan(root, "a")
    assert index(root).retry_at == 0.0 and index(root).held() > 0


def test_colliding_stream_hashes_cost_reads_not_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every aggregate under one hash: the records all match, and each row is checked against the
    aggregate asked for."""
    monkeypatch.setattr(runs, "stream_hash", lambda aggregate_type, aggregate_id: 7)
    root = tmp_path / "s"
    _store_with_tail(root)
    fresh_reader(root)
    for agg in ["a", "x1", "x6", "nobody"]:
        assert read(root, agg) == full_scan(root, agg)
    assert index(root).retry_at == 0.0


def test_closed_tail_files_are_read_by_their_trailers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rotated files wait for the sealer (here it fails, as on a full disk): each key file ends with a
    trailer that a reader checks, and the newest one is checked against the durable mark."""
    from es_actors.storage.local.segments import SegmentSet

    def cannot_seal(self: Any, rows: Any) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(SegmentSet, "seal", cannot_seal)
    root = tmp_path / "s"
    log, ev = open_log(root), EventLog()
    try:
        for i in range(30):
            ev.append(log, ["a", f"x{i % 3}"])
            if i % 10 == 9:
                log.owner.rotate()
        ev.append(log, ["a"])
        assert len(list(tail_dir(root).glob("*.wal.keys"))) == 4
        fresh_reader(root)
        for agg in ["a", "x0", "x1", "x2"]:
            assert read(root, agg) == full_scan(root, agg)
        assert [r[VER] for r in read(root, "a")] == list(range(1, 32))
        assert index(root).retry_at == 0.0 and index(root).held() == 61
    finally:
        monkeypatch.undo()
        log.close()


# -- from the hostile review (session 22) --------------------------------------------------------


def _write(root: Path, tag: str) -> None:
    log, ev = open_log(root), EventLog(tag=tag)
    try:
        for _ in range(5):
            ev.append(log, ["a", "b"])
    finally:
        log.close()


def test_a_store_recreated_at_the_same_path_is_not_answered_from_the_old_ones_rows(tmp_path: Path) -> None:
    """A store deleted and created again at its path, with the same aggregates and frame sizes: on
    ext4 its files get the old inodes back, so its key file is byte for byte the old one. A reader
    that kept its index answered with the deleted store's events (its decoded rows)."""
    root = tmp_path / "s"
    _write(root, "A")
    assert [r[EVENT_ID] for r in read(root, "a")] == ["Ae1", "Ae3", "Ae5", "Ae7", "Ae9"]
    inodes = {p.name: p.stat().st_ino for p in tail_dir(root).iterdir()}
    shutil.rmtree(root)
    _write(root, "B")  # the same shape: event ids of the same length, the same frame sizes
    reused = {p.name for p in tail_dir(root).iterdir() if inodes.get(p.name) == p.stat().st_ino}
    got = read(root, "a")
    assert got == full_scan(root, "a")
    assert [r[EVENT_ID] for r in got] == ["Be1", "Be3", "Be5", "Be7", "Be9"], f"inodes reused: {sorted(reused)}"
    assert read(root, "b") == full_scan(root, "b")
    assert index(root).held() or index(root).retry_at > 0


def test_a_failing_keys_writer_neither_fails_an_append_nor_leaves_a_stray_frame(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The records are made after the frame is written and before it is synced: an error there that
    is not an OSError (here the stream hash; in the field a frame of 4 GiB or more, whose length does
    not fit its record's u32) escaped the writer, so the append failed with its frame left in the
    file, and the next append wrote the same positions again. Key files are derived data: the writer
    turns its key file off, the append succeeds, readers parse the tail."""
    root = tmp_path / "s"
    log, ev = open_log(root), EventLog()
    try:
        ev.append(log, ["a", "b"])

        def broken(aggregate_type: str, aggregate_id: str) -> int:
            raise ValueError("cannot hash")

        monkeypatch.setattr(runs, "stream_hash", broken)
        ev.append(log, ["a"])
        monkeypatch.undo()
        ev.append(log, ["a", "b"])
        assert [r[VER] for r in read(root, "a")] == [1, 2, 3]
        assert read(root, "a") == full_scan(root, "a")
    finally:
        log.close()
    log = open_log(root)  # recovery finds one frame per acknowledged append, and writes the key file afresh
    log.close()
    fresh_reader(root)
    assert [r[VER] for r in read(root, "a")] == [1, 2, 3] and read(root, "b") == full_scan(root, "b")
    assert index(root).retry_at == 0.0 and index(root).held() == 5


def test_a_reader_following_the_tail_reads_each_new_frame_of_its_aggregate_once_and_no_other(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A long-lived reader of a growing tail (the steady state under writers): after its first read,
    each read opens no file, reads the key records published since with one positioned read, and
    reads and decodes only the aggregate's frames it has not decoded before, whatever the tail's
    length and however many frames of other aggregates were appended meanwhile (before: every new
    frame was parsed by every reader process)."""
    root = tmp_path / "s"
    log, ev = open_log(root), EventLog()
    tally = {"opens": 0, "preads": 0, "decoded": 0}
    real_open, real_pread, real_loads = files.open_fd, files.pread_fd, json.loads
    try:
        for i in range(300):
            ev.append(log, ["a" if i % 30 == 0 else f"x{i % 9}"])
        assert read(root, "a") == full_scan(root, "a")  # first read: the records taken in bulk
        monkeypatch.setattr(files, "open_fd", lambda path: tally.__setitem__("opens", tally["opens"] + 1) or real_open(path))
        monkeypatch.setattr(files, "pread_fd", lambda fd, n, at: tally.__setitem__("preads", tally["preads"] + 1) or real_pread(fd, n, at))
        monkeypatch.setattr(json, "loads", lambda data: tally.__setitem__("decoded", tally["decoded"] + 1) or real_loads(data))
        for k in range(40):
            for j in range(k % 4):
                ev.append(log, [f"x{j}"])  # frames of other aggregates: never read
            ev.append(log, ["a"])
            tally.update(opens=0, preads=0, decoded=0)
            got = read(root, "a")
            assert [r[VER] for r in got] == list(range(1, ev.versions["a"] + 1))
            assert tally == {"opens": 0, "preads": 2, "decoded": 1}, k  # the new records; the new frame of "a"
            tally.update(opens=0, preads=0, decoded=0)
            assert read(root, "a") == got and tally == {"opens": 0, "preads": 0, "decoded": 0}  # nothing new
        monkeypatch.undo()
        assert read(root, "a") == full_scan(root, "a")
        assert index(root).retry_at == 0.0 and index(root).held() == 300 + sum(k % 4 + 1 for k in range(40))
    finally:
        log.close()


_WRITER = """
import sys
from pathlib import Path
from es_actors.storage.local.backend import LocalBackend
from es_actors.testing.storage_conformance import EventLog, small_config
log = LocalBackend(Path(sys.argv[1])).open_log(0, small_config().model_copy(update={"seal_rows": 40}))
ev = EventLog()
for i in range(1, 100_000):
    ev.append(log, ["a", "b", "c"][: 1 + i % 3] + ["k"])
    print(i, flush=True)  # acknowledged: durable, and published in DURABLE with its key records
"""


def test_readers_racing_a_writer_killed_mid_write_miss_no_acknowledged_event(tmp_path: Path) -> None:
    """A writer process appends (rotating and sealing every 40 rows) while this process reads one
    aggregate through the key files; then the writer is killed (SIGKILL, no close). Every read is a
    gapless prefix holding at least every event acknowledged before it began; after recovery a new
    reader sees every acknowledged event, as a full scan does. Bounded: 600 appends or 20 s."""
    import subprocess
    import sys
    import threading
    import time

    root = tmp_path / "s"
    StoreLayout(root).create_or_check(1, 1)
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(root)], stdout=subprocess.PIPE, text=True)
    acked = [0]

    def follow() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            acked[0] = int(line)

    threading.Thread(target=follow, daemon=True).start()
    reads = 0
    try:
        deadline = time.monotonic() + 20
        while acked[0] < 600 and time.monotonic() < deadline:
            before = acked[0]  # append i adds one event of "k": version i
            got = [r[VER] for r in read(root, "k")]
            assert got == list(range(1, len(got) + 1)) and len(got) >= before, (before, got[-3:])
            reads += 1
    finally:
        proc.kill()
        proc.wait()
    assert reads > 20 and acked[0] >= 100
    assert index(root).retry_at == 0.0 and index(root).held() > 0, "the key files answered under the racing writer"
    open_log(root, seal_rows=40).close()  # recovery: a torn end cut, the key files rewritten
    fresh_reader(root)
    for agg in "abck":
        assert read(root, agg) == full_scan(root, agg)
    assert len(read(root, "k")) >= acked[0]


# -- from the hostile review (session 23) --------------------------------------------------------


def test_a_store_recreated_with_its_tail_in_other_files_is_not_answered_from_the_old_stores_files(
        tmp_path: Path) -> None:
    """The reader keeps the tail files open: a store deleted and created again at its path, holding
    the same positions in other tail files (here rotated after position 5), was answered from the
    deleted store's files and decoded rows (its files kept open, never checked again)."""
    root = tmp_path / "s"
    log, ev = open_log(root), EventLog(tag="A")
    try:
        for _ in range(10):
            ev.append(log, ["a"])
    finally:
        log.close()
    assert [r[EVENT_ID] for r in read(root, "a")] == [f"Ae{i}" for i in range(1, 11)]
    shutil.rmtree(root)
    log, ev = open_log(root), EventLog(tag="B")
    try:
        for i in range(10):
            ev.append(log, ["a"])
            if i == 4:
                log.owner.rotate()
    finally:
        log.close()
    got = read(root, "a")
    assert got == full_scan(root, "a")
    assert [r[EVENT_ID] for r in got] == [f"Be{i}" for i in range(1, 11)]


def test_a_reader_goes_on_through_the_key_files_after_a_writer_restart(tmp_path: Path) -> None:
    """A recovering writer rewrites the key files (a new file, renamed over the old): a reader that
    kept the old one open read on in it, found it short of the durable mark and fell back to
    parsing the tail (and stayed off the key files for a while) after every writer restart."""
    root = tmp_path / "s"
    log, ev = open_log(root), EventLog()
    try:
        for i in range(20):
            ev.append(log, ["a", f"x{i % 3}"])
        assert read(root, "a") == full_scan(root, "a")
    finally:
        log.close()
    log = open_log(root)
    try:
        for i in range(5):
            ev.append(log, ["a"])
        got = read(root, "a")
        assert got == full_scan(root, "a") and len(got) == 25
        assert index(root).retry_at == 0.0 and index(root).held() == 45, "the key files answered"
    finally:
        log.close()


_MANY_PARTITIONS = """
import os, resource, sys
from pathlib import Path
from es_actors.storage.backends import aggregate_rows
from es_actors.storage.layout import StoreLayout
from es_actors.storage.local.backend import LocalBackend
from es_actors.storage.local.reader import read_partition_rows
from es_actors.storage.local import tail_cursor, tail_key_index
from es_actors.testing.storage_conformance import EventLog, small_config
root, P = Path(sys.argv[1]), 40
StoreLayout(root).create_or_check(P, P)
for p in range(P):
    log = LocalBackend(root).open_log(p, small_config().model_copy(update={"seal_rows": 10**7}))
    EventLog(partition=p, tag=f"p{p}-").append(log, ["a", "b"])
    log.close()
fds = lambda: len(os.listdir("/proc/self/fd"))
limit = int(sys.argv[2]) if len(sys.argv) > 2 else fds() + 60
assert fds() + 12 <= limit, fds()  # (what the reads need with no file kept open)
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
for _ in range(2):
    for p in range(P):
        got = aggregate_rows(StoreLayout(root), p, "Account", "a")
        assert got == [r for r in read_partition_rows(StoreLayout(root), p) if r[3] == "a"], p
        index = tail_key_index.tail_key_index(tail_cursor.resolved_root(root), p)
        assert index.retry_at == 0.0 and index.held() == 2, p  # the key files answered (opened again)
print("ok")
"""


def test_a_reader_of_many_partitions_keeps_few_files_open(tmp_path: Path) -> None:
    """A reader keeps each partition's tail and key files open across reads: one that read 40
    partitions held 80 files, and in a process allowed 60 more its reads failed (EMFILE, reported
    as a damaged store). Past a budget the least recently read partitions close theirs."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _MANY_PARTITIONS, str(tmp_path / "s")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_a_reader_allowed_few_files_keeps_at_most_a_quarter_of_them_open(tmp_path: Path) -> None:
    """In a process allowed 20 files, the kept files took 16 (a floor under the quarter of the
    limit), and the reads of a store of 40 partitions failed (EMFILE, reported as a damaged store)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _MANY_PARTITIONS, str(tmp_path / "s"), "20"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def _held_open(path: Path) -> bool:
    """Whether this process holds a file at or under ``path`` open."""
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            targets.append(os.readlink(f"/proc/self/fd/{fd}"))
        except FileNotFoundError:
            pass  # (the listing's own descriptor, closed since)
    return any(t.startswith(str(path)) for t in targets)


def test_a_sealed_tail_file_a_reader_no_longer_reads_is_not_held_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader of partitions 0 and 1 stops reading partition 0 after its tail was sealed (the tail
    file deleted). Its kept files would pin the deleted file's disk space until Store.close; a
    partition not read for IDLE_S closes its files at the process's next read of another."""
    import time

    from es_actors.storage.local import kept_files

    root = tmp_path / "s"
    StoreLayout(root).create_or_check(2, 2)
    logs = [LocalBackend(root).open_log(p, small_config().model_copy(update=NO_SEAL)) for p in (0, 1)]
    evs = [EventLog(partition=p, tag=f"p{p}-") for p in (0, 1)]
    try:
        for p, log in enumerate(logs):
            evs[p].append(log, ["a", "b"])
            assert aggregate_rows(StoreLayout(root), p, "Account", "a")  # through the key files: kept open
        sealed_tail = next(StoreLayout(root).tail_dir(0).glob("*.wal")).resolve()
        logs[0].seal()
        assert not sealed_tail.exists() and _held_open(sealed_tail)  # deleted, still open: its space not freed
        monkeypatch.setattr(kept_files, "IDLE_S", 0.05)
        time.sleep(0.1)
        evs[1].append(logs[1], ["a"])
        assert [r[VER] for r in aggregate_rows(StoreLayout(root), 1, "Account", "a")] == [1, 2]  # partition 1 only
        assert not _held_open(sealed_tail)
        assert aggregate_rows(StoreLayout(root), 0, "Account", "a") == full_scan(root, "a")
    finally:
        for log in logs:
            log.close()


def test_a_read_racing_store_close_keeps_nothing_open_after_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Store.close ran between a reader taking its partition's index and locking it: the read opened
    the files again and the process's budget of kept files took the released index in, holding it
    (its records, its open files, a sealed tail file's disk space) with no one left to read or
    release it."""
    import gc
    import weakref

    from es_actors.storage.local import aggregate_read, kept_files

    root = tmp_path / "s"
    log = open_log(root)
    ev = EventLog(tag="c-")
    taken: list[Any] = []
    lookup = aggregate_read.tail_key_index

    def closed_meanwhile(resolved: str, partition: int) -> tail_key_index.TailKeyIndex:
        found = lookup(resolved, partition)
        taken.append(weakref.ref(found))
        tail_cursor.release(root)  # (Store.close, in another thread, before this reader takes the lock)
        return found

    try:
        ev.append(log, ["a", "b"])
        assert read(root, "a") == full_scan(root, "a")  # its files kept open
        monkeypatch.setattr(aggregate_read, "tail_key_index", closed_meanwhile)
        ev.append(log, ["a"])
        assert read(root, "a") == full_scan(root, "a")
        monkeypatch.undo()
    finally:
        log.close()
    assert not _held_open(tail_dir(root).resolve())  # (the writer's files closed: only a reader's could be)
    assert not any(h is r() for r in taken for h, _n, _t in kept_files._held.values())
    gc.collect()
    assert [r() for r in taken] == [None]  # the released index is freed


def test_a_read_with_an_older_durable_mark_than_another_threads_is_answered_by_the_key_files(tmp_path: Path) -> None:
    """Two threads of a process read one partition: the one that read the durable mark first took the
    lock second, found the key file "shorter than taken", and the index started over and rested
    (1 s, doubling): under concurrent reads most of them parsed the tail."""
    from es_actors.storage.local import aggregate_read
    from es_actors.storage.local.log_place import log_place, lost_ranges

    root = tmp_path / "s"
    log = open_log(root)
    ev = EventLog(tag="m-")
    try:
        ev.append(log, ["a", "b"])
        assert read(root, "a") == full_scan(root, "a")
        layout = StoreLayout(root)
        lost = lost_ranges(layout.root)
        older = log_place(layout, 0, lost, cached=True)  # one thread read the mark ...
        ev.append(log, ["a", "b"])
        assert read(root, "a") == full_scan(root, "a")  # ... another read a newer one, and took the lock first
        got = aggregate_read._tail_part(layout, 0, lost, older, ("Account", "a"))
        assert older.durable == 2 and got == full_scan(root, "a")[:1]
        assert index(root).retry_at == 0.0 and index(root).held() == 4  # not started over, not resting
    finally:
        log.close()
