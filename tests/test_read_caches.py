"""A process's read caches stay bounded and are released (no Ray).

Aggregate reads keep two caches per process: the stream index's memory-mapped runs (per index
directory) and the parsed unsealed tail (a TailIndex per partition). Mapped runs pin their disk
space even once deleted, and parsed rows cost memory: both must stay under their bounds however
many stores and partitions a process reads, be released by ``Store.close``, and never change an
answer when they evict (an evicted cache is rebuilt from the files).
"""

from __future__ import annotations

import gc
import os
import random
import shutil
from pathlib import Path

import pytest

from es_actors.codecs.rows import COL
from es_actors.config import StoreConfig
from es_actors.storage.backends import aggregate_rows
from es_actors.storage.layout import StoreLayout
from es_actors.storage.local import tail_cursor
from es_actors.storage.local.backend import LocalBackend
from es_actors.storage.local.reader import read_partition_rows
from es_actors.storage.local.stream_index import build_index, reading, row_cache
from es_actors.store import Store
from es_actors.testing.storage_conformance import EventLog

AID, VER = COL["aggregate_id"], COL["version"]
AGGS = ["a", "b", "c", "d"]
CONFIG = StoreConfig.model_validate({"seal_rows": 1_000_000, "gc_grace_s": 0.0})


def _write(root: Path, groups: int, seal_every: int = 0, index: bool = False, ev: EventLog | None = None) -> EventLog:
    """Append ``groups`` groups of one event per aggregate; seal every ``seal_every`` groups."""
    if not (root / "store.json").exists():
        StoreLayout(root).create_or_check(1, 1)
    ev = ev or EventLog()
    log = LocalBackend(root).open_log(0, CONFIG)
    for i in range(groups):
        ev.append(log, AGGS)
        if seal_every and i % seal_every == seal_every - 1:
            log.seal()
    log.close()  # closing does not seal: the last groups stay in the tail
    if index:
        build_index(StoreLayout(root), 0)
    return ev


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with 3 sealed segments, their index runs and 3 groups in its tail."""
    root = tmp_path_factory.mktemp("tpl") / "store"
    _write(root, 30, seal_every=10, index=True)
    _write(root, 3)
    return root


@pytest.fixture(autouse=True)
def fresh_caches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts as a fresh process would (and leaves no maps to the next)."""
    for key in list(tail_cursor._indexes):
        tail_cursor._evict(key) if hasattr(tail_cursor, "_evict") else tail_cursor._indexes.pop(key)
    reading._cache.clear()
    gc.collect()


def _copies(template: Path, base: Path, n: int) -> list[Path]:
    roots = []
    for k in range(n):
        root = base / f"s{k}"
        shutil.copytree(template, root, symlinks=True)
        roots.append(root)
    return roots


def _mapped_runs(under: Path) -> set[str]:
    """Run files of stores under ``under`` mapped in this process now (deleted ones too)."""
    gc.collect()
    prefix = str(under)
    with open("/proc/self/maps") as f:
        return {line.split(None, 5)[5].strip() for line in f
                if len(line.split(None, 5)) == 6 and line.split(None, 5)[5].startswith(prefix) and ".arrow" in line}


def _tail_rows_held() -> int:
    return sum(len(ix._rows) for ix in tail_cursor._indexes.values())


def _scan(root: Path, agg: str) -> list[tuple]:
    rows = [r for r in read_partition_rows(StoreLayout(root), 0) if r[AID] == agg]
    return sorted(rows, key=lambda r: r[VER])


def test_mapped_runs_stay_under_the_directory_bound(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reading, "MAX_DIRECTORIES", 3, raising=False)
    roots = _copies(template, tmp_path, 8)
    runs_per_store = len(os.listdir(roots[0] / "index" / "p0000"))
    for root in roots:
        assert aggregate_rows(StoreLayout(root), 0, "Account", "a") == _scan(root, "a")
        assert len(reading._cache) <= 3
        assert len(_mapped_runs(tmp_path)) <= 3 * runs_per_store
    assert _mapped_runs(tmp_path) >= {str(p) for p in (roots[-1] / "index" / "p0000").iterdir()}  # the newest stay


def test_mapped_runs_stay_under_the_byte_bound(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    roots = _copies(template, tmp_path, 5)
    one_store = sum(p.stat().st_size for p in (roots[0] / "index" / "p0000").iterdir())
    monkeypatch.setattr(reading, "MAX_MAPPED_BYTES", 2 * one_store, raising=False)
    for root in roots:
        aggregate_rows(StoreLayout(root), 0, "Account", "b")
        mapped = _mapped_runs(tmp_path)
        assert sum(os.path.getsize(p) for p in mapped) <= 2 * one_store


def test_tail_rows_held_stay_under_the_cap(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tail_cursor, "MAX_TAIL_ROWS", 30, raising=False)  # 2.5 tails of 12 rows
    roots = _copies(template, tmp_path, 10)
    for root in roots:
        assert aggregate_rows(StoreLayout(root), 0, "Account", "c") == _scan(root, "c")
        assert _tail_rows_held() <= 30
    assert len(tail_cursor._indexes) <= 3


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_eviction_never_changes_an_answer(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """Reads across stores, interleaved with appends and seals, with caps of one row / one
    directory / one byte give exactly what a full scan gives."""
    monkeypatch.setattr(tail_cursor, "MAX_TAIL_ROWS", 1, raising=False)
    monkeypatch.setattr(reading, "MAX_DIRECTORIES", 1, raising=False)
    monkeypatch.setattr(reading, "MAX_MAPPED_BYTES", 1, raising=False)
    rnd = random.Random(seed)
    roots = _copies(template, tmp_path, 3)
    logs = {root: EventLog() for root in roots}
    for ev in logs.values():  # the template's versions, so appends continue them
        ev.versions = {a: 33 for a in AGGS}
        ev._n = 10_000
    for _ in range(40):
        root = rnd.choice(roots)
        if rnd.random() < 0.3:
            _write(root, rnd.randint(1, 3), seal_every=rnd.choice([0, 2]), ev=logs[root])
        agg = rnd.choice(AGGS)
        lo = rnd.randint(1, 20)
        got = aggregate_rows(StoreLayout(root), 0, "Account", agg, first_version=lo)
        assert got == [r for r in _scan(root, agg) if r[VER] >= lo]
        assert len(reading._cache) <= 1  # the caps held: every read but the last was evicted
        assert sum(1 for ix in tail_cursor._indexes.values() if ix._rows) <= 1


def test_store_close_unmaps_its_runs_and_drops_its_tail(template: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(row_cache, "MAX_SLICE_ROWS", 10_000)  # this store's slices are longer than kept by default
    root, other = _copies(template, tmp_path, 2)
    kept = Store.open(other, read_only=True)
    kept.history_rows("Account", "a")
    store = Store.open(root, read_only=True)
    assert store.history_rows("Account", "a") == _scan(root, "a")
    assert any(p.startswith(str(root)) for p in _mapped_runs(tmp_path))
    store.close()
    assert not any(p.startswith(str(root) + os.sep) for p in _mapped_runs(tmp_path))
    assert not [k for k in tail_cursor._indexes if k[0] == os.path.realpath(root)]
    assert not [k for k in row_cache._cache if str(k[0]).startswith(str(root) + os.sep)]  # checked slices too
    assert [k for k in row_cache._cache if str(k[0]).startswith(str(other) + os.sep)]
    assert any(p.startswith(str(other) + os.sep) for p in _mapped_runs(tmp_path))  # another store's stay
    assert kept.history_rows("Account", "b") == _scan(other, "b")
    kept.close()


def test_a_deleted_stores_runs_are_unmapped_when_listed_again_or_on_close(template: Path, tmp_path: Path) -> None:
    listed, closed = _copies(template, tmp_path, 2)
    aggregate_rows(StoreLayout(listed), 0, "Account", "a")
    shutil.rmtree(listed)  # an operator deletes the store
    assert reading.load_runs(listed / "index" / "p0000") == {}
    assert not _mapped_runs(listed)

    store = Store.open(closed, read_only=True)
    store.history_rows("Account", "a")
    shutil.rmtree(closed)
    assert _mapped_runs(closed)  # still mapped: disk space held
    store.close()
    assert not _mapped_runs(closed)


def test_one_store_named_two_ways_has_one_tail_index(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _copies(template, tmp_path, 1)[0]
    (tmp_path / "link").symlink_to(root)
    monkeypatch.chdir(tmp_path)
    assert tail_cursor.tail_index(Path("s0"), 0) is tail_cursor.tail_index(tmp_path / "link", 0)
    assert tail_cursor.tail_index(root, 0) is tail_cursor.tail_index(Path("s0"), 0)
