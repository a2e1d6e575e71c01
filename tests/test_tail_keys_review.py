"""Hostile review of the tail's key files (storage/local/tail_keys.py, tail_key_index.py; ADR-015):
a reader process that keeps its index while the store under it changes must never answer with a row
the store does not hold. Real files, no Ray."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from es_actors.codecs.rows import COL
from es_actors.storage.local.stream_index import runs
from es_actors.testing.storage_conformance import EventLog
from tests.test_tail_keys import fresh_reader, full_scan, index, open_log, read, tail_dir

EVENT_ID, VER = COL["event_id"], COL["version"]


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
