"""The stream index (ADR-015), without Ray, on real files: lookups equal a filtered full scan of the
log, whatever the history, merges, hash collisions and lost ranges; damaged, truncated, foreign
and stale runs are skipped by readers (never a missed or duplicated row) and rebuilt by the
owner; one lookup costs what it returns, not what the store holds."""

from __future__ import annotations

import atexit
import contextlib
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from es_actors import StoreConfig
from es_actors.codecs.rows import ARROW_SCHEMA, table_to_rows
from es_actors.storage import files
from es_actors.storage.layout import StoreLayout
from es_actors.storage.lost_ranges import LostRange, LostRanges, now_text, record_lost_ranges
from es_actors.storage.local import segments as segments_module
from es_actors.storage.local.partition_log import PartitionLog
from es_actors.storage.local.segments import Segment, SegmentSet, list_segments, resolve_current
from es_actors.storage.local.stream_index import StreamIndex, StreamIndexWriter, build_index, index_dir
from es_actors.storage.local.stream_index import reading, runs
from es_actors.storage.local.stream_index.upkeep import IndexUpkeep

Row = tuple[Any, ...]


def make_store(root: Path) -> StoreLayout:
    layout = StoreLayout(root)
    layout.create_or_check(1, 1)
    return layout


def event_rows(aggregates: list[tuple[str, str]], first: int = 1, payload: str = '{"n": 0}') -> list[Row]:
    """One event per entry (in order), positions from ``first``, versions per aggregate."""
    versions: dict[tuple[str, str], int] = {}
    out = []
    for k, (t, i) in enumerate(aggregates):
        v = versions[(t, i)] = versions.get((t, i), 0) + 1
        p = first + k
        out.append((0, p, t, i, v, "E", 1, f"e{p}", f"c{p}", "d", None, None, None, p, payload, "{}"))
    return out


def seal_chunks(layout: StoreLayout, rows: list[Row], sizes: list[int], lost: set[int] = frozenset()) -> None:
    """Seal ``rows`` as segments of the given sizes; chunks at indexes in ``lost`` are recorded lost."""
    recorded = []
    k = 0
    chunks = []
    for n, size in enumerate(sizes):
        chunk = rows[k:k + size]
        k += size
        if chunk:
            chunks.append((n, chunk))
    for n, chunk in chunks:
        if n in lost:
            recorded.append(LostRange(partition=0, first=chunk[0][1], last=chunk[-1][1], source="test", offset=0,
                                      quarantined="", detail="test", recorded_at=now_text()))
    if recorded:
        record_lost_ranges(layout.root, recorded)
    seg_set = SegmentSet(layout.log_dir(0), lost=LostRanges.load(layout.root), partition=0)
    for n, chunk in chunks:
        if n not in lost:
            seg_set.seal(chunk)


def current_segments(layout: StoreLayout) -> tuple[list[Segment], LostRanges]:
    lost = LostRanges.load(layout.root)
    gen = resolve_current(layout.log_dir(0))
    return (list_segments(gen, lost, 0) if gen is not None else []), lost


def full_scan(layout: StoreLayout, t: str, i: str, lo: int = 1, hi: int | None = None) -> list[Row]:
    segs, _lost = current_segments(layout)
    if not segs:
        return []
    table = pa.concat_tables([pq.read_table(s.path, schema=ARROW_SCHEMA) for s in segs])
    mask = pc.and_(pc.equal(table["aggregate_type"], t), pc.equal(table["aggregate_id"], i))
    table = table.filter(mask)
    rows = sorted(zip(*[table[c].to_pylist() for c in ARROW_SCHEMA.names]), key=lambda r: r[4])
    return [r for r in rows if r[4] >= lo and (hi is None or r[4] <= hi)]


def indexed_read(layout: StoreLayout, t: str, i: str, lo: int = 1, hi: int | None = None) -> tuple[list[Row], int]:
    """What a reader does: the index for 1..covered, the segments after it; (rows, covered)."""
    segs, lost = current_segments(layout)
    view = StreamIndex(layout, 0).view(segs, lost)
    table = view.aggregate(t, i, lo, hi)
    rest = [s for s in segs if s.last > view.covered]
    if rest:
        extra = pa.concat_tables([pq.read_table(s.path, schema=ARROW_SCHEMA) for s in rest])
        extra = extra.filter(pc.and_(pc.and_(pc.equal(extra["aggregate_type"], t), pc.equal(extra["aggregate_id"], i)),
                                     pc.greater(extra["position"], view.covered)))
        table = pa.concat_tables([table, extra])
    rows = list(zip(*[table[c].to_pylist() for c in ARROW_SCHEMA.names]))
    rows = [r for r in rows if r[4] >= lo and (hi is None or r[4] <= hi)]
    return rows, view.covered


def sealed_last(layout: StoreLayout) -> int:
    segs, _ = current_segments(layout)
    return segs[-1].last if segs else 0


def writer(layout: StoreLayout, merge_factor: int = 8) -> StreamIndexWriter:
    desc = layout.read_descriptor()
    assert desc is not None
    return StreamIndexWriter(layout, 0, desc.store_id, StoreConfig(), merge_factor=merge_factor)


def reconcile(layout: StoreLayout, merge_factor: int = 8) -> StreamIndexWriter:
    w = writer(layout, merge_factor)
    segs, lost = current_segments(layout)
    assert w.reconcile(segs, lost)
    w.merge()
    return w


def run_files(layout: StoreLayout) -> list[Path]:
    return sorted(index_dir(layout, 0).glob("run-*.arrow"))


@contextlib.contextmanager
def hash_patched(fn: Any) -> Iterator[None]:
    saved = runs.stream_hash
    runs.stream_hash = fn
    try:
        yield
    finally:
        runs.stream_hash = saved


def colliding_hash(t: str, i: str) -> int:
    """Only three hash values: most aggregates share their hash with others."""
    return saved_hash(t, i) % 3


saved_hash = runs.stream_hash

histories = st.lists(st.tuples(st.sampled_from(["A", "B"]), st.integers(0, 60).map(str)), min_size=1, max_size=150)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=histories, sizes=st.lists(st.integers(1, 25), min_size=1, max_size=10), data=st.data(),
       collide=st.booleans(), factor=st.sampled_from([2, 3, 8]))
def test_lookups_equal_a_filtered_full_scan(history, sizes, data, collide, factor) -> None:
    """Whatever the history, segment sizes, merge factor, collisions and lost ranges: every
    aggregate's rows and version ranges from the index equal the same filter over the log."""
    sizes = sizes + [len(history)]  # every event lands in some segment
    lost = set(data.draw(st.sets(st.integers(0, len(sizes) - 1), max_size=2)))
    with tempfile.TemporaryDirectory() as tmp, hash_patched(colliding_hash if collide else saved_hash):
        layout = make_store(Path(tmp))
        seal_chunks(layout, event_rows(history), sizes, lost)
        reconcile(layout, factor)
        assert indexed_read(layout, "A", "0")[1] == sealed_last(layout), "the whole sealed log is covered"
        for t, i in set(history) | {("A", "missing")}:
            assert indexed_read(layout, t, i)[0] == full_scan(layout, t, i), (t, i)
            lo = data.draw(st.integers(1, 12))
            hi = data.draw(st.one_of(st.none(), st.integers(lo, 14)))
            assert indexed_read(layout, t, i, lo, hi)[0] == full_scan(layout, t, i, lo, hi), (t, i, lo, hi)


def small_store(root: Path, n_segments: int = 4, per_segment: int = 50) -> StoreLayout:
    layout = make_store(root)
    history = [("A", str(k % 7)) for k in range(n_segments * per_segment)]
    seal_chunks(layout, event_rows(history), [per_segment] * n_segments)
    reconcile(layout)
    return layout


def answers_equal_full_scan(layout: StoreLayout) -> int:
    covered = 0
    for k in range(7):
        rows, covered = indexed_read(layout, "A", str(k))
        assert rows == full_scan(layout, "A", str(k)), k
    return covered


def key_column_offset(path: Path, column: str) -> int:
    """The file offset of a column's data buffer in a run (where to flip a byte)."""
    with pa.memory_map(str(path)) as f:
        base = f.read_buffer().address  # zero-copy: the map's start
        f.seek(0)
        batch = pa.ipc.open_file(f).get_batch(0)
        return batch.column(column).buffers()[-1].address - base


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def damage_truncate(layout: StoreLayout, victim: Path) -> None:
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])


def damage_key_column(layout: StoreLayout, victim: Path) -> None:
    flip(victim, key_column_offset(victim, "version") + 3 * 8)


def damage_hash_column(layout: StoreLayout, victim: Path) -> None:
    flip(victim, key_column_offset(victim, "stream_hash") + 8 * 10 + 7)


def damage_aggregate_id(layout: StoreLayout, victim: Path) -> None:
    flip(victim, key_column_offset(victim, "aggregate_id"))  # no key CRC covers it: the lookup's checks do


def test_damaged_truncated_runs_are_skipped_by_readers_and_rebuilt_by_the_writer(tmp_path) -> None:
    for n, damage in enumerate([damage_truncate, damage_key_column, damage_hash_column, damage_aggregate_id]):
        layout = small_store(tmp_path / str(n))
        victims = run_files(layout)
        assert len(victims) == 4
        good = victims[1].read_bytes()
        damage(layout, victims[1])
        covered = answers_equal_full_scan(layout)  # never a missed or duplicated row
        if damage is damage_aggregate_id:  # found by the lookup's row checks: that run's rows come from the log
            assert isinstance(reading.load_runs(index_dir(layout, 0))[victims[1].name], str)
        else:
            assert covered == 50, f"{damage.__name__}: readers stop using the index at the damaged run"
        reconcile(layout)  # the writer checks whole files: deletes the damaged run, rebuilds it
        assert victims[1].read_bytes() == good, damage.__name__
        assert answers_equal_full_scan(layout) == 200, damage.__name__
        assert len(run_files(layout)) == 4


def test_cached_slices_are_bound_to_the_run_file_and_never_hide_damage(tmp_path, monkeypatch) -> None:
    """aggregate_rows keeps checked slices as tuples (row_cache); a run changed in place has another
    file identity, so its slices are looked up and checked again: the damage is found, the run
    dropped, and reads still answer what the log holds."""
    from es_actors.storage.local.aggregate_read import read_aggregate_rows
    from es_actors.storage.local.stream_index import row_cache

    monkeypatch.setattr(row_cache, "MAX_SLICE_ROWS", 10_000)  # every slice cached (~7 rows here)

    layout = small_store(tmp_path / "s")
    victims = run_files(layout)
    segs, lost = current_segments(layout)

    def read(k: int) -> list[tuple[int, int]]:
        return [(r[1], r[4]) for r in read_aggregate_rows(layout, 0, "A", str(k))]

    want = {k: [(r[1], r[4]) for r in full_scan(layout, "A", str(k))] for k in range(7)}
    for k in range(7):
        view = StreamIndex(layout, 0).view(segs, lost)
        assert view.aggregate_rows("A", str(k)) == table_to_rows(view.aggregate("A", str(k)))
        assert read(k) == want[k] and read(k) == want[k]  # the second from the cache
    assert len(row_cache._cache) >= 7 * len(victims) - 1
    time.sleep(0.02)  # the damage gets a later mtime than the run's write (coarse file clocks)
    damage_aggregate_id(layout, victims[1])
    for k in range(7):
        assert read(k) == want[k], k
    assert isinstance(reading.load_runs(index_dir(layout, 0))[victims[1].name], str)


def test_a_run_whose_block_crcs_match_invalid_utf8_is_refused_at_lookup(tmp_path) -> None:
    """Block CRCs prove the bytes are those written, not that they are valid Arrow: each block also
    passes validate(full=True) (once per process, with its CRC) before a row of it is used. A run
    written with a payload that is not UTF-8 (its CRCs computed over those bytes) is dropped at
    lookup and the answer comes from the log, in a process that read the run fine just before."""
    layout = small_store(tmp_path / "s")
    assert answers_equal_full_scan(layout) == 200  # the runs are open, their other blocks checked
    victim = run_files(layout)[2]
    old = runs.open_run(victim)
    payload = old.batch.column("payload")
    data = bytearray(payload.buffers()[2].to_pybytes())
    data[int(np.frombuffer(payload.buffers()[1], dtype=np.int32)[3])] = 0xFF  # row 3's first byte
    bad = pa.Array.from_buffers(pa.string(), len(payload), [payload.buffers()[0], payload.buffers()[1],
                                                            pa.py_buffer(bytes(data))])
    table = pa.Table.from_batches([old.batch]).set_column(RUN_PAYLOAD, "payload", bad)
    meta = {"store_id": old.meta.store_id, "partition": old.meta.partition, "sources": old.meta.sources,
            "tier": old.meta.tier}
    time.sleep(0.25)  # past the racy window of the directory listing
    written = runs.write_run(victim.parent, table, meta)
    victim.unlink()
    assert runs.open_run(written).meta.rows == old.meta.rows  # a well-formed run: key and block CRCs match
    assert answers_equal_full_scan(layout) == 100, "readers stop using the index at the refused run"
    why = reading.load_runs(index_dir(layout, 0))[written.name]
    assert isinstance(why, str) and "utf" in why.lower() and "crc" not in why.lower(), why


RUN_PAYLOAD = runs.RUN_SCHEMA.get_field_index("payload")


def varied_rows(n: int, aggregates: int = 5) -> list[Row]:
    """Rows whose every column varies: payloads, ids, timestamps, and correlation ids null on odd
    positions (a null bit flipped must not read as a value)."""
    rows = event_rows([("A", str(k % aggregates)) for k in range(n)])
    return [r[:10] + ((f"k{r[1]}" if r[1] % 2 == 0 else None),) + r[11:13] + (r[1] * 1_000_003,)
            + (f'{{"n": {r[1] * 7919}}}', f'{{"m": {r[1]}}}') for r in rows]


_damage_store: dict[str, Any] = {}


def damage_store() -> dict[str, Any]:
    """One store built once for the damage examples: two runs of several blocks each (one holding a
    partial last block), their pristine bytes and every aggregate's rows from a full scan."""
    if not _damage_store:
        root = Path(tempfile.mkdtemp(prefix="crc-damage-"))
        atexit.register(shutil.rmtree, root, True)  # shared by the examples: removed when the session ends
        layout = make_store(root)
        seal_chunks(layout, varied_rows(2 * runs.BLOCK_ROWS + 3 * runs.BLOCK_ROWS // 2),
                    [2 * runs.BLOCK_ROWS, 3 * runs.BLOCK_ROWS // 2])
        reconcile(layout)
        files_ = run_files(layout)
        assert len(files_) == 2
        _damage_store.update(layout=layout, pristine={p: p.read_bytes() for p in files_},
                             expected={k: full_scan(layout, "A", str(k)) for k in range(5)})
    return _damage_store


@st.composite
def byte_flips(draw: Any, size: int, data: bytes) -> tuple[int, int]:
    """(offset, xor mask): anywhere in the file, inside one column's buffers, or in its last KiB
    (the footer: schema, metadata, record batch block offsets)."""
    where = draw(st.sampled_from(["anywhere", "column", "footer"]))
    if where == "column":
        column = draw(st.sampled_from(runs.RUN_SCHEMA.names))
        mapped = pa.py_buffer(data)
        bufs = [b for b in pa.ipc.open_file(mapped).get_batch(0).column(column).buffers() if b is not None and b.size]
        chosen = bufs[draw(st.integers(0, len(bufs) - 1))]  # validity, values / offsets, string data
        offset = chosen.address - mapped.address + draw(st.integers(0, chosen.size - 1))
    elif where == "footer":
        offset = draw(st.integers(max(0, size - 1024), size - 1))
    else:
        offset = draw(st.integers(0, size - 1))
    return offset, draw(st.integers(1, 255))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_byte_flipped_anywhere_in_a_run_never_changes_an_answer_and_reconcile_rebuilds_it(data) -> None:
    """A byte flipped in any column (payload, metadata, ids, timestamps, a null bit), the schema
    metadata or the footer: every lookup still equals the log (the run is refused at open, or the
    damaged block fails its CRC and the lookup reads the log), never a payload the log does not hold."""
    store = damage_store()
    layout, pristine, expected = store["layout"], store["pristine"], store["expected"]
    victim = data.draw(st.sampled_from(sorted(pristine)))
    good = pristine[victim]
    offset, mask = data.draw(byte_flips(len(good), good))
    damaged = bytearray(good)
    damaged[offset] ^= mask
    victim.write_bytes(bytes(damaged))
    try:
        reading._cache.clear()  # as in a fresh process
        for k, rows in expected.items():
            assert indexed_read(layout, "A", str(k))[0] == rows, (victim.name, offset, mask, k)
            assert indexed_read(layout, "A", str(k), 3, 9)[0] == [r for r in rows if 3 <= r[4] <= 9]
    finally:
        reconcile(layout)  # the writer checks whole files: deletes the damaged run, rebuilds it
    assert {p: p.read_bytes() for p in run_files(layout)} == pristine


def test_every_block_of_every_run_written_passes_its_crc(tmp_path) -> None:
    """Runs written by reconcile, merges and the sealer's add verify in full (a block CRC that
    disagreed with the file as mapped would send every lookup to the log)."""
    layout = make_store(tmp_path)
    rows = varied_rows(5 * (runs.BLOCK_ROWS + 9) + 100)
    seal_chunks(layout, rows, [runs.BLOCK_ROWS + 9] * 5 + [100])
    segs, lost = current_segments(layout)
    w = writer(layout, merge_factor=2)
    assert w.reconcile(segs[:-1], lost)
    assert w.merge() == 3  # 5 runs -> 2 + 1 -> 1 + 1
    sealed = pa.Table.from_pylist([dict(zip(ARROW_SCHEMA.names, r)) for r in rows[-101:]], schema=ARROW_SCHEMA)
    w.add(segs[-1], sealed.slice(1))  # as the sealer does, from rows it holds (a slice: offset 1)
    assert len(run_files(layout)) == 3
    reading._cache.clear()
    for path in run_files(layout):
        run = runs.open_run(path)
        assert run.verify_rows(0, run.meta.rows) > 0
        assert run.verify_rows(0, run.meta.rows) == 0, "verified blocks are cached per process"


def test_a_run_from_another_store_is_foreign_skipped_and_replaced(tmp_path) -> None:
    ours, theirs = small_store(tmp_path / "ours"), small_store(tmp_path / "theirs")
    for run in run_files(ours):
        run.unlink()
    for run in run_files(theirs):  # the same positions and rows, another store's id
        shutil.copy(run, index_dir(ours, 0) / run.name)
    assert answers_equal_full_scan(ours) == 0
    copied = set(p.name for p in run_files(ours))
    reconcile(ours)
    assert not copied & set(p.name for p in run_files(ours)), "foreign runs deleted and rebuilt"
    assert answers_equal_full_scan(ours) == 200


def test_runs_naming_segments_a_compaction_replaced_are_stale_then_rebuilt(tmp_path) -> None:
    layout = small_store(tmp_path, n_segments=6, per_segment=10)
    seg_set = SegmentSet(layout.log_dir(0), lost=LostRanges(), partition=0)
    assert seg_set.compact(small_rows=100, min_run=4) == 6  # one new segment in a new generation
    assert answers_equal_full_scan(layout) == 0, "every run names a segment the compaction replaced"
    reconcile(layout)
    assert [p.name for p in run_files(layout)][0].startswith("run-00000000000000000001-00000000000000000060")
    assert answers_equal_full_scan(layout) == 60


def test_merges_are_tiered_adjacent_and_keep_lookups_equal(tmp_path) -> None:
    layout = make_store(tmp_path)
    history = [("A", str(k % 7)) for k in range(27 * 10)]
    seal_chunks(layout, event_rows(history), [10] * 27)
    reconcile(layout, merge_factor=3)
    ranges = [runs.parse_run_name(p.name)[:2] for p in run_files(layout)]
    assert ranges == [(1, 270)], "27 runs -> 9 -> 3 -> 1 with factor 3"
    assert answers_equal_full_scan(layout) == 270


def test_a_merge_never_spans_a_lost_range(tmp_path) -> None:
    layout = make_store(tmp_path)
    history = [("A", str(k % 7)) for k in range(90)]
    seal_chunks(layout, event_rows(history), [10] * 9, lost={4})
    reconcile(layout, merge_factor=2)
    ranges = [runs.parse_run_name(p.name)[:2] for p in run_files(layout)]
    assert all(not (first <= 41 <= last) for first, last in ranges)
    assert all(not (first <= 40 and last >= 51) for first, last in ranges), ranges
    assert answers_equal_full_scan(layout) == 90


class CountingOpener:
    """Stands in for ``files.map_input``: counts the files a read opens (runs are memory-mapped,
    so the bytes a lookup touches are the slices it takes: IndexView.bytes_touched)."""

    def __init__(self) -> None:
        self.opened: list[str] = []
        self.real = files.map_input

    def __call__(self, path: Path) -> pa.NativeFile:
        self.opened.append(Path(path).name)
        return self.real(path)


def cost_of_a_lookup(root: Path, total: int, monkeypatch) -> tuple[int, int, int, int, int, int]:
    """(runs, files opened by the first lookup, files opened by the second, bytes touched by it,
    bytes it CRC-checked (first lookup in the process), bytes a repeat of it CRC-checks) for one
    aggregate of 100 events spread over a store of ``total`` events."""
    layout = make_store(root)
    history = [("Bulk", str(k % 997)) for k in range(total - 100)]
    step = len(history) // 100
    for k in range(100):
        history.insert(k * (step + 1), ("Probe", "p"))
    seal_chunks(layout, event_rows(history, payload='{"n": 12345678}'), [2_000] * (total // 2_000 + 1))
    reconcile(layout)
    counter = CountingOpener()
    monkeypatch.setattr(files, "map_input", counter)
    reading._cache.clear()  # as in a fresh process
    segs, lost = current_segments(layout)
    view = StreamIndex(layout, 0).view(segs, lost)
    assert view.covered == total
    first_opens = len(counter.opened)
    assert sorted(counter.opened) == sorted(p.name for p in run_files(layout)), "each run opened once"
    view = StreamIndex(layout, 0).view(segs, lost)
    table = view.aggregate("Probe", "p")
    assert table.column("version").to_pylist() == list(range(1, 101))
    touched, verified = view.bytes_touched, view.bytes_verified
    assert view.aggregate("Probe", "p").equals(table)
    return (len(run_files(layout)), first_opens, len(counter.opened) - first_opens, touched, verified,
            view.bytes_verified - verified)


def test_one_lookup_opens_each_run_once_and_touches_bytes_of_the_rows_it_returns(tmp_path, monkeypatch) -> None:
    small = cost_of_a_lookup(tmp_path / "small", 20_000, monkeypatch)
    large = cost_of_a_lookup(tmp_path / "large", 200_000, monkeypatch)
    assert small[2] == large[2] == 0, "a second lookup in the process opens no file"
    assert large[3] <= 1.3 * small[3], f"bytes touched grow with the rows returned, not the store: {small} {large}"
    assert large[3] < 100 * 200, "about the 100 rows' bytes (~120 each) and a few binary-search probes"
    for runs_, _, _, _, verified, _ in (small, large):  # a run's rows of one aggregate are contiguous (sorted by hash)
        assert verified <= (2 * runs_ + 1) * runs.BLOCK_ROWS * 150, "the blocks holding the rows, not the store"
    assert small[5] == large[5] == 0, "a block is CRC-checked once per process"


def partition_rows(first: int, n: int) -> list[Row]:
    rows = event_rows([("A", str(p % 5)) for p in range(1, first + n)])
    return rows[first - 1:]


def wait_for(condition, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_the_owner_indexes_what_it_seals_and_reconciles_at_start(tmp_path) -> None:
    layout = make_store(tmp_path)
    config = StoreConfig(seal_rows=100, lock_timeout_s=0)
    log = PartitionLog(layout, 0, config)
    for k in range(5):
        log.append(partition_rows(1 + 100 * k, 100))
    log.seal_all()
    wait_for(lambda: indexed_read(layout, "A", "0")[1] == 500)
    log.close()
    victim = run_files(layout)[0]
    damage_truncate(layout, victim)
    log = PartitionLog(layout, 0, config)  # recovery does not wait for the index...
    try:
        wait_for(lambda: indexed_read(layout, "A", "0")[1] == 500)  # ...the sealer reconciles it
        entries = reading.load_runs(index_dir(layout, 0))
        assert entries and all(isinstance(e, reading.OpenRun) for e in entries.values()), "the damaged run was rebuilt"
        assert log.stream_index.error is None
    finally:
        log.close()


def test_a_failing_index_never_fails_a_commit_and_is_retried(tmp_path, monkeypatch) -> None:
    layout = make_store(tmp_path)
    (tmp_path / "index").write_text("not a directory")  # every run write fails
    monkeypatch.setattr(IndexUpkeep, "RETRY_S", 0.1)
    log = PartitionLog(layout, 0, StoreConfig(seal_rows=100, lock_timeout_s=0))
    try:
        for k in range(3):
            log.append(partition_rows(1 + 100 * k, 100))  # durable, acknowledged
        log.seal_all()
        wait_for(lambda: log.stream_index.error is not None)
        assert log.seal_error is None and sealed_last(layout) == 300
        assert indexed_read(layout, "A", "1")[0] == full_scan(layout, "A", "1")  # readers scan what is not indexed
        (tmp_path / "index").unlink()
        wait_for(lambda: log.stream_index.error is None and indexed_read(layout, "A", "1")[1] == 300)
    finally:
        log.close()


def test_after_a_repair_runs_naming_a_quarantined_segment_are_stale_and_rebuilt(tmp_path) -> None:
    from es_actors.storage.local.repair import repair_store

    layout = small_store(tmp_path)
    segs, _ = current_segments(layout)
    data = bytearray(segs[1].path.read_bytes())
    for k in range(4, len(data) - 64):  # unreadable: repair quarantines it and records 51..100 lost
        data[k] ^= 0x5A
    segs[1].path.write_bytes(bytes(data))
    repair_store(tmp_path)
    segs, lost = current_segments(layout)
    assert lost.covers(0, 51, 100) and [s.first for s in segs] == [1, 101, 151]
    stale = run_files(layout)[1]
    assert stale.name.startswith("run-00000000000000000051-")
    assert stale not in StreamIndex(layout, 0).view(segs, lost).files, "it names a segment the repair removed"
    assert answers_equal_full_scan(layout) == 200  # the other runs tile 1..200 across the recorded loss
    reconcile(layout)
    assert stale not in run_files(layout) and len(run_files(layout)) == 3
    assert answers_equal_full_scan(layout) == 200


def test_runs_left_by_a_merge_cut_short_are_never_read_twice_and_are_cleared(tmp_path) -> None:
    layout = small_store(tmp_path)  # four tier-0 runs
    saved = {p.name: p.read_bytes() for p in run_files(layout)}
    w = writer(layout, merge_factor=4)
    w.reconcile(*current_segments(layout))
    assert w.merge() == 1
    [merged] = run_files(layout)
    for name, data in saved.items():  # a crash after the merged run's rename, before its sources' unlink
        (index_dir(layout, 0) / name).write_bytes(data)
    torn = index_dir(layout, 0) / ".run-00000000000000000201-00000000000000000250.123.tmp"
    torn.write_bytes(b"ARROW1")  # and a write cut before its rename
    segs, lost = current_segments(layout)
    assert StreamIndex(layout, 0).view(segs, lost).files == [merged]
    assert answers_equal_full_scan(layout) == 200
    reconcile(layout)
    assert run_files(layout) == [merged] and not torn.exists()
