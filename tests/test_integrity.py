"""Damage versus a torn tail (issue 8), without Ray: damage is refused on every open path with
every byte kept; only the newest file's end may be cut as torn; repair keeps every valid event
and records the loss; the partition then refuses what could reuse a lost version."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from es_actors import DomainRegistry, PartitionDamaged, Store, StoreConfig, StoreCorrupted
from es_actors.write.partition import Partition
from es_actors.write.protocol import CommandEnvelope
from es_actors.codecs.rows import COL
from es_actors.storage.local.follower import LogFollower
from es_actors.storage.layout import StoreLayout
from es_actors.storage.lost_ranges import LostRanges
from es_actors.storage.local.repair import accept_loss, repair_store
from es_actors.storage.local.partition_log import PartitionLog
from es_actors.storage.local.reader import read_partition_rows
from es_actors.storage.local.segments import list_segments, resolve_current
from es_actors.storage.local.wal import FILE_HEADER_SIZE, encode_frame, file_header, list_tail_files, scan_tail_file
from es_actors.storage.local.durable_mark import DurableMark
from es_actors.examples.bank import BankAccount

REGISTRY = DomainRegistry([BankAccount])
ACCOUNTS = [f"acc-{i}" for i in range(4)]


def cmd(aid: str, name: str = "Deposit", payload=None):
    payload = {"amount": 1} if payload is None else payload
    return CommandEnvelope("BankAccount", aid, uuid.uuid4().hex, name, json.dumps(payload))


def open_partition(root: Path) -> Partition:
    return Partition(StoreLayout(root), 0, REGISTRY, StoreConfig(lock_timeout_s=0))


def build_store(root: Path) -> dict[int, str]:
    """One partition: positions 1..12 sealed in a segment, then two unsealed tail files of
    three frames each (a closed one and the newest). Returns position -> aggregate id."""
    StoreLayout(root).create_or_check(1, 1)
    p = open_partition(root)
    p.handle_batch([cmd(a, "OpenAccount", {"owner": a}) for a in ACCOUNTS])
    for _ in range(2):
        p.handle_batch([cmd(a) for a in ACCOUNTS])
    p.seal()
    for i in range(6):  # one frame each: 3 events, aggregates rotating
        p.handle_batch([cmd(ACCOUNTS[(i + k) % 4]) for k in range(3)])
    p.close()
    [(first, path)] = list_tail_files(root / "tail" / "p0000")
    scan = scan_tail_file(path, True, first)
    frames = scan.frames
    path.unlink()
    for part in (frames[:3], frames[3:]):
        start = part[0].first_position
        (root / "tail" / "p0000" / f"{start:020d}.wal").write_bytes(
            file_header(start) + b"".join(encode_frame(list(f.rows)) for f in part)
        )
    (root / "tail" / "p0000" / "DURABLE").unlink()  # as after a machine crash: readers are not held back
    return {r[1]: r[3] for r in read_partition_rows(StoreLayout(root), 0)}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pristine") / "store"
    build_store(root)
    return root


def copy_of(pristine: Path, tmp: Path) -> Path:
    dest = tmp / uuid.uuid4().hex
    shutil.copytree(pristine, dest, symlinks=True)
    return dest


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink() and p.name != "LOCK"}


def damage_targets(root: Path) -> list[tuple[Path, int, int]]:
    """(file, start, end) byte spans a crash cannot explain: every frame of the closed tail file,
    every non-final frame of the newest, the newest file's header, and the whole segment."""
    (_a, closed), (_b, newest) = list_tail_files(root / "tail" / "p0000")
    out = [(closed, 0, FILE_HEADER_SIZE)] + [(closed, f.offset, f.end) for f in scan_tail_file(closed, False).frames]
    frames = scan_tail_file(newest, True).frames
    out += [(newest, 0, FILE_HEADER_SIZE)] + [(newest, f.offset, f.end) for f in frames[:-1]]
    [seg] = list_segments(resolve_current(root / "log" / "p0000"))
    out.append((seg.path, 0, seg.path.stat().st_size))
    return out


def every_open_path_refuses(root: Path, damaged: Path) -> None:
    layout = StoreLayout(root)
    with pytest.raises(StoreCorrupted, match=damaged.name):  # the writer (what the partition actor runs)
        PartitionLog(layout, 0, StoreConfig(lock_timeout_s=0))
    with pytest.raises(StoreCorrupted, match=damaged.name):  # a reader without Ray
        read_partition_rows(layout, 0)
    with pytest.raises(StoreCorrupted, match=damaged.name):  # the read-only store's history
        Store.open(root, [BankAccount], read_only=True).history_rows("BankAccount", ACCOUNTS[0])
    follower = LogFollower(layout, 0)
    with pytest.raises(StoreCorrupted, match=damaged.name):  # projections and subscriptions
        while follower.poll() is not None:
            pass


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_flipped_byte_that_a_crash_cannot_explain_is_refused_everywhere_and_kept(pristine, tmp_path, data):
    root = copy_of(pristine, tmp_path)
    path, start, end = data.draw(st.sampled_from(damage_targets(root)), label="target")
    offset = data.draw(st.integers(start, end - 1), label="offset")
    blob = bytearray(path.read_bytes())
    blob[offset] ^= data.draw(st.integers(1, 255), label="xor")
    path.write_bytes(bytes(blob))
    before = digests(root)
    every_open_path_refuses(root, path)
    assert digests(root) == before  # every byte left as it was
    message = ""
    try:
        PartitionLog(StoreLayout(root), 0, StoreConfig(lock_timeout_s=0))
    except StoreCorrupted as exc:
        message = str(exc)
    assert "repair" in message and ("byte" in message or "CRC-32" in message)


@pytest.mark.parametrize("zero_fill", [False, True])
def test_every_cut_of_the_last_frame_is_a_torn_tail(pristine, tmp_path, zero_fill):
    """A crash can tear only the newest file's last frame: at every offset inside it (or with its
    bytes zeroed, as a file system may leave them) it is cut, and everything before it is kept."""
    (_a, _closed), (_b, newest) = list_tail_files(pristine / "tail" / "p0000")
    last = scan_tail_file(newest, True).frames[-1]
    kept = [p for p in range(1, 31) if p < last.first_position]
    for cut in range(last.offset, last.end):
        root = copy_of(pristine, tmp_path)
        path = root / "tail" / "p0000" / newest.name
        blob = path.read_bytes()
        path.write_bytes(blob[:cut] + b"\0" * (last.end - cut) if zero_fill else blob[:cut])
        assert [r[1] for r in read_partition_rows(StoreLayout(root), 0)] == kept
        log = PartitionLog(StoreLayout(root), 0, StoreConfig(lock_timeout_s=0))
        assert log.next_position == last.first_position
        log.close()
        shutil.rmtree(root)


def test_a_torn_end_below_the_durable_mark_is_damage(pristine, tmp_path):
    """If the writer had published the last frame as durable, its bad end was not a crash mid-write."""
    root = copy_of(pristine, tmp_path)
    (_a, _closed), (_b, newest) = list_tail_files(root / "tail" / "p0000")
    last = scan_tail_file(newest, True).frames[-1]
    mark = DurableMark(root / "tail" / "p0000")
    mark.publish(last.first_position + len(last.rows) - 1, _b)
    mark.close()
    newest.write_bytes(newest.read_bytes()[: last.end - 3])
    before = digests(root)
    with pytest.raises(StoreCorrupted, match="DURABLE"):
        PartitionLog(StoreLayout(root), 0, StoreConfig(lock_timeout_s=0))
    assert digests(root) == before


def flip(path: Path, offset: int) -> None:
    blob = bytearray(path.read_bytes())
    blob[offset] ^= 0x5A
    path.write_bytes(bytes(blob))


def test_repair_keeps_every_valid_event_records_the_loss_and_stops_reuse(pristine, tmp_path):
    root = copy_of(pristine, tmp_path)
    owners = {r[1]: (r[3], r[4]) for r in read_partition_rows(StoreLayout(root), 0)}
    (_a, closed), (_b, newest) = list_tail_files(root / "tail" / "p0000")
    middle = scan_tail_file(newest, True).frames[1]  # a valid frame follows it
    flip(newest, middle.offset + FILE_HEADER_SIZE + 5)  # inside the JSON payload
    damaged_bytes = newest.read_bytes()
    lost = set(range(middle.first_position, middle.first_position + 3))

    report = repair_store(root)
    assert [(r.first, r.last) for r in report.lost] == [(min(lost), max(lost))]
    assert f"LOST partition 0 positions {min(lost)}..{max(lost)}" in report.summary()
    quarantined = root / report.lost[0].quarantined
    assert quarantined.read_bytes() == damaged_bytes  # the damaged original, byte for byte
    survivors = [r[1] for r in read_partition_rows(StoreLayout(root), 0)]
    assert survivors == [p for p in range(1, 31) if p not in lost]  # every valid event, once
    # The aggregates whose later versions survive are named, with the versions they lost.
    named = {a.aggregate_id: a.versions for a in report.lost[0].aggregates if a.evidence == "version gap"}
    expect = {owners[p][0] for p in lost if any(q > p and owners[q][0] == owners[p][0] for q in owners)}
    assert set(named) == expect and all(named[a] == sorted(owners[p][1] for p in lost if owners[p][0] == a) for a in named)

    # Followers (projections, subscriptions) pass the recorded gap knowingly, never stall on it.
    follower, seen = LogFollower(StoreLayout(root), 0), []
    while (batch := follower.poll()) is not None:
        seen += batch.to_table(["position"]).column(0).to_pylist()
    assert seen == survivors

    # The writer opens; no position is handed out again; commands wait for an operator.
    p = open_partition(root)
    assert p.log.next_position == 31
    [result] = p.handle_batch([cmd(ACCOUNTS[0])])
    assert isinstance(result.error, PartitionDamaged) and f"{min(lost)}..{max(lost)}" in str(result.error)
    p.close()
    assert accept_loss(root, "ops-oncall", "bit rot on the tail disk; replayed from upstream")
    assert LostRanges.load(root).ranges[0].accepted.principal == "ops-oncall"
    p = open_partition(root)
    frozen = set(named)
    for aid in ACCOUNTS:
        [result] = p.handle_batch([cmd(aid)])
        if aid in frozen:
            assert isinstance(result.error, PartitionDamaged)
        else:
            assert result.ok and result.rows[0][COL["position"]] >= 31  # new positions after everything ever used
    p.close()


def test_repair_of_a_damaged_segment_quarantines_it(pristine, tmp_path):
    root = copy_of(pristine, tmp_path)
    [seg] = list_segments(resolve_current(root / "log" / "p0000"))
    flip(seg.path, seg.path.stat().st_size // 2)
    damaged = seg.path.read_bytes()
    report = repair_store(root)
    assert report.damage and (root / report.quarantine).is_dir()
    assert any(q.read_bytes() == damaged for q in (root / report.quarantine).iterdir())
    # Row groups whose page checksums still hold are kept; what is not is recorded as lost.
    lost = {p for r in report.lost for p in range(r.first, r.last + 1)}
    assert lost <= set(range(1, 13))
    assert [r[1] for r in read_partition_rows(StoreLayout(root), 0)] == [p for p in range(1, 31) if p not in lost]
    log = PartitionLog(StoreLayout(root), 0, StoreConfig(lock_timeout_s=0))
    assert log.next_position == 31
    log.close()


def test_a_clean_store_is_left_alone_by_repair(pristine, tmp_path):
    root = copy_of(pristine, tmp_path)
    before = digests(root)
    report = repair_store(root)
    assert not report.lost and not report.damage and digests(root) == before


def test_the_cli_reports_damage_as_one_line_naming_the_file(pristine, tmp_path):
    root = copy_of(pristine, tmp_path)
    (_a, closed), _newest = list_tail_files(root / "tail" / "p0000")
    flip(closed, FILE_HEADER_SIZE + 40)
    cli = [sys.executable, "-m", "es_actors.cli"]
    out = subprocess.run([*cli, "history", "BankAccount", ACCOUNTS[0], "--store", str(root)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "StoreCorrupted" in out.stderr and closed.name in out.stderr
    assert "Traceback" not in out.stderr
    out = subprocess.run([*cli, "repair", "--store", str(root), "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["lost"][0]["partition"] == 0


def to_format_1(root: Path) -> None:
    """Rewrite a store as es_actors format 1 wrote it: bare frames, segment names without CRCs."""
    import struct
    import zlib

    for first, path in list_tail_files(root / "tail" / "p0000"):
        frames = scan_tail_file(path, False, first).frames
        payloads = [json.dumps([list(r) for r in f.rows], separators=(",", ":")).encode() for f in frames]
        path.write_bytes(b"".join(struct.pack("<II", len(p), zlib.crc32(p)) + p for p in payloads))
    for seg in (root / "log" / "p0000").glob("gen-*/seg-*.parquet"):
        seg.rename(seg.with_name(seg.name[:45] + ".parquet"))
    (root / "tail" / "p0000" / "DURABLE").unlink(missing_ok=True)
    desc = json.loads((root / "store.json").read_text())
    (root / "store.json").write_text(json.dumps({**desc, "format_version": 1}))


def test_a_format_1_store_reads_refuses_writers_and_upgrades_explicitly(pristine, tmp_path):
    from es_actors import StoreFormatOutdated

    root = copy_of(pristine, tmp_path)
    expected = read_partition_rows(StoreLayout(root), 0)
    to_format_1(root)
    assert read_partition_rows(StoreLayout(root), 0) == expected  # old tail files stay readable
    assert len(Store.open(root, [BankAccount], read_only=True).history_rows("BankAccount", ACCOUNTS[1])) > 1
    with pytest.raises(StoreFormatOutdated, match="es-actors upgrade"):
        Store.open(root, [BankAccount])  # refused before any Ray starts
    out = subprocess.run([sys.executable, "-m", "es_actors.cli", "upgrade", "--store", str(root)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "format 1 -> 2" in out.stdout, out.stderr
    assert json.loads((root / "store.json").read_text())["format_version"] == 2
    assert all(scan_tail_file(p, False, f).version == 2 for f, p in list_tail_files(root / "tail" / "p0000"))
    assert all(s.crc is not None for s in list_segments(resolve_current(root / "log" / "p0000")))
    p = open_partition(root)
    assert [r[1] for r in read_partition_rows(StoreLayout(root), 0)] == list(range(1, 31))
    [result] = p.handle_batch([cmd(ACCOUNTS[0])])
    assert result.ok
    p.close()


def test_an_upgrade_refuses_a_damaged_format_1_tail(pristine, tmp_path):
    root = copy_of(pristine, tmp_path)
    to_format_1(root)
    (_a, closed), _newest = list_tail_files(root / "tail" / "p0000")
    flip(closed, 30)  # inside the first of three frames: valid frames follow
    before = digests(root)
    from es_actors import upgrade_store

    with pytest.raises(StoreCorrupted, match=closed.name):
        upgrade_store(root)
    assert digests(root) == before


def test_a_failed_fdatasync_stops_the_actor_which_recovers_from_disk(store_factory):
    """The batch whose sync failed is not acknowledged; the actor stops taking commands and
    restarts from disk; acknowledged events are all there, nothing is acknowledged twice."""
    from es_actors import StorageError
    from tests.domains import Sync, SyncProbe

    store = store_factory("sync", aggregates=(SyncProbe,), partitions=1)
    probe = store.aggregate(SyncProbe, "p")
    acked = [probe.submit(Sync()).version for _ in range(3)]
    pid = store.stats()[0]["pid"]
    with pytest.raises(StorageError, match="fdatasync failed"):
        probe.submit(Sync(break_next_sync=True))
    import time

    for i in range(3):
        deadline = time.monotonic() + 60
        while True:  # StorageError: nothing written; resend by command id until the restarted actor answers
            try:
                acked.append(probe.submit(Sync(), expected_version=acked[-1], command_id=f"after-{i}").version)
                break
            except StorageError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
    assert store.stats()[0]["pid"] != pid  # a new process recovered from the files
    history = probe.history()
    assert [e.version for e in history] == list(range(1, len(history) + 1))
    assert acked == list(range(1, 4)) + [v for v in acked[3:]] and acked[3:] == [len(history) - 2, len(history) - 1, len(history)]


def test_a_damaged_store_refuses_the_writer_through_ray(pristine, tmp_path, store_factory):
    root = copy_of(pristine, tmp_path)
    (_a, closed), _newest = list_tail_files(root / "tail" / "p0000")
    flip(closed, FILE_HEADER_SIZE + 40)
    before = digests(root)
    shutil.copytree(root, tmp_path / "damaged", symlinks=True)
    with pytest.raises(StoreCorrupted, match=closed.name):  # Store.open itself, before any command
        store_factory("damaged", aggregates=(BankAccount,))
    assert digests(tmp_path / "damaged") == before


# -- missing, misplaced and renamed files (found by a hostile review) -------------------------


def publish_durable(root: Path, last: int) -> None:
    mark = DurableMark(root / "tail" / "p0000")
    mark.publish(last, 1)
    mark.close()


def positions(root: Path) -> list[int]:
    return [r[1] for r in read_partition_rows(StoreLayout(root), 0)]


@pytest.mark.parametrize("how", ["delete", "empty", "rename-ahead"])
def test_a_missing_newest_tail_file_is_corruption_not_the_end_of_the_log(pristine, tmp_path, how):
    """Positions the writer published as durable (or named a file after) but no file holds are
    refused everywhere; repair records them lost; they are never handed out again."""
    root = copy_of(pristine, tmp_path)
    publish_durable(root, 30)
    (_a, _closed), (_b, newest) = list_tail_files(root / "tail" / "p0000")
    if how == "delete":
        newest.unlink()
    elif how == "empty":
        newest.write_bytes(b"")
    else:
        newest.rename(newest.with_name(f"{40:020d}.wal"))
    if how != "rename-ahead":
        with pytest.raises(StoreCorrupted, match="22..30|22"):
            PartitionLog(StoreLayout(root), 0, StoreConfig(lock_timeout_s=0))
        with pytest.raises(StoreCorrupted):
            positions(root)
        follower = LogFollower(StoreLayout(root), 0)
        with pytest.raises(StoreCorrupted):
            while follower.poll() is not None:
                pass
    report = repair_store(root)
    lost = {p for r in report.lost for p in range(r.first, r.last + 1)}
    kept = positions(root)
    assert set(kept) | lost >= set(range(1, 31)) and not set(kept) & lost
    log = PartitionLog(StoreLayout(root), 0, StoreConfig(lock_timeout_s=0))
    assert log.next_position > max(set(kept) | lost)
    log.close()


def test_a_torn_end_below_the_durable_mark_is_refused_by_readers_and_recorded_by_repair(pristine, tmp_path):
    root = copy_of(pristine, tmp_path)
    publish_durable(root, 30)
    (_a, _closed), (_b, newest) = list_tail_files(root / "tail" / "p0000")
    newest.write_bytes(newest.read_bytes()[:-3])
    with pytest.raises(StoreCorrupted, match="DURABLE"):
        positions(root)
    report = repair_store(root)
    assert [(r.first, r.last) for r in report.lost] == [(28, 30)]
    assert positions(root) == list(range(1, 28))
    log = PartitionLog(StoreLayout(root), 0, StoreConfig(lock_timeout_s=0))
    assert log.next_position == 31
    log.close()


@pytest.mark.parametrize("how", ["swap-frames", "rename-file"])
def test_repair_puts_misplaced_frames_and_renamed_files_back_without_loss(pristine, tmp_path, how):
    root = copy_of(pristine, tmp_path)
    (_a, closed), (_b, newest) = list_tail_files(root / "tail" / "p0000")
    if how == "swap-frames":
        frames = scan_tail_file(newest, True).frames
        blob = newest.read_bytes()
        pieces = [blob[f.offset:f.end] for f in frames]
        newest.write_bytes(blob[:FILE_HEADER_SIZE] + pieces[0] + pieces[2] + pieces[1])
    else:
        closed.rename(closed.with_name(f"{99:020d}.wal"))
    with pytest.raises(StoreCorrupted):
        PartitionLog(StoreLayout(root), 0, StoreConfig(lock_timeout_s=0))
    report = repair_store(root)
    assert report.damage and not report.lost
    assert positions(root) == list(range(1, 31))
    log = PartitionLog(StoreLayout(root), 0, StoreConfig(lock_timeout_s=0))
    assert log.next_position == 31
    log.close()


def test_a_repair_that_crashes_part_way_loses_nothing_a_second_one_finishes(pristine, tmp_path, monkeypatch):
    from es_actors.storage.local import repair

    root = copy_of(pristine, tmp_path)
    (_a, _closed), (_b, newest) = list_tail_files(root / "tail" / "p0000")
    middle = scan_tail_file(newest, True).frames[1]
    flip(newest, middle.offset + FILE_HEADER_SIZE + 5)
    real, calls = repair.replace_durably, []

    def crash_on_second(path: Path, data: bytes) -> None:
        calls.append(path.name)
        if len(calls) == 2:
            raise OSError(5, "simulated crash")
        real(path, data)

    monkeypatch.setattr(repair, "replace_durably", crash_on_second)
    with pytest.raises(StoreCorrupted):
        repair_store(root)
    monkeypatch.setattr(repair, "replace_durably", real)
    repair_store(root)
    lost = {p for r in LostRanges.load(root).ranges for p in range(r.first, r.last + 1)}
    assert lost == set(range(middle.first_position, middle.first_position + 3))
    assert positions(root) == [p for p in range(1, 31) if p not in lost]


def test_store_json_is_never_recreated_over_a_log(pristine, tmp_path):
    root = copy_of(pristine, tmp_path)
    (root / "store.json").unlink()
    with pytest.raises(StoreCorrupted, match="store.json"):
        StoreLayout(root).create_or_check(None, 4)
    assert not (root / "store.json").exists()


def test_a_tail_file_replaced_by_a_directory_is_an_es_actors_error(pristine, tmp_path):
    root = copy_of(pristine, tmp_path)
    (_a, _closed), (_b, newest) = list_tail_files(root / "tail" / "p0000")
    newest.unlink()
    newest.mkdir()
    with pytest.raises(StoreCorrupted, match=newest.name):
        PartitionLog(StoreLayout(root), 0, StoreConfig(lock_timeout_s=0))
    with pytest.raises(StoreCorrupted, match=newest.name):
        positions(root)
    follower = LogFollower(StoreLayout(root), 0)
    with pytest.raises(StoreCorrupted, match=newest.name):
        while follower.poll() is not None:
            pass
