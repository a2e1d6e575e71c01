"""Whole-object backend: damage is refused on every read path and told apart from a write in flight;
names that are not the store's own, and missing slots, are named (no Ray, real files)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from es_actors.errors import StoreCorrupted
from es_actors.storage.objects import ObjectBackend
from es_actors.testing.storage_conformance import EventLog, rows_of, small_config

CONFIG = small_config()


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _store(root: Path, groups: int = 3, seal_after: tuple[int, ...] = ()) -> EventLog:
    ev = EventLog()
    log = ObjectBackend.on_directory(root).open_log(0, CONFIG)
    try:
        for i in range(groups):
            ev.append(log, ["a", "b"])
            if i in seal_after:
                log.seal()
    finally:
        log.close()
    return ev


def _every_read_path(root: Path) -> list[tuple[str, Callable[[], object]]]:
    backend = ObjectBackend.on_directory(root)
    return [("recovery", lambda: backend.open_log(0, CONFIG)),
            ("a reader", lambda: backend.reader(0).read_all()),
            ("a follower", lambda: backend.follower(0).poll())]


def _refused_everywhere(root: Path, match: str, paths: int = 3) -> None:
    before = _tree(root)
    for what, attempt in _every_read_path(root)[:paths]:
        with pytest.raises(StoreCorrupted, match=match):
            attempt()
        assert _tree(root) == before, f"{what} changed the store"


def _newest(root: Path, kind: str) -> Path:
    return sorted((root / "p0000" / kind).iterdir())[-1]


# -- a whole object that fails its checks is damage, not a write in flight ---------------------


@pytest.mark.parametrize("how", ["flip a body byte", "one body byte short", "bad header"])
def test_a_damaged_newest_commit_is_refused_naming_it_not_voided(tmp_path: Path, how: str) -> None:
    _store(tmp_path)
    newest = _newest(tmp_path, "tail")
    data = newest.read_bytes()
    body, mark = data[:-16], data[-16:]  # the completion mark stays: the object is whole
    if how == "flip a body byte":
        body = body[:20] + bytes([body[20] ^ 1]) + body[21:]
    elif how == "one body byte short":
        body = body[:-5] + body[-4:]
    else:
        body = b"XXXXX" + body[5:]
    newest.write_bytes(body + mark)
    _refused_everywhere(tmp_path, f"{newest.relative_to(tmp_path)} is damaged")


def test_a_damaged_newest_manifest_is_refused_naming_it(tmp_path: Path) -> None:
    _store(tmp_path, groups=4, seal_after=(0, 1, 2))
    gen = _newest(tmp_path, "gens")
    data = bytearray(gen.read_bytes())
    data[12] ^= 1  # inside the JSON body; the completion mark stays
    gen.write_bytes(bytes(data))
    _refused_everywhere(tmp_path, f"{gen.relative_to(tmp_path)} is damaged: CRC-32")


def test_a_newest_commit_without_its_completion_mark_is_in_flight_and_skipped(tmp_path: Path) -> None:
    ev = _store(tmp_path)
    newest = _newest(tmp_path, "tail")
    newest.write_bytes(newest.read_bytes()[:-16])  # the put never finished: never acknowledged
    backend = ObjectBackend.on_directory(tmp_path)
    assert rows_of(backend.reader(0).read_all()) == ev.acked[:-2]


# -- names that are not the store's own; missing slots -----------------------------------------


@pytest.mark.parametrize("name,paths", [("tail/notes.txt", 3), ("gens/00000000000000000001~", 3),
                                        ("owners/owner.bak", 1)])  # only an owner reads owners/
def test_a_stray_file_under_a_partition_is_refused_naming_it(tmp_path: Path, name: str, paths: int) -> None:
    _store(tmp_path, seal_after=(0,))
    (tmp_path / "p0000" / name).write_text("hello")
    _refused_everywhere(tmp_path, f"p0000/{name}: not an object of this store", paths)


def test_dot_files_are_foreign_and_ignored(tmp_path: Path) -> None:
    ev = _store(tmp_path, seal_after=(0,))
    for kind in ("tail", "gens", "owners"):
        (tmp_path / "p0000" / kind / ".DS_Store").write_text("x")
    backend = ObjectBackend.on_directory(tmp_path)
    log = backend.open_log(0, CONFIG)
    ev.append(log, ["c"])
    log.close()
    assert rows_of(backend.reader(0).read_all()) == ev.acked


@pytest.mark.parametrize("seal", [False, True])
def test_a_gap_in_tail_slots_names_the_first_missing_slot(tmp_path: Path, seal: bool) -> None:
    _store(tmp_path, groups=4, seal_after=(0,) if seal else ())
    slots = sorted((tmp_path / "p0000" / "tail").iterdir())
    first_missing = slots[-2]
    first_missing.unlink()
    _refused_everywhere(tmp_path, f"{first_missing.relative_to(tmp_path)} is missing")


def test_a_stray_slot_far_ahead_names_the_first_missing_slot(tmp_path: Path) -> None:
    _store(tmp_path)
    slots = sorted((tmp_path / "p0000" / "tail").iterdir())
    (tmp_path / "p0000" / "tail" / f"{99:020d}").write_text("hello")
    _refused_everywhere(tmp_path, f"p0000/tail/{int(slots[-1].name) + 1:020d} is missing: .* p0000/tail/{99:020d} follows")
