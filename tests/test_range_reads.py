"""Range reads of one aggregate (issue 11): every range read equals the same slice of a full scan,
across seals, compactions and owner restarts (in-process and a real killed process); the cost of one
aggregate's history does not grow with the store; the argument rules; paging; the CLI. No Ray."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from es_actors.codecs.rows import COL
from es_actors.errors import EsActorsError
from es_actors.storage import files
from es_actors.storage.backends import aggregate_rows
from es_actors.storage.layout import StoreLayout
from es_actors.storage.local import tail_cursor
from es_actors.storage.local.backend import LocalBackend
from es_actors.storage.local.reader import read_partition_rows
from es_actors.store import Store
from es_actors.testing.storage_conformance import EventLog, small_config

VER, POS, AID = COL["version"], COL["position"], COL["aggregate_id"]


def new_store(root: Path) -> LocalBackend:
    StoreLayout(root).create_or_check(1, 1)
    return LocalBackend(root)


def expected(root: Path, agg: str, lo: int, hi: int | None, limit: int | None, backwards: bool) -> list[Any]:
    """The slice of a full scan (read_partition: every sealed segment + every tail frame)."""
    rows = [r for r in read_partition_rows(StoreLayout(root), 0) if r[AID] == agg and lo <= r[VER] <= (hi or 10**9)]
    rows.sort(key=lambda r: r[VER], reverse=backwards)
    return rows if limit is None else rows[:limit]


def check_all_ranges(root: Path, ev: EventLog, data: Any) -> None:
    layout = StoreLayout(root)
    for agg in sorted(ev.versions):
        n = ev.versions[agg]
        for _ in range(3):
            lo = data.draw(st.integers(1, n + 1))
            hi = data.draw(st.one_of(st.none(), st.integers(lo, n + 2)))
            limit = data.draw(st.one_of(st.none(), st.integers(0, n + 1)))
            backwards = data.draw(st.booleans())
            got = aggregate_rows(layout, 0, "Account", agg, lo, hi, limit, backwards)
            assert got == expected(root, agg, lo, hi, limit, backwards), (agg, lo, hi, limit, backwards)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    steps=st.lists(st.one_of(st.lists(st.sampled_from("abc"), min_size=1, max_size=8),
                             st.sampled_from(["seal", "compact", "restart", "read"])), min_size=1, max_size=25),
    data=st.data(),
)
def test_range_reads_are_slices_of_a_full_scan_across_seals_compactions_and_restarts(steps: list[Any], data: Any) -> None:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "store"
        backend = new_store(root)
        ev = EventLog()
        log = backend.open_log(0, small_config())
        try:
            for step in steps:
                if step == "seal":
                    log.seal()
                elif step == "compact":
                    log.compact()
                elif step == "restart":  # the owner closes (unsealed rows stay in the tail) and a new one recovers
                    log.close()
                    log = backend.open_log(0, small_config())
                elif step == "read":
                    check_all_ranges(root, ev, data)  # warms this process's tail index mid-history
                else:
                    ev.append(log, step)
            check_all_ranges(root, ev, data)
        finally:
            log.close()


_WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from es_actors.storage.local.backend import LocalBackend
    from es_actors.testing.storage_conformance import EventLog, small_config
    log = LocalBackend(Path(sys.argv[1])).open_log(0, small_config())
    ev = EventLog()
    i = 0
    while True:
        ev.append(log, ["a", "b", "c"][: 1 + i % 3] + ["k"])
        i += 1
        if i % 7 == 0:
            log.compact()
        print(i, flush=True)
""")


def test_range_reads_stay_exact_after_the_owner_is_killed_mid_write(tmp_path: Path) -> None:
    root = tmp_path / "store"
    new_store(root)
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(root)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if int(line) >= 150:
                break
        layout = StoreLayout(root)
        during = aggregate_rows(layout, 0, "Account", "k")  # a reader racing the writer: a gapless prefix
        assert [r[VER] for r in during] == list(range(1, len(during) + 1))
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # mid-write, with no clean close
        proc.wait()
    log = LocalBackend(root).open_log(0, small_config())  # recovery cuts a torn end
    log.close()
    for agg in "abck":
        full = expected(root, agg, 1, None, None, False)
        assert aggregate_rows(StoreLayout(root), 0, "Account", agg) == full
        assert aggregate_rows(StoreLayout(root), 0, "Account", agg, 2, 5, 2, True) == [r for r in full if 2 <= r[VER] <= 5][::-1][:2]
        assert len(full) >= (150 if agg == "k" else 1)


class _Counting:
    """A raw file that counts the bytes read through it."""

    def __init__(self, path: str, tally: dict[str, int]) -> None:
        self._f = open(path, "rb")
        self._tally = tally

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._tally["bytes"] += len(data)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


@pytest.fixture
def counted_io(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    tally = {"files": 0, "bytes": 0, "preads": 0}

    def open_input(path: Any) -> pa.NativeFile:
        tally["files"] += 1
        return pa.PythonFile(_Counting(str(path), tally), mode="r")

    real_open, real_pread = files.open_fd, files.pread_fd

    def open_fd(path: Any) -> int:
        tally["files"] += 1
        return real_open(path)

    def pread_fd(fd: int, length: int, offset: int) -> bytes:
        data = real_pread(fd, length, offset)
        tally["preads"] += 1
        tally["bytes"] += len(data)
        return data

    monkeypatch.setattr(files, "open_input", open_input)
    monkeypatch.setattr(files, "open_fd", open_fd)
    monkeypatch.setattr(files, "pread_fd", pread_fd)
    yield tally


def _fill(log: Any, ev: EventLog, events: int, probe_every: int) -> None:
    batch: list[str] = []
    for i in range(events):
        batch.append("probe" if i % probe_every == 0 else f"x{i % 97}")
        if len(batch) == 20:
            ev.append(log, batch)
            batch = []
    if batch:
        ev.append(log, batch)


@pytest.mark.parametrize("path", ["key files", "parsing the tail"])
def test_the_tail_part_of_an_aggregate_read_costs_only_new_frames(tmp_path: Path, counted_io: dict[str, int],
                                                                  path: str) -> None:
    """Warm tail index: reading one aggregate again costs the same whatever the tail's size. With
    the writer's key files: the records added since and the frames that hold the aggregate; parsing
    the tail (no key files): the frames added since."""
    costs = []
    for scale, root in ((1, tmp_path / "small"), (10, tmp_path / "large")):
        backend = new_store(root)
        ev = EventLog()
        log = backend.open_log(0, small_config().model_copy(update={"seal_rows": 10**7}))  # nothing sealed: all tail
        try:
            _fill(log, ev, 400 * scale, 40 * scale)
            if path == "parsing the tail":
                for keys in StoreLayout(root).tail_dir(0).glob("*.keys"):
                    keys.unlink()  # the reader finds no key file: it parses the tail
            aggregate_rows(StoreLayout(root), 0, "Account", "probe")  # first read: takes the records / parses the tail
            ev.append(log, ["probe", "y"])  # one new frame
            counted_io.update(files=0, bytes=0, preads=0)
            got = aggregate_rows(StoreLayout(root), 0, "Account", "probe")
            costs.append(dict(counted_io))
            assert [r[VER] for r in got] == list(range(1, ev.versions["probe"] + 1))
        finally:
            log.close()
    if path == "parsing the tail":
        assert costs[0]["files"] == costs[1]["files"] == 1
        assert costs[1]["bytes"] <= costs[0]["bytes"] + 64  # the new frame only (ids may be a digit longer)
    else:  # no file opened (kept open since the first read): the key file's new records, the new frame
        assert costs[0]["files"] == costs[1]["files"] == 0
        assert costs[0]["preads"] == costs[1]["preads"] == 2
        assert costs[1]["bytes"] <= costs[0]["bytes"] + 64  # (positions, versions a digit longer)


def _wait_until_indexed(layout: StoreLayout, timeout_s: float = 60.0) -> int:
    """The owner indexes sealed segments in the background: wait until the index covers them all."""
    import time

    from es_actors.storage.local.segments import list_segments, resolve_current
    from es_actors.storage.local.stream_index import StreamIndex
    from es_actors.storage.lost_ranges import LostRanges

    deadline = time.monotonic() + timeout_s
    while True:
        segments = list_segments(resolve_current(layout.log_dir(0)))  # type: ignore[arg-type]
        covered = StreamIndex(layout, 0).view(segments, LostRanges()).covered
        if covered == segments[-1].last or time.monotonic() > deadline:
            assert covered == segments[-1].last, f"the index covers 1..{covered} of 1..{segments[-1].last}"
            return covered
        time.sleep(0.05)


def test_an_aggregate_history_costs_the_same_in_a_store_ten_times_larger(
    tmp_path: Path, counted_io: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files opened and bytes read for one aggregate's history (sealed + tail) stay flat from a small
    store to a 10x larger one, the probe aggregate having the same events in both: plain reads
    (segments, tail files) are counted by ``open_input``, runs opened by ``map_input`` and the bytes a
    lookup touches in them by the index view."""
    from es_actors.storage.local import aggregate_read
    from es_actors.storage.local.stream_index import StreamIndex

    views: list[Any] = []
    mapped: list[str] = []
    real_map = files.map_input

    class RecordingIndex(StreamIndex):
        def view(self, segments: Any, lost: Any) -> Any:
            v = super().view(segments, lost)
            views.append(v)
            return v

    def counting_map(path: Any) -> pa.NativeFile:
        mapped.append(str(path))
        return real_map(path)

    monkeypatch.setattr(aggregate_read, "StreamIndex", RecordingIndex)
    monkeypatch.setattr(files, "map_input", counting_map)
    costs = []
    for scale, root in ((1, tmp_path / "small"), (10, tmp_path / "large")):
        backend = new_store(root)
        ev = EventLog()
        log = backend.open_log(0, small_config().model_copy(update={"seal_rows": 400}))
        try:
            _fill(log, ev, 4000 * scale, 40 * scale)
            log.seal()
            _wait_until_indexed(StoreLayout(root))
            ev.append(log, ["probe"])
        finally:
            log.close()  # the owner's background merges settled: the same runs for both reads below
        if True:
            aggregate_rows(StoreLayout(root), 0, "Account", "probe")  # warm: runs mapped and checked, tail index
            counted_io.update(files=0, bytes=0)
            views.clear()
            mapped.clear()
            got = aggregate_rows(StoreLayout(root), 0, "Account", "probe")
            assert [r[VER] for r in got] == list(range(1, ev.versions["probe"] + 1))
            costs.append({"files": counted_io["files"] + len(mapped),
                          "bytes": counted_io["bytes"] + sum(v.bytes_touched for v in views)})
    assert costs[1]["files"] <= costs[0]["files"] and costs[1]["bytes"] <= 1.3 * costs[0]["bytes"] + 4096, costs


# -- the Store API, paging, argument rules, the CLI -----------------------------------------------------


@pytest.fixture(scope="module")
def store_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, EventLog]:
    root = tmp_path_factory.mktemp("ranges") / "store"
    backend = new_store(root)
    ev = EventLog()
    log = backend.open_log(0, small_config())
    for i in range(30):
        ev.append(log, ["long"] * 50 + ["other"])  # 1,500 events of one aggregate across seals
    log.close()
    return root, ev


def test_store_history_ranges_and_paging(store_root: tuple[Path, EventLog]) -> None:
    root, ev = store_root
    store = Store.open(root, read_only=True)
    n = ev.versions["long"]
    assert [r[VER] for r in store.history_rows("Account", "long", from_version=10, to_version=12)] == [10, 11, 12]
    assert [r[VER] for r in store.history_rows("Account", "long", limit=3, backwards=True)] == [n, n - 1, n - 2]
    assert [r[VER] for r in store.history_rows("Account", "long", to_version=5, limit=2, backwards=True)] == [5, 4]
    assert store.history_rows("Account", "long", limit=0) == []
    assert store.history_rows("Account", "nobody") == []
    pages = store.iter_history_rows("Account", "long", page_size=64)
    assert [r[VER] for r in pages] == list(range(1, n + 1))
    back = store.iter_history_rows("Account", "long", from_version=7, backwards=True, page_size=100, limit=250)
    assert [r[VER] for r in back] == list(range(n, n - 250, -1))


def test_iter_history_reads_page_by_page(store_root: tuple[Path, EventLog], monkeypatch: pytest.MonkeyPatch) -> None:
    root, ev = store_root
    from es_actors.store import reading

    sizes: list[int] = []
    real = reading.aggregate_rows

    def counting(*args: Any) -> list[Any]:
        rows = real(*args)
        sizes.append(len(rows))
        return rows

    monkeypatch.setattr(reading, "aggregate_rows", counting)
    store = Store.open(root, read_only=True)
    it = store.iter_history_rows("Account", "long", page_size=100)
    first = [next(it) for _ in range(150)]
    assert [r[VER] for r in first] == list(range(1, 151)) and sizes == [100, 100]  # two pages read, not 1,500 rows
    assert sum(1 for _ in it) == ev.versions["long"] - 150 and max(sizes) == 100


@pytest.mark.parametrize("kwargs, name", [
    ({"from_version": 0}, "from_version"), ({"from_version": True}, "from_version"), ({"to_version": -1}, "to_version"),
    ({"limit": -1}, "limit"), ({"limit": 1.5}, "limit"), ({"backwards": 1}, "backwards"),
    ({"from_version": 5, "to_version": 4}, "from_version"), ({"from_version": 2**63}, "from_version"),
    ({"to_version": 2**64}, "to_version"), ({"limit": 2**63}, "limit"),
])
def test_bad_range_arguments_are_refused_naming_the_argument(store_root: tuple[Path, EventLog], kwargs: dict[str, Any], name: str,
                                                             counted_io: dict[str, int]) -> None:
    store = Store.open(store_root[0], read_only=True)
    for call in (store.history_rows, store.iter_history_rows):
        with pytest.raises(EsActorsError, match=name):
            call("Account", "long", **kwargs)
    with pytest.raises(EsActorsError, match="page_size"):
        store.iter_history_rows("Account", "long", page_size=0)
    assert counted_io["files"] == 0, "nothing is read for bad arguments"


def test_the_largest_bounds_read_to_the_end(store_root: tuple[Path, EventLog]) -> None:
    """2**63-1 (the largest version a log can hold) as a bound or a limit reads to the end, never an overflow."""
    root, ev = store_root
    store = Store.open(root, read_only=True)
    n = ev.versions["long"]
    big = 2**63 - 1
    assert [r[VER] for r in store.history_rows("Account", "long", from_version=2, limit=big)] == list(range(2, n + 1))
    assert [r[VER] for r in store.history_rows("Account", "long", to_version=big, limit=3, backwards=True)] == [n, n - 1, n - 2]
    assert store.history_rows("Account", "long", from_version=big) == []
    assert sum(1 for _ in store.iter_history_rows("Account", "long", page_size=big)) == n


def test_cli_history_ranges(store_root: tuple[Path, EventLog]) -> None:
    from es_actors.cli.main import main as cli

    root, _ev = store_root
    run = CliRunner().invoke
    out = run(cli, ["history", "Account", "long", "--store", str(root), "--json", "--from-version", "3", "--to-version", "5"])
    assert out.exit_code == 0, out.output
    assert [line.count('"version": ') for line in out.output.splitlines()] == [1, 1, 1]
    assert ['"version": 3', '"version": 4', '"version": 5'] == [s[s.index('"version"'):].split(",")[0] for s in out.output.splitlines()]
    out = run(cli, ["history", "Account", "long", "--store", str(root), "--limit", "2", "--backwards"])
    assert out.exit_code == 0 and [line.split()[0] for line in out.output.splitlines()] == ["v1500", "v1499"]
    out = run(cli, ["history", "Account", "long", "--store", str(root), "--from-version", "9", "--to-version", "2"])
    assert out.exit_code != 0 and "from_version" in out.output
    out = run(cli, ["history", "Account", "long", "--store", str(root), "--from-version", "2000"])
    assert out.exit_code != 0 and "no events" in out.output


def test_a_store_recreated_at_the_same_path_is_not_read_from_a_stale_tail_index(tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "store"
    for owner in ("first", "second"):
        backend = new_store(root)
        ev = EventLog(tag=owner)
        log = backend.open_log(0, small_config().model_copy(update={"seal_rows": 10**6}))
        ev.append(log, ["a", "a"] if owner == "first" else ["a", "a", "a"])
        log.close()
        got = aggregate_rows(StoreLayout(root), 0, "Account", "a")
        assert [r[COL["event_id"]] for r in got] == [r[COL["event_id"]] for r in ev.acked]
        shutil.rmtree(root)


# -- time travel reads only what it needs ----------------------------------------------------------------


def _bank_store(root: Path, deposits: int) -> None:
    import json
    import uuid

    from es_actors import DomainRegistry, StoreConfig
    from es_actors.examples.bank import BankAccount
    from es_actors.write.partition import Partition
    from es_actors.write.protocol import CommandEnvelope

    def cmd(name: str, payload: dict[str, Any]) -> CommandEnvelope:
        return CommandEnvelope("BankAccount", "tt", uuid.uuid4().hex, name, json.dumps(payload))

    StoreLayout(root).create_or_check(1, 1)
    p = Partition(StoreLayout(root), 0, DomainRegistry([BankAccount]), StoreConfig(lock_timeout_s=0, seal_rows=500))
    p.handle_batch([cmd("OpenAccount", {"owner": "tt"})])
    for i in range(0, deposits, 100):
        p.handle_batch([cmd("Deposit", {"amount": 1}) for _ in range(min(100, deposits - i))])
    p.close()


def test_state_at_reads_only_up_to_its_version_or_moment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import timedelta

    from es_actors.examples.bank import BankAccount
    from es_actors.store import reading

    root = tmp_path / "bank"
    _bank_store(root, 2500)
    store = Store.open(root, [BankAccount], read_only=True)
    acct = store.aggregate(BankAccount, "tt")
    reads: list[tuple[Any, ...]] = []
    real = reading.aggregate_rows

    def spy(*args: Any) -> list[Any]:
        reads.append(args[4:])
        return real(*args)

    monkeypatch.setattr(reading, "aggregate_rows", spy)
    at = acct.state_at(version=3)
    assert at.version == 3 and at.state.balance == 2
    assert reads and all(last is not None and last <= 3 for _first, last, *_ in reads)
    reads.clear()
    moment = store.history("BankAccount", "tt", from_version=1200, to_version=1200)[0].recorded_at
    at = acct.state_at(as_of=moment)
    assert at.version >= 1200 and at.state.balance == at.version - 1
    if at.version < 2001:  # events recorded after the moment: the stream stopped before the end
        assert len(reads) <= 3, reads
    for bad in (-1, True, "3"):
        with pytest.raises(EsActorsError, match="version"):
            acct.state_at(version=bad)  # type: ignore[arg-type]
    assert acct.state_at(version=0).version == 0
