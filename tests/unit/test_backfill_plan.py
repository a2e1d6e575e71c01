"""Backfill planning and its files, without Ray: shares cover every position exactly once, cut at
segment boundaries; merge declarations that cannot work are refused; a checkpoint is whole or
absent."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from es_actors.read.backfill.files import BackfillBusy, BackfillDir, TaskCheckpoint
from es_actors.read.backfill.plan import split_ranges
from es_actors.read.merge import Merge


@st.composite
def segmented(draw):
    sizes = draw(st.lists(st.integers(1, 50), max_size=12))
    bounds, first = [], 1
    for n in sizes:
        bounds.append((first, first + n - 1))
        first += n
    sealed = first - 1
    target = sealed + draw(st.integers(0, 40))  # the tail beyond the segments
    after = draw(st.integers(0, target))
    return bounds, target, after, draw(st.integers(1, 80))


@given(segmented())
def test_shares_cover_every_position_once_and_cut_at_segment_ends(case):
    segments, target, after, chunk = case
    shares = split_ranges(segments, target, chunk, after)
    covered = [pos for a, u in shares for pos in range(a + 1, u + 1)]
    assert covered == list(range(after + 1, target + 1))
    ends = {last for _f, last in segments} | {target}
    assert all(u in ends for _a, u in shares)
    assert all(u > a for a, u in shares)


def test_merge_declarations_that_cannot_work_are_refused():
    with pytest.raises(ValueError, match="at least one table"):
        Merge.combining()
    with pytest.raises(ValueError, match="does not have"):
        Merge.combining(nope="INSERT").check("p", ["t"])
    with pytest.raises(ValueError, match="every table; missing"):
        Merge.combining(t="INSERT INTO t SELECT * FROM part").check("p", ["t", "u"])
    Merge.by_aggregate().check("p", ["t", "u"])  # unnamed tables are inserted


def test_a_checkpoint_is_whole_or_absent(tmp_path: Path):
    work = BackfillDir(tmp_path, "p", 1)
    ck = TaskCheckpoint(task="t1", seq=1, positions={0: 10}, applied=10, parked=0, tables=["t"])
    table = pa.table({"k": ["a"], "n": [1]})
    dead = pa.table({"projection": pa.array([], pa.string())})
    work.write_checkpoint(ck, {"t": table}, dead)
    assert work.load_checkpoint("t1") == ck
    ck2 = ck.model_copy(update={"seq": 2, "positions": {0: 20}})
    work.write_checkpoint(ck2, {"t": table}, dead)
    assert work.load_checkpoint("t1") == ck2
    assert not (work.task_dir("t1") / "1").exists()  # the previous part is gone once the new one is named
    (work.task_dir("t1") / "checkpoint.json").write_text('{"task": "t1", "se')  # torn by hand: not trusted
    assert work.load_checkpoint("t1") is None
    work.write_checkpoint(ck2, {"t": table}, dead)
    (work.table_file(ck2, "t")).unlink()  # a part missing: the checkpoint is not used
    assert work.load_checkpoint("t1") is None


def test_one_backfill_per_projection_version_at_a_time(tmp_path: Path):
    a, b = BackfillDir(tmp_path, "p", 1), BackfillDir(tmp_path, "p", 1)
    a.lock()
    try:
        with pytest.raises(BackfillBusy, match="another backfill"):
            b.lock()
        BackfillDir(tmp_path, "p", 2).lock()  # another version is another backfill
    finally:
        a.unlock()
    b.lock()
    b.unlock()
