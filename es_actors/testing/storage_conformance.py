"""The cases every storage backend must pass (in the spirit of the ``eventsourcing`` recorder
test cases and Akka's journal TCK): subclass :class:`StorageConformance` in a test module and
give it a :class:`BackendUnderTest`::

    class TestMyBackend(StorageConformance):
        kit = BackendUnderTest("mine", make=lambda root: MyBackend(root), ...)

A backend that cannot do something (inject write faults, be torn at a known place) leaves
that hook None, and the case is skipped with the reason shown by ``pytest -ra``. Each case
uses real files in a temporary directory and no Ray; the whole suite runs in seconds.

Longer than the ~400 lines a module is kept to: a backend author reads every case a backend
must pass in one file, in order, like a TCK.
"""

from __future__ import annotations

import contextlib
import errno
import json
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from es_actors.codecs.rows import COL, table_to_rows
from es_actors.config import StoreConfig
from es_actors.errors import EsActorsError, StorageError, StoreCorrupted, WriterFenced
from es_actors.storage.api import Capabilities, PartitionLog, Row, StorageBackend
from es_actors.codecs.snapshot_rows import SnapshotRow

Hook = Callable[[Path, int], None]


class SimulatedCrash(BaseException):
    """Raised by a backend's write hook half-way through a write: the process "dies" there
    (not an OSError, so nothing cleans up, as after a real crash)."""


@dataclass
class BackendUnderTest:
    """How the suite drives one backend.

    ``make(root)`` opens the backend on an empty directory (again on the same directory:
    a restart). ``fail_writes(errno, stage)`` is a context manager making the backend's raw
    write (``stage="write"``) or sync (``stage="sync"``) fail; ``crash_mid_write(stage)`` makes the
    process "die" (:class:`SimulatedCrash`) half-way through the next raw write (``"write"``) or
    with every byte written but before it is synced (``"sync"``). ``tear_tail`` leaves
    half a commit after the last one (a crash mid-write); ``damage_middle`` flips a byte of an
    acknowledged commit that later commits follow; ``damage_newest_whole`` flips a byte of the
    newest acknowledged commit where the backend can tell it was written whole (a whole object:
    its put completed), so it is damage, not a torn end.
    """

    name: str
    make: Callable[[Path], StorageBackend]
    config: StoreConfig = field(default_factory=lambda: small_config())
    fail_writes: Callable[[int, str], ContextManager[None]] | None = None
    crash_mid_write: Callable[[str], ContextManager[None]] | None = None
    tear_tail: Hook | None = None
    damage_middle: Hook | None = None
    damage_newest_whole: Hook | None = None
    why_not: dict[str, str] = field(default_factory=dict)  # hook name -> why this backend lacks it
    #: Every stored object's bytes under the backend made on ``root`` (to prove a refusal wrote nothing);
    #: default: the files under ``root``.
    tree_bytes: Callable[[Path], dict[str, bytes]] | None = None

    def make_capabilities(self) -> Capabilities:
        with tempfile.TemporaryDirectory() as d:
            return self.make(Path(d)).capabilities


def small_config() -> StoreConfig:
    """Seal and compact often, collect replaced files at once, give up on a held lock quickly:
    the races the suite looks for happen in a few hundred rows."""
    return StoreConfig.model_validate(
        {"seal_rows": 40, "compact_small_rows": 1000, "compact_min_run": 2, "gc_grace_s": 0.0, "lock_timeout_s": 0.3}
    )


class EventLog:
    """Builds valid rows for one partition and remembers what was acknowledged."""

    def __init__(self, partition: int = 0, tag: str = "") -> None:
        self.partition = partition
        self.tag = tag  # prefixes event ids: two writers' events stay distinguishable
        self.versions: dict[str, int] = {}
        self.acked: list[Row] = []
        self._n = 0

    def rows(self, next_position: int, aggregates: list[str]) -> list[Row]:
        out = []
        for i, agg in enumerate(aggregates):
            v = self.versions.get(agg, 0) + 1
            self.versions[agg] = v
            self._n += 1
            out.append((
                self.partition, next_position + i, "Account", agg, v, "Deposited", 1, f"{self.tag}e{self._n}", f"{self.tag}c{self._n}",
                "d", None, None, "tester", 1_700_000_000_000_000 + self._n, json.dumps({"n": self._n}), "{}",
            ))
        return out

    def append(self, log: PartitionLog, aggregates: list[str]) -> list[Row]:
        """Append one group; on success remember it as acknowledged; on failure undo the versions."""
        before = dict(self.versions)
        rows = self.rows(log.next_position, aggregates)
        try:
            done = log.append(rows)
        except BaseException:
            self.versions = before
            raise
        assert (done.first, done.last) == (rows[0][COL["position"]], rows[-1][COL["position"]])
        self.acked.extend(rows)
        return rows


def rows_of(table: pa.Table) -> list[Row]:
    return table_to_rows(table)


def positions(table: pa.Table) -> list[int]:
    return table.column("position").to_pylist()


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file's bytes under ``root``, by relative name."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


class StorageConformance:
    """Subclass with ``kit = BackendUnderTest(...)``; pytest collects the cases below."""

    kit: BackendUnderTest

    # -- helpers ----------------------------------------------------------------------------

    def _tree(self, root: Path) -> dict[str, bytes]:
        return (self.kit.tree_bytes or tree_bytes)(root)

    def _need(self, hook: str, capability: str | None = None) -> Any:
        """The kit's hook, or skip (pytest -ra shows why): the backend lacks the capability or the hook."""
        if capability is not None and not getattr(self.kit.make_capabilities(), capability):
            pytest.skip(f"{self.kit.name}: Capabilities.{capability} is False, so this case does not apply")
        value = getattr(self.kit, hook)
        if value is None:
            pytest.skip(f"{self.kit.name}: {self.kit.why_not.get(hook, f'no {hook} hook')}")
        return value

    @contextlib.contextmanager
    def _open(self, root: Path, config: StoreConfig | None = None) -> Iterator[tuple[StorageBackend, PartitionLog]]:
        backend = self.kit.make(root)
        log = backend.open_log(0, config or self.kit.config)
        try:
            yield backend, log
        finally:
            log.close()

    # -- round trip and positions -----------------------------------------------------------

    def test_append_then_read_gives_back_every_row_in_position_order(self, tmp_path: Path) -> None:
        ev = EventLog()
        with self._open(tmp_path) as (backend, log):
            for group in (["a"], ["a", "b", "c"], ["b"] * 5):
                ev.append(log, group)
            reader = backend.reader(0)
            assert rows_of(reader.read_all()) == ev.acked
            assert reader.high_water() == len(ev.acked)
            assert log.read_positions(2, 4) == ev.acked[1:4]
        assert rows_of(self.kit.make(tmp_path).reader(0).read_all()) == ev.acked  # after close, too

    def test_positions_are_gapless_and_continue_after_a_restart(self, tmp_path: Path) -> None:
        ev = EventLog()
        with self._open(tmp_path) as (_b, log):
            assert log.next_position == 1
            ev.append(log, ["a", "b"])
            with pytest.raises(StoreCorrupted):
                log.append(ev.rows(log.next_position + 1, ["x"]))  # a hole is refused
            ev.versions["x"] = 0
        with self._open(tmp_path) as (backend, log):
            assert log.next_position == 3
            ev.append(log, ["a"])
            log.seal()
            ev.append(log, ["c", "c"])
            reader = backend.reader(0)
            assert positions(reader.read_all()) == [1, 2, 3, 4, 5]
            assert reader.sealed_through() == 3  # rows 4 and 5 are in the tail
            ids = {r[COL["position"]]: r[COL["event_id"]] for r in ev.acked}
            assert reader.event_ids_at([1, 4, 5, 9]) == {p: ids[p] for p in (1, 4, 5)}  # nothing at 9
            assert reader.event_ids_at([]) == {}

    @settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.differing_executors])
    @given(
        groups=st.lists(st.lists(st.sampled_from("abcd"), min_size=1, max_size=6), min_size=1, max_size=10),
        seal_after=st.sets(st.integers(0, 9)),
        data=st.data(),
    )
    def test_range_and_aggregate_reads_are_slices_of_a_full_scan(self, groups: list[list[str]], seal_after: set[int], data: Any) -> None:
        with tempfile.TemporaryDirectory() as d, self._open(Path(d)) as (backend, log):
            ev = EventLog()
            for i, g in enumerate(groups):
                ev.append(log, g)
                if i in seal_after:
                    log.seal()
            reader = backend.reader(0)
            full = rows_of(reader.read_all())
            assert full == ev.acked
            n = len(full)
            first = data.draw(st.integers(1, n))
            last = data.draw(st.integers(first - 1, n + 2))
            assert rows_of(reader.read_range(first, last)) == full[first - 1 : last]
            agg = data.draw(st.sampled_from(sorted(ev.versions)))
            lo = data.draw(st.integers(1, ev.versions[agg] + 1))
            hi = data.draw(st.one_of(st.none(), st.integers(lo, ev.versions[agg] + 1)))
            expect = [r for r in full if r[COL["aggregate_id"]] == agg and lo <= r[COL["version"]] <= (hi or 10**9)]
            assert rows_of(reader.read_aggregate("Account", agg, lo, hi)) == expect

    @settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.differing_executors])
    @given(
        groups=st.lists(st.lists(st.sampled_from("ab"), min_size=1, max_size=6), min_size=1, max_size=10),
        seal_after=st.sets(st.integers(0, 9)),
        data=st.data(),
    )
    def test_aggregate_range_reads_forward_backward_and_limited(self, groups: list[list[str]], seal_after: set[int], data: Any) -> None:
        """``read_aggregate(first_version, last_version, limit, backwards)``: versions in range, oldest
        first or newest first, the first ``limit`` of that order; position ranges alike."""
        with tempfile.TemporaryDirectory() as d, self._open(Path(d)) as (backend, log):
            ev = EventLog()
            for i, g in enumerate(groups):
                ev.append(log, g)
                if i in seal_after:
                    log.seal()
            reader = backend.reader(0)
            for agg in sorted(ev.versions):
                mine = [r for r in ev.acked if r[COL["aggregate_id"]] == agg]
                n = len(mine)
                lo = data.draw(st.integers(1, n + 1))
                hi = data.draw(st.one_of(st.none(), st.integers(lo - 1, n + 2)))
                limit = data.draw(st.one_of(st.none(), st.integers(0, n + 1)))
                backwards = data.draw(st.booleans())
                want = [r for r in mine if lo <= r[COL["version"]] <= (n if hi is None else hi)]
                want = want[::-1] if backwards else want
                want = want if limit is None else want[:limit]
                assert rows_of(reader.read_aggregate("Account", agg, lo, hi, limit, backwards)) == want
            first = data.draw(st.integers(1, len(ev.acked)))
            last = data.draw(st.integers(first, len(ev.acked)))
            assert rows_of(reader.read_range(first, last)) == ev.acked[first - 1 : last]
            assert rows_of(reader.read_range(first, 2**64)) == ev.acked[first - 1 :]  # past int64: to the end
            assert rows_of(reader.read_range(-5, 0)) == [] and rows_of(reader.read_range(2**63, 2**64)) == []
            for bad in ((True, 3), ("1", 5), (1, 2.0)):
                with pytest.raises(EsActorsError, match="position range"):
                    reader.read_range(*bad)  # an argument error, never one that reads like damage

    # -- crashes, torn tails, damage --------------------------------------------------------

    def test_a_torn_tail_is_cut_on_recovery(self, tmp_path: Path) -> None:
        tear = self._need("tear_tail")
        ev = EventLog()
        with self._open(tmp_path) as (_b, log):
            ev.append(log, ["a", "b"])
            ev.append(log, ["a"])
        tear(tmp_path, 0)
        assert rows_of(self.kit.make(tmp_path).reader(0).read_all()) == ev.acked  # readers skip the torn end
        with self._open(tmp_path) as (backend, log):
            assert log.next_position == 4
            ev.append(log, ["c"])
            assert rows_of(backend.reader(0).read_all()) == ev.acked

    def test_damage_before_the_end_is_refused_and_left_as_it_was(self, tmp_path: Path) -> None:
        damage = self._need("damage_middle")
        ev = EventLog()
        with self._open(tmp_path) as (_b, log):
            for g in (["a"], ["b", "c"], ["a"]):
                ev.append(log, g)
        damage(tmp_path, 0)
        before = self._tree(tmp_path)
        with pytest.raises(StoreCorrupted):
            self.kit.make(tmp_path).open_log(0, self.kit.config)
        with pytest.raises(StoreCorrupted):
            self.kit.make(tmp_path).reader(0).read_all()
        assert self._tree(tmp_path) == before, "a refused recovery must not change a byte"

    def test_a_damaged_newest_commit_that_was_written_whole_is_refused_not_cut(self, tmp_path: Path) -> None:
        damage = self._need("damage_newest_whole")
        ev = EventLog()
        with self._open(tmp_path) as (_b, log):
            for g in (["a"], ["b", "c"]):
                ev.append(log, g)
        damage(tmp_path, 0)
        before = self._tree(tmp_path)
        backend = self.kit.make(tmp_path)
        for what, attempt in (("recovery", lambda: backend.open_log(0, self.kit.config)),
                              ("a reader", lambda: backend.reader(0).read_all()),
                              ("a follower", lambda: backend.follower(0).poll())):
            with pytest.raises(StoreCorrupted, match="damaged"):
                attempt()
            assert self._tree(tmp_path) == before, f"{what} changed a byte of a damaged store"

    @pytest.mark.parametrize("stage", ["write", "sync"])
    def test_a_crash_between_write_and_publish_leaves_nothing_half_visible(self, tmp_path: Path, stage: str) -> None:
        crash = self._need("crash_mid_write", "injects_write_faults")
        ev = EventLog()
        backend = self.kit.make(tmp_path)
        log = backend.open_log(0, self.kit.config)
        ev.append(log, ["a", "b"])
        unacked = ev.rows(log.next_position, ["a", "b", "c"])
        with crash(stage), pytest.raises(SimulatedCrash):
            log.append(unacked)
        seen = rows_of(self.kit.make(tmp_path).reader(0).read_all())  # while "dead"
        if self.kit.make_capabilities().can_fsync:
            assert seen == ev.acked  # bytes the writer never synced are not shown
        else:  # the object store kept the whole PUT before the writer died: readers may see it, whole
            assert seen in (ev.acked, ev.acked + unacked)
        log.close()  # what the dead process held is released (the kernel does it on a real crash)
        with self._open(tmp_path) as (backend, log):
            got = rows_of(backend.reader(0).read_all())
            # Never acknowledged, so the outcome is unknown: the batch is there whole, or not at all,
            # and what a reader saw meanwhile never vanishes.
            assert got in (ev.acked, ev.acked + unacked) and got[: len(seen)] == seen
            if got == ev.acked:
                ev.versions = {"a": 1, "b": 1}
            else:
                ev.acked.extend(unacked)
            assert log.next_position == len(ev.acked) + 1
            ev.append(log, ["c"])
            assert rows_of(backend.reader(0).read_all()) == ev.acked

    # -- fencing ----------------------------------------------------------------------------

    def test_a_second_writer_is_fenced_and_no_acknowledged_event_is_lost_or_doubled(self, tmp_path: Path) -> None:
        ev = EventLog()
        first = self.kit.make(tmp_path).open_log(0, self.kit.config)
        second: PartitionLog | None = None
        try:
            ev.append(first, ["a"])
            try:
                second = self.kit.make(tmp_path).open_log(0, self.kit.config)
            except WriterFenced:  # refused at open (a lock): the first writer carries on
                ev.append(first, ["b"])
            else:  # no lock: the newer owner wins, the older one is refused at its next append
                with pytest.raises(WriterFenced):
                    ev.append(first, ["b"])
                ev.append(second, ["c"])
                with pytest.raises(WriterFenced):
                    ev.append(first, ["d"])
        finally:
            first.close()
            if second is not None:
                second.close()
        with self._open(tmp_path) as (backend, log):
            ev.append(log, ["e"])
            got = rows_of(backend.reader(0).read_all())
        assert got == ev.acked
        assert positions(pa.table({"position": [r[1] for r in got]})) == list(range(1, len(got) + 1))

    def test_readers_racing_a_takeover_never_see_an_event_change_or_vanish(self, tmp_path: Path) -> None:
        old_ev, new_ev = EventLog(tag="old-"), EventLog(tag="new-")
        first = self.kit.make(tmp_path).open_log(0, self.kit.config)
        old_ev.append(first, ["a"])
        stop = threading.Event()
        problems: list[str] = []

        def keep_appending() -> None:
            i = 0
            while not stop.is_set():
                try:
                    old_ev.append(first, [f"o{i % 3}"] * (1 + i % 3))
                except (WriterFenced, StorageError):
                    return
                i += 1

        def keep_reading() -> None:
            reader = self.kit.make(tmp_path).reader(0)
            seen: list[str] = []
            while not stop.is_set():
                ids = reader.read_all().column("event_id").to_pylist()
                if ids[: len(seen)] != seen:
                    problems.append(f"an event changed or vanished: {len(seen)} then {len(ids)} rows")
                    return
                seen = ids

        threads = [threading.Thread(target=keep_appending), threading.Thread(target=keep_reading)]
        for t in threads:
            t.start()
        second: PartitionLog | None = None
        try:
            time.sleep(0.05)
            try:
                second = self.kit.make(tmp_path).open_log(0, self.kit.config)
            except WriterFenced:
                pass  # a lock: the old writer keeps the partition
            else:
                for i in range(5):
                    new_ev.append(second, [f"n{i}"])
            time.sleep(0.05)
        finally:
            stop.set()
            for t in threads:
                t.join()
            first.close()
            if second is not None:
                second.close()
        assert not problems, problems
        got = self.kit.make(tmp_path).reader(0).read_all()
        ids = got.column("event_id").to_pylist()
        assert positions(got) == list(range(1, len(ids) + 1)) and len(set(ids)) == len(ids)
        assert {r[COL["event_id"]] for r in old_ev.acked + new_ev.acked} <= set(ids), "an acknowledged event was lost"

    # -- write failures ---------------------------------------------------------------------

    @pytest.mark.parametrize("code,stage", [(errno.ENOSPC, "write"), (errno.EIO, "write"), (errno.EIO, "sync")])
    def test_a_failed_write_fails_the_append_and_loses_nothing_acknowledged(self, tmp_path: Path, code: int, stage: str) -> None:
        fail = self._need("fail_writes", "injects_write_faults")
        ev = EventLog()
        with self._open(tmp_path) as (backend, log):
            ev.append(log, ["a", "b"])
            with fail(code, stage), pytest.raises(StorageError):
                ev.append(log, ["a", "c"])
            assert rows_of(backend.reader(0).read_all()) == ev.acked
        with self._open(tmp_path) as (backend, log):  # a restart recovers exactly what was acknowledged
            assert log.next_position == len(ev.acked) + 1
            ev.append(log, ["c"])
            assert rows_of(backend.reader(0).read_all()) == ev.acked

    # -- readers and followers while the owner seals and compacts ---------------------------

    def test_readers_during_sealing_and_compaction_see_all_or_nothing(self, tmp_path: Path) -> None:
        ev = EventLog()
        stop = threading.Event()
        problems: list[str] = []
        reads = [0]
        with self._open(tmp_path) as (backend, log):
            ev.append(log, ["a"])

            def read_loop() -> None:
                reader = self.kit.make(tmp_path).reader(0)
                seen = 0
                while not stop.is_set():
                    acked_before = len(ev.acked)
                    try:
                        got = positions(reader.read_all())
                    except Exception as exc:  # pragma: no cover - reported below
                        problems.append(f"{type(exc).__name__}: {exc}")
                        return
                    if got != list(range(1, len(got) + 1)) or len(got) < max(seen, acked_before):
                        problems.append(f"read {got[:3]}..{got[-3:]} ({len(got)} rows) after {seen}, {acked_before} acked")
                        return
                    seen = len(got)
                    reads[0] += 1

            t = threading.Thread(target=read_loop)
            t.start()
            try:
                for i in range(60):
                    ev.append(log, [f"g{i % 7}"] * (1 + i % 5))
                    if i % 10 == 9:
                        log.seal()
                        log.compact()
            finally:
                stop.set()
                t.join()
            assert not problems, problems
            assert reads[0] > 0
            assert rows_of(backend.reader(0).read_all()) == ev.acked

    def test_a_follower_reads_every_row_once_and_keeps_its_place(self, tmp_path: Path) -> None:
        ev = EventLog()
        with self._open(tmp_path) as (backend, log):
            follower = backend.follower(0)
            assert follower.poll() is None
            got: list[Row] = []

            def drain() -> None:
                while (batch := follower.poll(max_rows=7)) is not None:
                    assert batch.first == (got[-1][COL["position"]] + 1 if got else 1)
                    got.extend(rows_of(batch.to_table()))
                    assert follower.after == batch.last

            for i in range(12):
                ev.append(log, ["a", "b"] * (1 + i % 3))
                if i % 4 == 3:
                    log.seal()
                if i % 3 == 0:
                    drain()
            log.compact()
            drain()
            assert got == ev.acked
            follower.seek(3)
            batch = follower.poll(max_rows=2)
            assert batch is not None and (batch.first, batch.last) == (4, 5)

    @settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.differing_executors])
    @given(
        groups=st.lists(st.integers(1, 6), min_size=1, max_size=12),
        seal_after=st.sets(st.integers(0, 11)),
        compact_after=st.sets(st.integers(0, 11)),
        poll_after=st.sets(st.integers(0, 11)),
        max_rows=st.integers(1, 9),
    )
    def test_followers_polling_small_runs_across_seals_and_compactions_equal_a_full_scan(
        self, groups: list[int], seal_after: set[int], compact_after: set[int], poll_after: set[int], max_rows: int,
    ) -> None:
        """A follower polling ``max_rows`` at a time (between appends, seals and compactions, or only
        at the end) returns every row once, in order, batch after batch without a gap. Replaced
        segments stay readable ``gc_grace_s`` (a batch is read within it): with 0 a background
        compaction (local disk) could collect a batch's files between its poll and its read."""
        config = self.kit.config.model_copy(update={"gc_grace_s": 60.0})
        with tempfile.TemporaryDirectory() as d, self._open(Path(d), config) as (backend, log):
            ev = EventLog()
            early, late = backend.follower(0), backend.follower(0)
            got: dict[int, list[Row]] = {id(early): [], id(late): []}

            def drain(f: Any) -> None:
                mine = got[id(f)]
                while (batch := f.poll(max_rows=max_rows)) is not None:
                    assert batch.first == len(mine) + 1 and batch.last - batch.first + 1 <= max_rows
                    rows = rows_of(batch.to_table())
                    assert [r[COL["position"]] for r in rows] == list(range(batch.first, batch.last + 1))
                    mine.extend(rows)
                    assert f.after == batch.last

            for i, n in enumerate(groups):
                ev.append(log, [f"g{(i + k) % 3}" for k in range(n)])
                if i in seal_after:
                    log.seal()
                if i in compact_after:
                    log.compact()
                if i in poll_after:
                    drain(early)
            drain(early)
            drain(late)
            full = rows_of(backend.reader(0).read_all())
            assert full == ev.acked
            assert got[id(early)] == full and got[id(late)] == full

    def test_read_range_is_the_slice_of_read_all_at_every_segment_boundary(self, tmp_path: Path) -> None:
        ev = EventLog()
        with self._open(tmp_path) as (backend, log):
            for i in range(9):
                ev.append(log, ["a", "b", "c"][: 1 + i % 3])
                if i in (2, 3, 6):
                    log.seal()  # segments, then commits in the tail
            reader = backend.reader(0)
            full = rows_of(reader.read_all())
            assert full == ev.acked
            n = len(full)
            edges = sorted({1, 2, n - 1, n, n + 1} | {p + d for p in (4, 5, 8, 11, 12) for d in (0, 1) if p + d <= n})
            for first in edges:
                for last in edges:
                    assert rows_of(reader.read_range(first, last)) == full[first - 1 : last], (first, last)

    # -- snapshots --------------------------------------------------------------------------

    def test_snapshots_round_trip_newest_first(self, tmp_path: Path) -> None:
        store = self.kit.make(tmp_path).snapshots(0)
        assert store.candidates("Account", "a") == []
        older = SnapshotRow("Account", "a", 2, 5, "f", "json", b"{}", "e5")
        newer = SnapshotRow("Account", "a", 4, 9, "f", "json", b'{"x":1}', "e9")
        store.write([older, SnapshotRow("Account", "b", 1, 1, "f", "json", b"{}", "e1")])
        time.sleep(0.002)  # snapshot groups are ordered by when they were written
        store.write([newer])
        assert store.candidates("Account", "a") == [newer, older]
        store.consolidate(lambda r: r.aggregate_id == "a")
        again = self.kit.make(tmp_path).snapshots(0)
        assert again.candidates("Account", "a") == [newer] and again.candidates("Account", "b") == []
