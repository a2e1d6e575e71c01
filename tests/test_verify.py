"""``es-actors verify`` and ``es-actors compact`` (issue 14), without Ray: real stores written
through the partition's in-process path; verify names each kind of damage (partition, file,
positions), passes a clean store and a gap a repair recorded, writes nothing, works while a
writer appends, seals and compacts, and stops on Ctrl-C with exit 130; compact merges small
segments offline and the log reads the same afterwards."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from es_actors import Store, StoreConfig
from es_actors.cli import main
from es_actors.codecs.rows import COL
from es_actors.jobs.compaction import compact_store
from es_actors.storage.layout import StoreLayout, partition_of
from es_actors.storage.local.reader import read_partition_rows
from es_actors.storage.local.repair import repair_store
from es_actors.storage.local.segments import list_segments, resolve_current
from es_actors.storage.local.verify import verify_store
from es_actors.storage.local.wal import encode_frame, file_header, list_tail_files, scan_tail_file
from es_actors.write.partition import Partition
from es_actors.examples.bank import BankAccount
from tests.test_integrity import ACCOUNTS, REGISTRY, build_store, cmd, copy_of, digests, flip

SMALL = StoreConfig(lock_timeout_s=0, seal_rows=8, compact_small_rows=1000, compact_min_run=100, gc_grace_s=0)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """One partition: positions 1..12 in a segment, then a closed and a newest tail file (3 frames each)."""
    root = tmp_path_factory.mktemp("pristine") / "store"
    build_store(root)
    return root


def segmented(root: Path, seals: int = 5, partitions: int = 1) -> None:
    """A store whose partition 0 holds ``seals`` small sealed segments and nothing in its tail."""
    StoreLayout(root).create_or_check(partitions, 1)
    p = Partition(StoreLayout(root), 0, REGISTRY, StoreConfig(lock_timeout_s=0, compact_min_run=100))
    mine = [a for a in (f"acc-{i}" for i in range(40)) if partition_of("BankAccount", a, partitions) == 0][:len(ACCOUNTS)]
    p.handle_batch([cmd(a, "OpenAccount", {"owner": a}) for a in mine])
    for _ in range(seals):
        p.handle_batch([cmd(a) for a in mine])
        p.seal()
    p.close()


def segments_of(root: Path, partition: int = 0) -> list:
    return list_segments(resolve_current(root / "log" / f"p{partition:04d}"))


def run_verify(root: Path, *args: str):
    return CliRunner().invoke(main, ["verify", "--store", str(root), *args])


def test_a_clean_store_verifies_clean_and_nothing_is_written(pristine, tmp_path):
    root = copy_of(pristine, tmp_path)
    before = digests(root)
    report = verify_store(root)
    assert report.clean and report.partitions[0].events == 30 and report.partitions[0].last_position == 30
    out = run_verify(root)
    assert out.exit_code == 0, out.output
    assert "clean" in out.output and "p0000" in out.output  # the line per partition (stderr is mixed in)
    assert digests(root) == before
    assert Store.open(root, [BankAccount], read_only=True).admin.verify().clean


def test_a_flipped_segment_byte_is_named_with_its_positions(pristine, tmp_path):
    root = copy_of(pristine, tmp_path)
    [seg] = segments_of(root)
    flip(seg.path, seg.path.stat().st_size // 2)
    before = digests(root)
    report = verify_store(root)
    [f] = report.findings
    assert (f.kind, f.partition, f.file, f.first, f.last) == ("segment", 0, str(seg.path.relative_to(root)), 1, 12)
    assert "CRC-32" in f.detail
    out = run_verify(root, "--json")
    assert out.exit_code == 2
    assert json.loads(out.output[out.output.index("{"):])["partitions"][0]["findings"][0]["file"] == f.file
    assert digests(root) == before  # read-only


def test_a_truncated_frame_of_a_closed_tail_file_is_damage_a_torn_newest_end_is_not(pristine, tmp_path):
    root = copy_of(pristine, tmp_path)
    (_a, closed), (_b, newest) = list_tail_files(root / "tail" / "p0000")
    frames = scan_tail_file(closed, False).frames
    closed.write_bytes(closed.read_bytes()[: frames[-1].end - 5])  # the closed file's last frame cut short
    report = verify_store(root)
    assert [(f.kind, f.file, f.first) for f in report.findings if f.kind == "tail"] == [
        ("tail", str(closed.relative_to(root)), frames[-1].first_position)]
    assert "closed tail file" in report.findings[0].detail
    assert run_verify(root).exit_code == 2

    root = copy_of(pristine, tmp_path)  # a crash mid-write of the newest file: torn, not damage
    newest = root / "tail" / "p0000" / newest.name
    last = scan_tail_file(newest, True).frames[-1]
    newest.write_bytes(newest.read_bytes()[: last.end - 5])
    report = verify_store(root)
    assert report.clean and report.partitions[0].torn_bytes > 0


def test_a_deleted_middle_segment_is_a_gap_naming_its_positions(tmp_path):
    root = tmp_path / "store"
    segmented(root)
    segs = segments_of(root)
    assert len(segs) == 5
    gone = segs[2]
    gone.path.unlink()
    report = verify_store(root)
    gaps = [f for f in report.findings if f.kind == "positions"]
    assert [(g.first, g.last) for g in gaps] == [(gone.first, gone.last)]
    assert segs[3].path.name in gaps[0].detail  # where: before the next segment
    out = run_verify(root, "--partition", "0")
    assert out.exit_code == 2 and f"positions {gone.first}..{gone.last}" in out.output


def test_a_version_that_skips_or_repeats_is_named(pristine, tmp_path):
    root = copy_of(pristine, tmp_path)
    (_a, _closed), (_b, newest) = list_tail_files(root / "tail" / "p0000")
    frames = scan_tail_file(newest, True).frames
    rows = [list(r) for r in frames[-1].rows]
    rows[0][COL["version"]] += 2  # checksums are right: only the versions tell
    newest.write_bytes(file_header(frames[0].first_position)
                       + b"".join(encode_frame(list(f.rows)) for f in frames[:-1]) + encode_frame(rows))
    report = verify_store(root)
    [f] = report.findings
    assert f.kind == "versions" and f.first == rows[0][COL["position"]] and rows[0][COL["aggregate_id"]] in f.detail
    assert "missing" in f.detail


def test_a_gap_recorded_by_repair_verifies_clean(pristine, tmp_path):
    root = copy_of(pristine, tmp_path)
    (_a, closed), _newest = list_tail_files(root / "tail" / "p0000")
    middle = scan_tail_file(closed, False).frames[1]
    flip(closed, middle.offset + 40)
    assert not verify_store(root).clean
    repair_store(root)
    report = verify_store(root)
    assert report.clean, report.summary()
    assert report.partitions[0].lost_recorded == 3


def test_verify_while_a_writer_appends_seals_and_compacts(tmp_path):
    """The writer holds its lock, seals every 8 rows, compacts and collects old generations at
    once (no grace): verify, reading without a lock, still finds the log clean every time."""
    root = tmp_path / "store"
    StoreLayout(root).create_or_check(1, 1)
    p = Partition(StoreLayout(root), 0, REGISTRY, SMALL.model_copy(update={"compact_min_run": 3}))
    p.handle_batch([cmd(a, "OpenAccount", {"owner": a}) for a in ACCOUNTS])
    stop = threading.Event()

    def write() -> None:
        while not stop.is_set():
            p.handle_batch([cmd(a) for a in ACCOUNTS[:3]])

    writer = threading.Thread(target=write)
    writer.start()
    reports = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and (len(reports) < 20 or p.log.segments.gen_dir.name < "gen-000004"):
            reports.append(verify_store(root))
    finally:
        stop.set()
        writer.join()
    assert all(r.clean for r in reports), [r.summary() for r in reports if not r.clean]
    assert reports[-1].partitions[0].events > reports[0].partitions[0].events
    assert p.log.segments.gen_dir.name >= "gen-000004", "no compaction happened during the verifies: the test proves less"
    p.close()


def test_ctrl_c_stops_verify_with_exit_130_and_writes_nothing(pristine, tmp_path, monkeypatch):
    import es_actors.storage.local.verify as verify_module

    root = copy_of(pristine, tmp_path)
    before = digests(root)

    def interrupted(*_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(verify_module, "_segment_damage_once", interrupted)
    out = run_verify(root)
    assert out.exit_code == 130 and "verify interrupted: nothing was written" in out.output
    assert digests(root) == before


def test_compact_merges_small_segments_offline_and_the_log_reads_the_same(tmp_path):
    root = tmp_path / "store"
    segmented(root, seals=6, partitions=2)
    rows = read_partition_rows(StoreLayout(root), 0)
    report = compact_store(root, config=StoreConfig(lock_timeout_s=0, compact_min_run=4))
    p0 = report.partitions[0]
    assert (p0.segments_before, p0.segments_after, p0.merged, p0.by) == (6, 1, 6, "here")
    assert report.partitions[1].segments_before == report.partitions[1].segments_after == 0
    assert len(segments_of(root)) == 1
    assert read_partition_rows(StoreLayout(root), 0) == rows
    assert verify_store(root).clean
    out = CliRunner().invoke(main, ["compact", "--store", str(root), "--partition", "0"])
    assert out.exit_code == 0 and "p0000: 1 -> 1 segments" in out.output, out.output
    assert out.output.count("p0000:") == 1 and "none had segments to merge" in out.output  # once; nothing was merged
    assert report.summary().endswith(": 1 of 2 partitions compacted, 6 -> 1 segments"), report.summary()


def test_compact_refuses_a_partition_another_process_writes(tmp_path):
    from es_actors.errors import WriterFenced

    root = tmp_path / "store"
    segmented(root, seals=4)
    p = Partition(StoreLayout(root), 0, REGISTRY, StoreConfig(lock_timeout_s=0))
    try:
        with pytest.raises(WriterFenced, match="partition 0"):
            compact_store(root, config=StoreConfig(lock_timeout_s=0))
    finally:
        p.close()
    assert len(segments_of(root)) == 4


def test_unknown_partition_is_an_es_actors_error(pristine, tmp_path):
    out = run_verify(copy_of(pristine, tmp_path), "--partition", "7")
    assert out.exit_code == 1 and "partitions 0..0, not 7" in out.output
    assert uuid  # (imported for copy_of's names)
