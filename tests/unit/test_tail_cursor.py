"""The incremental tail reader (storage/local/tail_cursor.py): each frame decoded once per process,
frames before the needed position passed over undecoded, frames past the durable mark left for later,
damage refused by the same rules as ``wal.scan_*``. Real tail files, no Ray."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from es_actors.codecs.rows import COL
from es_actors.errors import StoreCorrupted
from es_actors.storage.backends import aggregate_rows
from es_actors.storage.layout import StoreLayout
from es_actors.storage.local import tail_cursor
from es_actors.storage.local.backend import LocalBackend
from es_actors.storage.local.wal import encode_frame, list_tail_files
from es_actors.testing.storage_conformance import EventLog, small_config

VER = COL["version"]


@pytest.fixture(autouse=True)
def parse_the_tail(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about reading the tail by parsing it: the writer's key files (tests/test_tail_keys.py)
    are declined here, as a reader declines them when they do not check out."""
    from es_actors.storage.local.tail_key_index import TailKeyIndex

    monkeypatch.setattr(TailKeyIndex, "aggregate_rows", lambda self, *args: None)


def tail_store(root: Path, frames: int = 6) -> EventLog:
    StoreLayout(root).create_or_check(1, 1)
    ev = EventLog()
    log = LocalBackend(root).open_log(0, small_config().model_copy(update={"seal_rows": 10**6}))
    for i in range(frames):
        ev.append(log, ["a", "b"] if i % 2 else ["a"])
    log.close()
    return ev


def versions(root: Path, agg: str = "a") -> list[int]:
    return [r[VER] for r in aggregate_rows(StoreLayout(root), 0, "Account", agg)]


def test_a_warm_index_decodes_only_the_new_frame(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "s"
    ev = tail_store(root)
    assert versions(root) == list(range(1, ev.versions["a"] + 1))
    decoded: list[int] = []
    real = json.loads
    log = LocalBackend(root).open_log(0, small_config().model_copy(update={"seal_rows": 10**6}))
    try:
        ev.append(log, ["a"])
        monkeypatch.setattr(json, "loads", lambda data: decoded.append(len(data)) or real(data))  # json is one module: patch after recovery
        assert versions(root) == list(range(1, ev.versions["a"] + 1))
        assert len(decoded) == 1, "only the frame appended since the last read is decoded"
    finally:
        log.close()


def test_frames_before_the_needed_position_are_not_decoded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "s"
    tail_store(root, frames=5)
    [(first, path)] = list_tail_files(root / "tail" / "p0000")
    cur = tail_cursor.TailFileCursor(path, first)
    decoded: list[int] = []
    real = json.loads
    monkeypatch.setattr(json, "loads", lambda data: decoded.append(1) or real(data))
    rows = cur.advance(newest=True, durable=None, skip_before=7)  # frames hold 1, 2-3, 4, 5-6, 7
    assert [r[COL["position"]] for r in rows] == [7] and len(decoded) == 1


def test_frames_past_the_durable_mark_wait_for_a_later_read(tmp_path: Path) -> None:
    root = tmp_path / "s"
    tail_store(root, frames=4)  # positions 1..6
    [(first, path)] = list_tail_files(root / "tail" / "p0000")
    cur = tail_cursor.TailFileCursor(path, first)
    assert [r[COL["position"]] for r in cur.advance(True, durable=3)] == [1, 2, 3]
    assert [r[COL["position"]] for r in cur.advance(True, durable=6)] == [4, 5, 6]
    assert cur.advance(True, durable=6) == []


def test_an_unchanged_file_is_not_read_again_until_it_grows_or_the_mark_moves(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "s"
    ev = tail_store(root, frames=4)  # positions 1..6
    [(first, path)] = list_tail_files(root / "tail" / "p0000")
    cur = tail_cursor.TailFileCursor(path, first)
    reads: list[int] = []
    real = tail_cursor._read_from
    monkeypatch.setattr(tail_cursor, "_read_from", lambda *a, **k: reads.append(1) or real(*a, **k))
    assert [r[COL["position"]] for r in cur.advance(True, durable=3)] == [1, 2, 3]
    assert cur.advance(True, durable=3) == [] and len(reads) == 1, "same file, same mark: answered from a stat"
    assert [r[COL["position"]] for r in cur.advance(True, durable=6)] == [4, 5, 6] and len(reads) == 2
    assert cur.advance(True, durable=6) == [] and len(reads) == 2
    log = LocalBackend(root).open_log(0, small_config().model_copy(update={"seal_rows": 10**6}))
    try:
        ev.append(log, ["a"])  # position 7: the file grows
        assert [r[COL["position"]] for r in cur.advance(True, durable=7)] == [7] and len(reads) == 3
    finally:
        log.close()


def test_cached_listings_see_every_change(tmp_path: Path) -> None:
    """The tail listing and lost-ranges.json are reused only while unchanged; a change restoring the
    directory's mtime (as one within a clock tick would leave it) still shows (ctime moves)."""
    import os

    from es_actors.storage.local.log_place import lost_ranges
    from es_actors.storage.local.wal import list_tail_files_cached
    from es_actors.storage.lost_ranges import LostRange, now_text, record_lost_ranges

    d = tmp_path / "tail"
    d.mkdir()
    (d / "00000000000000000001.wal").write_bytes(b"")
    old = os.stat(d).st_mtime_ns - 10**9
    os.utime(d, ns=(old, old))  # an old directory: its listing is cached
    assert [f for f, _p in list_tail_files_cached(d)] == [1]
    (d / "00000000000000000009.wal").write_bytes(b"")
    os.utime(d, ns=(old, old))
    assert [f for f, _p in list_tail_files_cached(d)] == [1, 9]
    (d / "00000000000000000001.wal").unlink()
    assert [f for f, _p in list_tail_files_cached(d)] == [9]
    assert not lost_ranges(tmp_path)
    record_lost_ranges(tmp_path, [LostRange(partition=0, first=3, last=4, source="test", offset=0, quarantined="q",
                                                  detail="test", recorded_at=now_text())])
    assert lost_ranges(tmp_path).covers(0, 3, 4)


def test_cached_segment_listing_sees_a_change_that_restores_the_mtime(tmp_path: Path) -> None:
    """The segment listing shares the tail listing's rule (stat_cache): a new segment whose rename
    left the directory's mtime as it was (within one clock tick) still shows, by its ctime."""
    import os

    from es_actors.storage.local.segments import list_segments_cached, segment_name

    gen = tmp_path / "gen-000001"
    gen.mkdir()
    (gen / segment_name(1, 10)).write_bytes(b"")
    old = os.stat(gen).st_mtime_ns - 10**9
    os.utime(gen, ns=(old, old))  # an old directory: its listing is cached
    assert [(s.first, s.last) for s in list_segments_cached(gen)] == [(1, 10)]
    (gen / segment_name(11, 20)).write_bytes(b"")
    os.utime(gen, ns=(old, old))
    assert [(s.first, s.last) for s in list_segments_cached(gen)] == [(1, 10), (11, 20)]


def _flip_in_frame(path: Path, frame_index: int) -> None:
    data = bytearray(path.read_bytes())
    off = 24
    for _ in range(frame_index):
        length = int.from_bytes(data[off + 4 : off + 8], "little")
        off += 28 + length
    data[off + 30] ^= 0xFF  # a payload byte
    path.write_bytes(bytes(data))


def test_a_damaged_frame_with_valid_frames_after_it_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "s"
    tail_store(root)
    [(_f, path)] = list_tail_files(root / "tail" / "p0000")
    _flip_in_frame(path, 2)
    with pytest.raises(StoreCorrupted, match="damaged"):
        versions(root)


def test_damage_after_a_warm_read_is_refused_too(tmp_path: Path) -> None:
    root = tmp_path / "s"
    tail_store(root)
    versions(root)  # warm: the cursor sits at the end of the file
    [(_f, path)] = list_tail_files(root / "tail" / "p0000")
    rows: list[Any] = [(0, 10, "Account", "a", 99, "Deposited", 1, "e", "c", "d", None, None, "t", 1, "{}", "{}")]
    bad = bytearray(encode_frame(rows))
    bad[-2] ^= 0xFF
    good = encode_frame([(0, 11, *rows[0][2:])])
    with open(path, "ab") as f:
        f.write(bytes(bad) + good)
    (root / "tail" / "p0000" / "DURABLE").unlink(missing_ok=True)  # no mark: every whole frame is readable
    with pytest.raises(StoreCorrupted, match="damaged"):
        versions(root)


def test_a_torn_end_of_the_newest_file_is_not_read(tmp_path: Path) -> None:
    root = tmp_path / "s"
    ev = tail_store(root)
    (durable := root / "tail" / "p0000" / "DURABLE").exists() and durable.unlink()  # as after a machine crash
    [(_f, path)] = list_tail_files(root / "tail" / "p0000")
    rows: list[Any] = [(0, 10, "Account", "a", 99, "Deposited", 1, "e", "c", "d", None, None, "t", 1, "{}", "{}")]
    with open(path, "ab") as f:
        f.write(encode_frame(rows)[:20])
    assert versions(root) == list(range(1, ev.versions["a"] + 1))


def test_a_checked_frame_whose_rows_are_not_what_its_header_says_is_refused(tmp_path: Path) -> None:
    """Checksums that pass over rows that do not match the header (another first position) are
    damage, not rows: the decode of all new frames at once must not take them."""
    root = tmp_path / "s"
    tail_store(root)  # positions 1..9
    versions(root)  # warm: the next read takes only what is appended
    [(_f, path)] = list_tail_files(root / "tail" / "p0000")
    row: tuple[Any, ...] = (0, 12, "Account", "a", 99, "Deposited", 1, "e", "c", "d", None, None, "t", 1, "{}", "{}")
    with open(path, "ab") as f:
        f.write(encode_frame([row], first_position=10) + encode_frame([(0, 11, *row[2:])]))
    (root / "tail" / "p0000" / "DURABLE").unlink(missing_ok=True)  # no mark: every whole frame is readable
    with pytest.raises(StoreCorrupted, match="damaged"):
        versions(root)
