"""Hostile review of the tail's key files (storage/local/tail_keys.py, tail_key_index.py; ADR-015):
a reader process that keeps its index while the store under it changes must never answer with a row
the store does not hold. Real files, no Ray."""

from __future__ import annotations

import shutil
from pathlib import Path

from es_actors.codecs.rows import COL
from es_actors.testing.storage_conformance import EventLog
from tests.test_tail_keys import full_scan, index, open_log, read, tail_dir

EVENT_ID = COL["event_id"]


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
