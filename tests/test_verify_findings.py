"""What ``verify`` (and ``repair``, which shares its scanner) must not pass as clean (issue 14
review): rows of another partition, a partition without its tail directory, a DURABLE mark that
fails its checksum; what it says about recorded losses; and errors on one line naming the file.
Real stores written through the partition's in-process path, no Ray."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from es_actors.cli import main
from es_actors.codecs.rows import COL
from es_actors.config import StoreConfig
from es_actors.storage.layout import StoreLayout, partition_of
from es_actors.storage.local.repair import accept_loss, repair_store
from es_actors.storage.local.segments import list_segments, resolve_current, write_segment
from es_actors.storage.local.verify import Finding, verify_store
from es_actors.storage.local.wal import encode_frame, file_header, list_tail_files, scan_tail_file, tail_file_name
from es_actors.write.partition import Partition
from tests.test_integrity import REGISTRY, cmd, copy_of, flip


def accounts_of(p: int, n: int = 3) -> list[str]:
    return [a for a in (f"acct-{i}" for i in range(100)) if partition_of("BankAccount", a, 2) == p][:n]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """Two partitions, each: one sealed segment, then one tail frame (3 events)."""
    root = tmp_path_factory.mktemp("two") / "store"
    StoreLayout(root).create_or_check(2, 2)
    for p in range(2):
        part = Partition(StoreLayout(root), p, REGISTRY, StoreConfig(lock_timeout_s=0))
        part.handle_batch([cmd(a, "OpenAccount", {"owner": a}) for a in accounts_of(p)])
        part.handle_batch([cmd(a) for a in accounts_of(p)])
        part.seal()
        part.handle_batch([cmd(a) for a in accounts_of(p)])
        part.close()
    return root


def segment(root: Path, p: int):
    [seg] = list_segments(resolve_current(root / "log" / f"p{p:04d}"))
    return seg


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_pristine_is_clean(pristine, tmp_path):
    assert verify_store(copy_of(pristine, tmp_path)).clean


# -- item 1: a segment or frame of another partition ----------------------------------------------

def test_a_segment_copied_from_another_partition_is_damage_and_repair_agrees(pristine, tmp_path):
    root = copy_of(pristine, tmp_path)
    theirs, mine = segment(root, 0), segment(root, 1)
    shutil.copy2(theirs.path, mine.path.parent / theirs.path.name)  # with its CRC name: the CRC checks out
    mine.path.unlink()
    report = verify_store(root)
    assert not report.clean
    assert any(f.partition == 1 and f.kind == "segment" and "partition 0" in f.detail for f in report.findings), report.summary()
    assert run("verify", "--store", str(root), "--quiet").exit_code == 2
    repaired = repair_store(root)
    assert "no damage" not in repaired.summary() and repaired.lost and repaired.quarantine
    assert all(r.partition == 1 for r in repaired.lost)
    assert verify_store(root).clean  # the loss is recorded now


def test_rows_whose_aggregate_hashes_to_another_partition_are_damage(pristine, tmp_path):
    """The partition column says 1, but the aggregates hash to 0 (a segment rewritten elsewhere)."""
    root = copy_of(pristine, tmp_path)
    mine = segment(root, 1)
    table = pq.read_table(mine.path)
    strangers = accounts_of(0)
    ids = [strangers[accounts_of(1).index(a)] for a in table.column("aggregate_id").to_pylist()]
    table = table.set_column(table.schema.get_field_index("aggregate_id"), "aggregate_id", [ids])
    mine.path.unlink()
    write_segment(table.cast(table.schema), mine.path.parent, mine.first, mine.last)  # a valid CRC name
    [f] = [f for f in verify_store(root).findings if f.kind == "segment"]
    assert f.partition == 1 and "hashes to partition 0" in f.detail
    assert repair_store(root).lost


def test_a_tail_frame_of_another_partition_is_damage(pristine, tmp_path):
    root = copy_of(pristine, tmp_path)
    [(first0, path0)] = list_tail_files(root / "tail" / "p0000")
    [theirs] = scan_tail_file(path0, True, first0).frames
    [(first1, path1)] = list_tail_files(root / "tail" / "p0001")
    [mine] = scan_tail_file(path1, True, first1).frames
    nxt = mine.rows[-1][COL["position"]] + 1
    rows = [list(r) for r in theirs.rows]
    for i, r in enumerate(rows):
        r[COL["position"]] = nxt + i
    (root / "tail" / "p0001" / tail_file_name(nxt)).write_bytes(file_header(nxt) + encode_frame(rows, nxt))
    report = verify_store(root)
    assert any(f.kind == "tail" and "another partition" in f.detail and f.first == nxt for f in report.findings), report.summary()


# -- item 2: a missing tail directory, a damaged DURABLE mark ------------------------------------

def test_a_partition_whose_tail_directory_is_gone_is_a_finding(pristine, tmp_path):
    root = copy_of(pristine, tmp_path)
    shutil.rmtree(root / "tail" / "p0001")
    [f] = verify_store(root).findings
    assert (f.partition, f.kind, f.file) == (1, "layout", "tail/p0001") and "missing" in f.detail


def test_a_durable_mark_failing_its_checksum_is_a_finding_repair_quarantines_it(pristine, tmp_path):
    root = copy_of(pristine, tmp_path)
    mark = root / "tail" / "p0001" / "DURABLE"
    flip(mark, 3)
    [f] = verify_store(root).findings
    assert (f.partition, f.kind, f.file) == (1, "tail", "tail/p0001/DURABLE") and "checksum" in f.detail
    repaired = repair_store(root)
    assert any("DURABLE" in d for d in repaired.damage) and repaired.quarantine
    assert verify_store(root).clean


# -- item 3: recorded losses are reported, with whether they were accepted --------------------------

def test_verify_after_repair_lists_the_loss_and_whether_it_is_accepted(pristine, tmp_path):
    root = copy_of(pristine, tmp_path)
    segment(root, 1).path.unlink()
    repaired = repair_store(root)
    assert "None" not in repaired.summary() and "nothing quarantined" in repaired.summary()  # item 6
    out = run("verify", "--store", str(root), "--quiet")
    assert out.exit_code == 0, out.output  # a known gap is not damage
    assert "clean" in out.output and "NOT accepted" in out.output and "refuse commands" in out.output
    report = verify_store(root)
    assert report.partitions[1].lost_unaccepted == report.partitions[1].lost_recorded > 0
    accept_loss(root, "alice", "restored elsewhere")
    out = run("verify", "--store", str(root), "--quiet")
    assert out.exit_code == 0 and "accepted by alice" in out.output and "refuse" not in out.output


# -- item 5: errors on one line, naming the file -----------------------------------------------------

@pytest.mark.parametrize("command", [["verify", "--quiet"], ["projections", "list"]])
def test_an_unreadable_store_json_or_lost_ranges_is_one_line_naming_the_file(pristine, tmp_path, command):
    root = copy_of(pristine, tmp_path)
    (root / "store.json").write_text("{}")
    out = run(*command, "--store", str(root))
    assert out.exit_code == 1
    [line] = out.output.strip().splitlines()
    assert "store.json" in line and "partitions" in line and "pydantic" not in line
    if command[0] != "verify":
        return  # (projections list reads no lost ranges)
    (root / "store.json").write_text((pristine / "store.json").read_text())
    (root / "lost-ranges.json").write_text("{bad")
    out = run(*command, "--store", str(root))
    [line] = out.output.strip().splitlines()
    assert out.exit_code == 1 and "lost-ranges.json" in line and "Invalid JSON" in line and "pydantic" not in line


def test_a_file_given_as_the_store_is_not_a_store(tmp_path):
    path = tmp_path / "passwd"
    path.write_text("root:x:0:0\n")
    out = run("verify", "--store", str(path), "--quiet")
    assert out.exit_code == 1 and "not an es_actors store" in out.output and "Corrupted" not in out.output


# -- item 6: minor wording ----------------------------------------------------------------------------

def test_a_copied_tail_file_under_a_wrong_name_does_not_print_backwards_positions(pristine, tmp_path):
    root = copy_of(pristine, tmp_path)
    [(first, path)] = list_tail_files(root / "tail" / "p0001")
    shutil.copy2(path, path.parent / tail_file_name(first + 5))
    report = verify_store(root)
    assert not report.clean
    text = report.summary()
    assert not any(f.first is not None and f.last is not None and f.last < f.first and f"{f.first}..{f.last}" in text
                   for f in report.findings), text
    assert "4..3" not in Finding(partition=0, kind="tail", file="x", first=4, last=3, detail="d").describe()
