"""Position ranges and subscriptions read only what they return (issue 11).

Cost is counted, not timed: every segment read goes through ``es_actors.storage.files.open_input``
(replaced here by a counting opener) and every file Python opens (segment CRC checks, tail
files) is seen by an audit hook. Stores are written straight through the local storage backend
(no Ray): many small sealed segments, then an unsealed tail.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pytest

from es_actors.codecs.rows import table_to_rows
from es_actors.config import StoreConfig
from es_actors.domain import DomainRegistry
from es_actors.examples.bank import BankAccount
from es_actors.read.subscription import Subscription
from es_actors.storage import files
from es_actors.storage.layout import StoreLayout
from es_actors.storage.local.backend import LocalBackend
from es_actors.storage.local.wal import _SUFFIX
from es_actors.storage.local.segments import (
    file_crc32, list_segments, resolve_current, segment_name, write_parquet_durably,
)

PER_SEGMENT = 50
_TAIL_SUFFIX = _SUFFIX  # a tail file's name (the DURABLE mark beside them is not one)


def _row(partition: int, position: int, n: int) -> tuple[Any, ...]:
    agg = f"acc-{n % 13}"  # the correlation id below is incompressible bulk, so row groups dwarf the footer
    return (
        partition, position, "BankAccount", agg, n // 13 + (1 if n % 13 else 0), "MoneyDeposited", 2, f"e{partition}-{n}", f"c{partition}-{n}",
        "d", random.Random(n).randbytes(400).hex(), None, "tester", 1_700_000_000_000_000 + n, json.dumps({"amount": n}), "{}",
    )


def build_store(root: Path, segments: int, tail: int = 30, partitions: int = 1) -> StoreLayout:
    """``segments`` sealed segments of PER_SEGMENT events per partition, then ``tail`` unsealed ones,
    of 13 aggregates (the same names in every partition: position reads do not route by aggregate)."""
    layout = StoreLayout(root)
    root.mkdir(parents=True, exist_ok=True)
    layout.create_or_check(partitions, partitions)
    backend = LocalBackend(root)
    for p in range(partitions):
        log = backend.open_log(p, StoreConfig(compact_small_rows=1))  # no compaction: one segment per seal
        try:
            n = 0
            for _ in range(segments):  # one commit per segment keeps the store quick to build
                log.append([_row(p, log.next_position + i, n + 1 + i) for i in range(PER_SEGMENT)])
                n += PER_SEGMENT
                log.seal()
            for _ in range(tail):
                n += 1
                log.append([_row(p, log.next_position, n)])
        finally:
            log.close()
    return layout


class Opened:
    """Files opened while counting: through the read paths' opener (with bytes read) and by Python."""

    def __init__(self) -> None:
        self.active = False
        self.inputs: list[str] = []
        self.bytes_read = 0
        self.python: list[str] = []

    def segments(self) -> set[str]:
        return {Path(p).name for p in self.inputs + self.python if Path(p).name.startswith("seg-")}

    def tails(self) -> set[str]:
        return {Path(p).name for p in self.python if "/tail/" in p and Path(p).name.endswith(_TAIL_SUFFIX)}


class _CountingFile:
    def __init__(self, path: str, opened: Opened) -> None:
        self._f = open(path, "rb")
        self._opened = opened

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._opened.bytes_read += len(data)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


_HOOKED: list[Opened] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and _HOOKED and _HOOKED[-1].active and isinstance(args[0], (str, Path)):
        _HOOKED[-1].python.append(str(args[0]))


sys.addaudithook(_audit)  # audit hooks cannot be removed: this one records only while a test counts


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> Iterator[Opened]:
    counter = Opened()

    def counting_open_input(path: Path | str) -> pa.NativeFile:
        counter.inputs.append(str(path))
        return pa.PythonFile(_CountingFile(str(path), counter), mode="r")

    monkeypatch.setattr(files, "open_input", counting_open_input)
    _HOOKED.append(counter)
    yield counter
    _HOOKED.remove(counter)


def _counted(counter: Opened, fn: Any) -> Any:
    counter.active = True
    try:
        return fn()
    finally:
        counter.active = False


def _seg(k: int) -> str:
    """The k-th segment's name without its CRC."""
    return f"seg-{(k - 1) * PER_SEGMENT + 1:020d}-{k * PER_SEGMENT:020d}"


def _names(segments: set[str]) -> set[str]:
    return {n.rsplit("-", 1)[0] for n in segments}


def test_a_range_reads_only_the_segments_that_overlap_it(tmp_path: Path, opened: Opened) -> None:
    layout = build_store(tmp_path / "s", segments=20)
    reader = LocalBackend(layout.root).reader(0)
    full = table_to_rows(reader.read_all())
    first, last = 7 * PER_SEGMENT + 10, 8 * PER_SEGMENT + 5  # the 8th segment's end, the 9th's start
    got = _counted(opened, lambda: reader.read_range(first, last))
    assert table_to_rows(got) == full[first - 1 : last]
    assert _names(opened.segments()) == {_seg(8), _seg(9)}
    assert not opened.tails(), "a range inside the sealed log does not read the tail"


def test_a_range_past_the_sealed_log_reads_the_tail_and_no_earlier_segment(tmp_path: Path, opened: Opened) -> None:
    layout = build_store(tmp_path / "s", segments=10, tail=40)
    reader = LocalBackend(layout.root).reader(0)
    full = table_to_rows(reader.read_all())
    sealed = 10 * PER_SEGMENT
    for first, last in ((sealed - 3, sealed + 7), (sealed + 5, sealed + 40), (sealed + 20, sealed + 99), (sealed + 41, sealed + 50)):
        opened.inputs.clear(), opened.python.clear()
        got = _counted(opened, lambda: reader.read_range(first, last))
        assert table_to_rows(got) == full[first - 1 : last]
        assert len(opened.segments()) == (1 if first <= sealed else 0)
    assert table_to_rows(reader.read_range(0, 10**9)) == full
    assert reader.read_range(5, 4).num_rows == 0


def _compact_with_small_row_groups(layout: StoreLayout, partition: int, row_group_rows: int) -> Path:
    """Rewrite a partition's sealed segments as one segment of many small row groups (what a
    compaction of large segments looks like), as the owner would: a CRC-named file in the
    current generation, the old ones gone. No writer is open."""
    gen = resolve_current(layout.log_dir(partition))
    assert gen is not None
    segments = list_segments(gen)
    table = pa.concat_tables([pa.parquet.read_table(s.path) for s in segments])
    first, last = segments[0].first, segments[-1].last
    tmp = gen / "merged.tmp"
    write_parquet_durably(table, tmp, row_group_size=row_group_rows)
    path = gen / segment_name(first, last, file_crc32(tmp))
    tmp.rename(path)
    for s in segments:
        s.path.unlink()
    return path


def test_a_range_reads_only_the_row_groups_that_overlap_it(tmp_path: Path, opened: Opened) -> None:
    import pyarrow.parquet  # noqa: F401 - pa.parquet for the helper

    layout = build_store(tmp_path / "s", segments=40, tail=0)
    merged = _compact_with_small_row_groups(layout, 0, row_group_rows=100)
    reader = LocalBackend(layout.root).reader(0)
    full = table_to_rows(reader.read_all())
    assert len(full) == 40 * PER_SEGMENT
    small = _counted(opened, lambda: reader.read_range(1000, 1010))
    assert table_to_rows(small) == full[999:1010]
    small_bytes, opened.bytes_read = opened.bytes_read, 0
    assert _counted(opened, lambda: reader.read_range(1, 2000)).num_rows == 2000
    whole_bytes = opened.bytes_read
    assert {Path(p).name for p in opened.inputs} == {merged.name}
    assert small_bytes * 5 < whole_bytes, (small_bytes, whole_bytes)  # one row group of twenty, plus the footer


def test_a_subscription_from_a_late_checkpoint_reads_only_what_follows_it(tmp_path: Path, opened: Opened) -> None:
    layout = build_store(tmp_path / "s", segments=30, tail=25, partitions=2)
    checkpoint = {0: 27 * PER_SEGMENT + 20, 1: 29 * PER_SEGMENT}
    registry = DomainRegistry([BankAccount])
    sub = Subscription(layout, 2, registry, dict(checkpoint), follow=False)
    events = _counted(opened, lambda: list(sub))
    expected = {0: 3 * PER_SEGMENT - 20 + 25, 1: PER_SEGMENT + 25}
    assert {p: sum(e.partition == p for e in events) for p in (0, 1)} == expected
    assert [e.position for e in events if e.partition == 0] == list(range(checkpoint[0] + 1, 30 * PER_SEGMENT + 26))
    assert sub.checkpoint == {0: 30 * PER_SEGMENT + 25, 1: 30 * PER_SEGMENT + 25}
    touched = {(Path(p).parent.parent.name, _names({Path(p).name}).pop()) for p in opened.inputs + opened.python if "/seg-" in p}
    wanted = {(layout.log_dir(0).name, _seg(k)) for k in (28, 29, 30)} | {(layout.log_dir(1).name, _seg(30))}
    assert touched == wanted, "segments before the checkpoint stay closed"


def test_a_subscription_costs_the_same_from_the_same_distance_to_the_end(tmp_path: Path, opened: Opened) -> None:
    """Files opened and bytes read depend on the events after the checkpoint, not on the log before it."""
    registry = DomainRegistry([BankAccount])
    cost = []
    for size in (10, 100):
        layout = build_store(tmp_path / f"s{size}", segments=size, tail=10)
        checkpoint = {0: (size - 2) * PER_SEGMENT}
        opened.inputs.clear(), opened.python.clear()
        opened.bytes_read = 0
        events = _counted(opened, lambda: list(Subscription(layout, 1, registry, checkpoint, follow=False)))
        assert len(events) == 2 * PER_SEGMENT + 10
        cost.append((len(opened.segments()), len(opened.tails()), opened.bytes_read))
    assert cost[0][:2] == cost[1][:2] == (2, 1)
    assert abs(cost[0][2] - cost[1][2]) < 0.1 * cost[0][2], cost
