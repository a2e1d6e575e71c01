"""The log on disk, without Ray: frames, torn tails, sealing, compaction, consistent readers."""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from pathlib import Path

import duckdb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from es_actors import DomainRegistry, StoreConfig
from es_actors.write.partition import Partition
from es_actors.write.protocol import CommandEnvelope
from es_actors.storage.layout import StoreLayout
from es_actors.storage.local.reader import read_partition_rows, sealed_files
from es_actors.storage.local.wal import encode_frame, file_header, list_tail_files, read_tail_file, scan_tail_file
from es_actors.examples.bank import BankAccount

REGISTRY = DomainRegistry([BankAccount])


def cmd(aid: str, name: str = "Deposit", payload=None, cid: str | None = None, expected=None):
    payload = {"amount": 1} if payload is None else payload
    return CommandEnvelope("BankAccount", aid, cid or uuid.uuid4().hex, name, json.dumps(payload), expected)


def open_partition(root: Path, **settings) -> Partition:
    return Partition(StoreLayout(root), 0, REGISTRY, StoreConfig(lock_timeout_s=0, **settings))


def frame_rows(sizes: list[int], first: int = 1) -> list[list[tuple]]:
    """Frames of rows shaped like the log's (position in column 1), positions from ``first``."""
    out, pos = [], first
    for n in sizes:
        out.append([(0, p, "T", f"a{p}", 1, "E", 1, "id", "c", "d", None, None, None, 0, "{}", "{}") for p in range(pos, pos + n)])
        pos += n
    return out


def tail_bytes(frames: list[list[tuple]], first: int = 1) -> bytes:
    return file_header(first) + b"".join(encode_frame(f) for f in frames)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(1, 5), min_size=1, max_size=6), cut=st.floats(0, 1))
def test_a_torn_tail_reads_as_exactly_the_whole_frames_before_the_tear(tmp_path, sizes, cut):
    frames = frame_rows(sizes)
    data = tail_bytes(frames)
    offset = int(len(data) * cut)
    path = tmp_path / f"{1:020d}.wal"
    path.write_bytes(data[:offset])
    rows, valid, size = read_tail_file(path)
    ends, total = [], len(file_header(1))
    for f in frames:
        total += len(encode_frame(f))
        ends.append(total)
    whole = [i for i, e in enumerate(ends) if e <= offset]
    assert rows == [tuple(r) for i in whole for r in frames[i]]
    assert size == offset
    assert valid == (ends[whole[-1]] if whole else (len(file_header(1)) if offset >= len(file_header(1)) else 0))


def test_a_corrupt_frame_followed_by_a_good_one_is_damage_not_a_torn_tail(tmp_path):
    good, bad, after = (encode_frame(f) for f in frame_rows([1, 1, 1]))
    bad = bytearray(bad)
    bad[-2] ^= 0xFF
    path = tmp_path / f"{1:020d}.wal"
    path.write_bytes(file_header(1) + good + bytes(bad) + after)
    scan = scan_tail_file(path, newest=True, expected_first=1)
    assert not scan.torn_bytes
    [damage] = scan.damage
    assert (damage.offset, damage.first_lost, damage.last_lost) == (len(file_header(1)) + len(good), 2, 2)
    assert [r[1] for r in scan.rows] == [1, 3]  # both valid frames are kept, the bad one is named


def test_partition_restart_rebuilds_state_versions_and_positions(tmp_path):
    p = open_partition(tmp_path)
    p.handle_batch([cmd("a", "OpenAccount", {"owner": "x"}), cmd("a"), cmd("a"), cmd("b", "OpenAccount", {"owner": "y"})])
    p.close()
    p2 = open_partition(tmp_path)
    assert p2.get_state("BankAccount", "a")[0] == 3 and p2.get_state("BankAccount", "a")[1].balance == 2
    [result] = p2.handle_batch([cmd("b")])
    assert (result.ok, result.version, result.rows[0][1]) == (True, 2, 5)
    p2.close()


def test_a_tail_sealed_just_before_a_crash_is_not_read_twice(tmp_path):
    p = open_partition(tmp_path)
    p.handle_batch([cmd("a", "OpenAccount", {"owner": "x"})] + [cmd("a") for _ in range(9)])
    [(_, tail)] = list_tail_files(tmp_path / "tail" / "p0000")
    backup = tmp_path / "tail-backup"
    shutil.copy(tail, backup)
    p.seal()  # segment written, tail file deleted
    p.close()
    shutil.copy(backup, tail)  # as if the crash came between the segment's rename and the tail's unlink
    for restart in range(2):  # the leftover tail must not count twice now, nor after a later restart
        p2 = open_partition(tmp_path)
        rows = read_partition_rows(StoreLayout(tmp_path), 0)
        assert [r[1] for r in rows] == list(range(1, 11 + restart)), restart
        version, state = p2.get_state("BankAccount", "a")
        assert (version, state.balance) == (10 + restart, 9 + restart), restart  # each deposit folded once
        assert p2.log.unsealed_count == 0, "the sealed events were taken for unsealed ones"
        if restart == 0:
            [result] = p2.handle_batch([cmd("a")])
            assert (result.ok, result.version, result.rows[0][1]) == (True, 11, 11)  # the next position follows the sealed 10
            p2.seal()
        p2.close()


def test_readers_never_see_an_event_twice_or_a_gap_while_sealing_and_compacting(tmp_path):
    """DuckDB over the glob and the es_actors reader, racing a writer that seals and compacts."""
    p = open_partition(tmp_path, seal_rows=40, compact_small_rows=1000, compact_min_run=3, gc_grace_s=0.5)
    layout = StoreLayout(tmp_path)
    p.handle_batch([cmd(f"a{i}", "OpenAccount", {"owner": "x"}) for i in range(8)])
    stop = threading.Event()
    problems: list[str] = []
    ok_reads = {"duckdb": 0, "reader": 0, "file_races": 0}

    def duckdb_reader() -> None:
        con = duckdb.connect()
        while not stop.is_set():
            try:
                n, distinct, lo, hi = con.execute(
                    f"SELECT count(*), count(DISTINCT position), min(position), max(position) "
                    f"FROM read_parquet('{layout.sealed_glob}')"
                ).fetchone()
            except duckdb.IOException:
                ok_reads["file_races"] += 1  # a compaction swap between listing and opening: retry
                continue
            if n and not (n == distinct == hi - lo + 1 and lo == 1):
                problems.append(f"duckdb saw n={n} distinct={distinct} range={lo}..{hi}")
            ok_reads["duckdb"] += 1

    def own_reader() -> None:
        last = 0
        while not stop.is_set():
            positions = [r[1] for r in read_partition_rows(layout, 0)]
            if positions != list(range(1, len(positions) + 1)) or len(positions) < last:
                problems.append(f"reader saw {len(positions)} rows, gapless={positions == list(range(1, len(positions) + 1))}")
            last = len(positions)
            ok_reads["reader"] += 1

    threads = [threading.Thread(target=duckdb_reader), threading.Thread(target=own_reader)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        p.handle_batch([cmd(f"a{i % 8}") for i in range(13)])
    p.seal()
    stop.set()
    for t in threads:
        t.join()
    assert not problems, problems[:5]
    assert ok_reads["duckdb"] > 5 and ok_reads["reader"] > 5, ok_reads
    gens = sorted(x.name for x in (tmp_path / "log" / "p0000").iterdir() if x.name.startswith("gen-"))
    assert int(p.log.segments.gen_dir.name[4:]) > 1, "compaction never ran"
    total = p.log.next_position - 1
    files = sealed_files(layout, 1)
    assert duckdb.connect().execute(f"SELECT count(*) FROM read_parquet({[str(f) for f in files]})").fetchone()[0] == total
    assert len(files) < total / 40, "small segments were not compacted"
    p.close()
    assert gens  # generations exist; old ones are deleted after gc_grace_s
