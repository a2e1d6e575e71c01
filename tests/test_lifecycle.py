"""Aggregate lifecycle against a real local Ray and real files: lazy hydration, LRU passivation,
snapshots (used, never stale, damage-proof), crash recovery from snapshot + tail, admin calls.

What users rely on: whatever is in or out of memory, and whatever the snapshot files hold,
every command gets the outcome and version a pure fold of its aggregate's events gives, and
every state read equals that fold.
"""

from __future__ import annotations

from es_actors.codecs.state import SnapshotFormat
import itertools
import os
import random
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from es_actors import CommandIdReused, ConcurrencyError, DomainError, Store, Submission
from es_actors.runtime.naming import NAMESPACE
from es_actors.domain import DomainRegistry
from es_actors.runtime.naming import actor_name
from es_actors.storage.local.snapshots import snapshot_dir
from es_actors.examples.bank import BankAccount, Deposit, OpenAccount, Withdraw
from tests.domains import (
    Bump,
    CountedAccount,
    RarelySnapshottedAccount,
    RevisedAccount,
    SnapshottedAccount,
    Tally,
)

# -- helpers ------------------------------------------------------------------------------


class Model:
    """One account as the pure decider sees it: the reference every answer is checked against."""

    def __init__(self) -> None:
        self.state = BankAccount.initial_state()
        self.version = 0

    def apply(self, command: Any, expected: int | None = None) -> tuple[str, Any]:
        """("ok", new version) or ("err", exception class), without changing anything on error."""
        if expected is not None and expected != self.version:
            return "err", ConcurrencyError
        try:
            events = BankAccount.decide(self.state, command)
        except DomainError as exc:
            return "err", type(exc)
        self.state = BankAccount.fold(events, self.state)
        self.version += len(events)
        return "ok", self.version


def counters(store: Store, p: int = 0) -> dict[str, Any]:
    return store.stats()[p]


def delta(after: dict[str, Any], before: dict[str, Any], name: str) -> int:
    return after[name] - before[name]


def wait_names_free(store: Store, timeout: float = 30.0) -> None:
    """After close, the partition actors' names are released (asynchronously) before a reopen."""
    deadline = time.monotonic() + timeout
    for p in range(store.descriptor.partitions):
        name = actor_name(store.layout, store.descriptor, p)
        while True:
            try:
                ray.get_actor(name, namespace=NAMESPACE)
            except ValueError:
                break
            assert time.monotonic() < deadline, f"actor {name} still registered"
            time.sleep(0.05)


def close_for_reopen(store: Store) -> None:
    store.close()
    wait_names_free(store)


def snapshot_files(store_root: Path, partition: int = 0) -> list[Path]:
    d = snapshot_dir(store_root, partition)
    return sorted(d.glob("snap-*.parquet")) if d.exists() else []


def snapshot_rows(store_root: Path, partition: int = 0) -> list[dict[str, Any]]:
    return [r for f in snapshot_files(store_root, partition) for r in pq.read_table(f).to_pylist()]


def fingerprint(aggregate: type) -> str:
    return SnapshotFormat(DomainRegistry([aggregate])).fingerprint(aggregate.aggregate_type)


def write_account(store: Store, aid: str, deposits: int, amount: int = 1, first: int = 0) -> None:
    """Open (if ``first`` is 0) and make deposits number ``first``.. of ``amount`` in one bulk call:
    one event per command, deposit i at version i + 2 with command id f"{aid}-d{i}"."""
    subs: list[Submission] = []
    if first == 0:
        subs.append(Submission(BankAccount, aid, OpenAccount(owner=aid), command_id=f"{aid}-open"))
    subs += [
        Submission(BankAccount, aid, Deposit(amount=amount), command_id=f"{aid}-d{i}")
        for i in range(first, first + deposits)
    ]
    results = store.submit_many(subs)
    bad = [r for r in results if isinstance(r, Exception)]
    assert not bad, bad[:3]
    start = 1 if first == 0 else first + 2
    assert [r.version for r in results] == list(range(start, first + deposits + 2))


def write_snapshotted(store: Store, aid: str, deposits: int, amount: int = 1) -> None:
    """Version 100 in one go (a SnapshottedAccount snapshot comes due there), then the rest."""
    write_account(store, aid, 99, amount)
    if deposits > 99:
        write_account(store, aid, deposits - 99, amount, first=99)


def wait_restarted(store: Store, old_pid: int, p: int = 0, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            s = ray.get(store._actors[p].stats.remote(), timeout=timeout)
            if s["pid"] != old_pid:
                return s
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
            pass
        assert time.monotonic() < deadline, "the partition actor did not come back"
        time.sleep(0.05)


def expected_account(aid: str, deposits: int, amount: int = 1) -> Model:
    model = Model()
    model.apply(OpenAccount(owner=aid))
    for _ in range(deposits):
        model.apply(Deposit(amount=amount))
    return model


def assert_state(store: Store, aggregate: Any, aid: str, model: Model) -> Any:
    got = store.aggregate(aggregate, aid).state()
    assert got.version == model.version
    state = got.state.account if hasattr(got.state, "account") else got.state
    assert state == model.state
    return got.state


# -- 1. property: outcomes and states equal the pure model, whatever is passivated ------------

MAX_HYDRATED = 2
N_ACCOUNTS = 8


@pytest.fixture(scope="module")
def tiny_lru_store(ray_session, tmp_path_factory):
    s = Store.open(tmp_path_factory.mktemp("lru") / "store", [BankAccount], partitions=1, max_hydrated=MAX_HYDRATED)
    yield s, itertools.count()
    s.close()


expectations = st.sampled_from(["none", "none", "none", "right", "wrong"])
steps = st.one_of(
    st.tuples(st.just("open"), st.integers(0, N_ACCOUNTS - 1), st.sampled_from(["ann", "bob"]), expectations),
    st.tuples(st.just("deposit"), st.integers(0, N_ACCOUNTS - 1), st.integers(1, 50), expectations),
    st.tuples(st.just("deposit"), st.integers(0, N_ACCOUNTS - 1), st.integers(1, 50), expectations),
    st.tuples(st.just("withdraw"), st.integers(0, N_ACCOUNTS - 1), st.integers(1, 80), expectations),
    st.tuples(st.just("passivate"), st.integers(0, N_ACCOUNTS - 1)),
    st.tuples(st.just("passivate_all")),
    st.tuples(st.just("state"), st.integers(0, N_ACCOUNTS - 1)),
    st.tuples(st.just("retry"), st.integers(0, 10**6), st.booleans()),
    st.tuples(st.just("reuse"), st.integers(0, 10**6), st.booleans()),
)


def changed(command: Any) -> Any:
    """Another command of the same kind: resubmitted under an old id, it must be refused."""
    if isinstance(command, OpenAccount):
        return OpenAccount(owner=command.owner + "x")
    return type(command)(amount=command.amount + 1)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    opened=st.integers(0, N_ACCOUNTS),
    script=st.lists(steps, min_size=10, max_size=40),
    # where in the script the actor crashes (a quarter of the examples: a restart costs ~1-3 s)
    restart=st.sampled_from([None, None, None, None, None, None, 0.3, 0.7]),
)
def test_outcomes_and_states_equal_the_pure_model_under_passivation(tiny_lru_store, opened, script, restart):
    """Random commands over a few accounts on a partition that may hold 2 states, interleaved
    with passivations, retries, reused ids and (in some examples) a crash of the actor."""
    store, counter = tiny_lru_store
    script = [("open", i, f"o{i}", "none") for i in range(opened)] + script
    restart_at = None if restart is None else int(restart * len(script))
    ns = f"x{next(counter)}"
    handles = [store.aggregate(BankAccount, f"{ns}-{i}") for i in range(N_ACCOUNTS)]
    models = [Model() for _ in range(N_ACCOUNTS)]
    accepted: list[tuple[int, str, Any, int]] = []  # (account, command id, command, version)
    for n, step in enumerate(script):
        if n == restart_at:  # the partition actor crashes and restarts; nothing is lost
            pid = counters(store)["pid"]
            ray.kill(store._actors[0], no_restart=False)
            assert wait_restarted(store, pid)["hydrated"] == 0
        kind = step[0]
        if kind in ("open", "deposit", "withdraw"):
            _, i, arg, mode = step
            command = {"open": lambda: OpenAccount(owner=arg), "deposit": lambda: Deposit(amount=arg),
                       "withdraw": lambda: Withdraw(amount=arg)}[kind]()
            expected = {"none": None, "right": models[i].version, "wrong": models[i].version + 1}[mode]
            cid = f"{ns}-c{n}"
            outcome, value = models[i].apply(command, expected)
            if outcome == "ok":
                res = handles[i].submit(command, command_id=cid, expected_version=expected)
                assert (res.version, res.duplicate) == (value, False)
                accepted.append((i, cid, command, value))
            else:
                with pytest.raises(value):
                    handles[i].submit(command, command_id=cid, expected_version=expected)
        elif kind == "passivate":
            handles[step[1]].passivate()
            assert handles[step[1]].passivate() is False  # already out of memory
        elif kind == "passivate_all":
            store.passivate()
            assert counters(store)["hydrated"] == 0
        elif kind == "state":
            got = handles[step[1]].state()
            assert (got.version, got.state) == (models[step[1]].version, models[step[1]].state)
        elif kind in ("retry", "reuse") and accepted:
            i, cid, command, version = accepted[step[1] % len(accepted)]
            if step[2]:
                handles[i].passivate()
            if kind == "retry":  # a retry of an acknowledged command: its first result, nothing new
                res = handles[i].submit(command, command_id=cid)
                assert (res.version, res.duplicate) == (version, True)
            else:
                with pytest.raises(CommandIdReused):
                    handles[i].submit(changed(command), command_id=cid)
        assert counters(store)["hydrated"] <= MAX_HYDRATED
    for h, m in zip(handles, models):
        got = h.state()
        assert (got.version, got.state) == (m.version, m.state)
        assert len(h.history()) == m.version


# -- 2. snapshots are used ------------------------------------------------------------------


def test_a_snapshot_shortens_rehydration(store_factory):
    store = store_factory("snap", aggregates=(SnapshottedAccount,), partitions=1)
    write_snapshotted(store, "big", 150)
    write_account(store, "small", 3)
    model = expected_account("big", 150)
    assert store.flush_snapshots() >= 1
    rows = [r for r in snapshot_rows(store.root) if r["aggregate_id"] == "big"]
    assert [r["version"] for r in rows] == [100]  # due at 100 events: one snapshot there
    hist = store.aggregate(SnapshottedAccount, "big").history()
    assert rows[0]["event_id"] == hist[99].event_id and rows[0]["fingerprint"] == fingerprint(SnapshottedAccount)
    assert store.passivate() >= 1
    before = counters(store)
    assert_state(store, SnapshottedAccount, "big", model)
    after = counters(store)
    assert delta(after, before, "snapshot_used") == 1
    assert delta(after, before, "snapshot_ignored") == 0
    assert delta(after, before, "events_replayed") == 151 - 100
    assert_state(store, SnapshottedAccount, "small", expected_account("small", 3))


# -- 3. never stale ---------------------------------------------------------------------------


def _snapshotted_store(store_factory, name: str, deposits: int = 150, amount: int = 1) -> Store:
    store = store_factory(name, aggregates=(SnapshottedAccount,), partitions=1)
    write_account(store, "acc", deposits, amount)
    assert store.flush_snapshots() == 1
    return store


def _read_or_bulk(store: Store, how: str) -> None:
    """Hydrate by reading one aggregate (the state() call that follows), or all at once first."""
    if how == "bulk":
        assert store.hydrate() >= 1


@pytest.mark.parametrize("how", ["read", "bulk"])
@pytest.mark.parametrize("variant", [RevisedAccount, CountedAccount, RarelySnapshottedAccount], ids=lambda c: c.__name__)
def test_a_snapshot_from_other_code_is_ignored_and_replaced(store_factory, variant, how):
    """The same stored aggregate, reopened under code whose snapshot fingerprint differs."""
    store = _snapshotted_store(store_factory, "code")
    old = [r["fingerprint"] for r in snapshot_rows(store.root)]
    assert old == [fingerprint(SnapshottedAccount)]
    close_for_reopen(store)
    assert fingerprint(variant) != old[0]
    store = store_factory("code", aggregates=(variant,))
    model = expected_account("acc", 150)
    _read_or_bulk(store, how)
    state = assert_state(store, variant, "acc", model)
    if variant is CountedAccount:
        assert state.events == 151
    s = counters(store)
    assert s["snapshot_used"] == 0 and s["snapshot_ignored"] >= 1
    assert s["events_replayed"] == 151
    # the stale snapshot is replaced (even when the live policy would not take one yet)...
    assert store.flush_snapshots() == 1
    fresh = [r for r in snapshot_rows(store.root) if r["fingerprint"] == fingerprint(variant)]
    assert [r["version"] for r in fresh] == [151]
    # ...and the replacement is used from then on
    assert store.aggregate(variant, "acc").passivate() is True
    before = counters(store)
    assert_state(store, variant, "acc", model)
    after = counters(store)
    assert delta(after, before, "snapshot_used") == 1 and delta(after, before, "events_replayed") == 0


@pytest.mark.parametrize("how", ["read", "bulk"])
def test_a_snapshot_whose_position_is_not_the_logs_is_ignored(store_factory, how):
    store = store_factory("pos", aggregates=(SnapshottedAccount,), partitions=1)
    write_snapshotted(store, "acc", 150)
    write_account(store, "other", 5)
    assert store.flush_snapshots() == 1
    close_for_reopen(store)
    (path,) = snapshot_files(store.root)
    table = pq.read_table(path)
    rows = table.to_pylist()
    assert [r["version"] for r in rows] == [100]
    rows[0]["position"] += 1  # version kept, position of another event
    pq.write_table(
        table.from_pylist(rows, schema=table.schema), path, compression="zstd", write_page_checksum=True
    )
    store = store_factory("pos", aggregates=(SnapshottedAccount,))
    _read_or_bulk(store, how)
    assert_state(store, SnapshottedAccount, "acc", expected_account("acc", 150))
    s = counters(store)
    assert s["snapshot_used"] == 0 and s["snapshot_ignored"] >= 1


@pytest.mark.parametrize("how", ["read", "bulk"])
def test_a_snapshot_of_a_replaced_log_is_ignored(store_factory, how):
    """Same aggregate, same versions at the same positions, other events (e.g. a store rebuilt
    or a log restored from a backup next to newer snapshots): only the event id tells."""
    a = _snapshotted_store(store_factory, "A", amount=1)
    b = _snapshotted_store(store_factory, "B", amount=2)
    close_for_reopen(a)
    close_for_reopen(b)
    shutil.rmtree(b.root / "snapshots")
    shutil.copytree(a.root / "snapshots", b.root / "snapshots")
    store = store_factory("B", aggregates=(SnapshottedAccount,))
    _read_or_bulk(store, how)
    assert_state(store, SnapshottedAccount, "acc", expected_account("acc", 150, amount=2))
    s = counters(store)
    assert s["snapshot_used"] == 0 and s["snapshot_ignored"] >= 1


def test_a_state_json_cannot_give_back_is_never_snapshotted(store_factory):
    """A plain dict state with int keys: JSON would hydrate string keys. Replay must rule."""
    store = store_factory("tally", aggregates=(Tally,), partitions=1)
    t = store.aggregate(Tally, "t")
    for k in [1, 2, 1, 3, 1, 2, 7, 1]:
        t.submit(Bump(key=k))
    store.flush_snapshots()
    assert t.passivate() is True
    got = t.state()
    assert got.version == 8 and got.state == {1: 4, 2: 2, 3: 1, 7: 1}
    assert counters(store)["snapshot_used"] == 0


# -- 4. damaged snapshot files never break anything -----------------------------------------


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":  # the footer is gone: the file does not open
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "garbage":  # in the data pages: the file opens, its rows do not read
        rnd = random.Random(7)
        at = max(4, data.find(b'"balance":') - 32)
        data[at : at + 64] = bytes(rnd.randrange(256) for _ in range(64))
        path.write_bytes(bytes(data))
    elif how == "foreign":  # a Parquet file of another layout (another tool, another version)
        pq.write_table(pa.table({"aggregate_id": ["a0"], "note": ["not a snapshot"]}), path)
    elif how == "bitrot":  # one flipped bit that a plain read returns as another, valid, state
        path.write_bytes(_silent_bit_flip(path))
    else:
        raise AssertionError(how)


def _silent_bit_flip(path: Path) -> bytes:
    """The first single-bit flip after which the file still reads (without checksum checks) and
    one row's state decodes to another state, all else equal: bit rot nothing else would notice."""
    codec = SnapshotFormat(DomainRegistry([SnapshottedAccount])).codec("BankAccount")
    data = path.read_bytes()
    original = pq.read_table(path).to_pylist()
    for offset in range(4, len(data) - 8):
        flipped = bytearray(data)
        flipped[offset] ^= 0x01
        try:
            rows = pq.read_table(pa.BufferReader(bytes(flipped))).to_pylist()
        except Exception:
            continue
        if len(rows) != len(original):
            continue
        diff = [(a, b) for a, b in zip(rows, original) if a != b]
        if len(diff) != 1 or {k for k in diff[0][0] if diff[0][0][k] != diff[0][1][k]} != {"state"}:
            continue
        try:
            if codec.decode(diff[0][0]["state"], "json") != codec.decode(diff[0][1]["state"], "json"):
                return bytes(flipped)
        except Exception:
            continue
    raise AssertionError("no silent single-bit corruption found in the snapshot file")


@pytest.mark.parametrize("how", ["truncate", "garbage", "foreign", "bitrot"])
def test_a_damaged_snapshot_file_changes_nothing(store_factory, how):
    accounts = [f"a{i}" for i in range(4)]
    store = store_factory("dmg", aggregates=(SnapshottedAccount,), partitions=1, snapshot_max_files=2)
    for aid in accounts:
        write_account(store, aid, 120, amount=3)
    assert store.flush_snapshots() == 4
    for aid in accounts:
        write_account(store, aid, 100, amount=3, first=120)
    assert store.flush_snapshots() == 4
    files = snapshot_files(store.root)
    assert len(files) == 2
    close_for_reopen(store)
    _damage(files[-1], how)  # the newest: the one hydration looks at first
    models = {aid: expected_account(aid, 220, amount=3) for aid in accounts}

    # snapshot_flush_s=0: each batch writes the snapshots it made due, and merges the files
    store = store_factory("dmg", aggregates=(SnapshottedAccount,), snapshot_max_files=2, snapshot_flush_s=0)
    for aid in accounts:
        assert_state(store, SnapshottedAccount, aid, models[aid])
    assert store.hydrate() == 4 and store.passivate() == 4
    # writes go on, snapshots come due, and merging the files (damaged one included) breaks nothing
    before = counters(store)
    for aid in accounts:
        write_account(store, aid, 100, amount=3, first=220)  # asserts every command succeeded
        models[aid] = expected_account(aid, 320, amount=3)
    store.flush_snapshots()
    after = counters(store)
    # (more than 4 when a damaged snapshot forced a long replay: that earns a fresh one too)
    assert delta(after, before, "snapshots_written") >= 4
    assert after["snapshot_files"] <= 2
    assert store.passivate() >= 0
    for aid in accounts:
        assert_state(store, SnapshottedAccount, aid, models[aid])
    res = store.aggregate(SnapshottedAccount, "a0").submit(Withdraw(amount=5))
    assert res.version == 322
    close_for_reopen(store)
    store = store_factory("dmg", aggregates=(SnapshottedAccount,))
    before = counters(store)
    for aid in accounts[1:]:
        assert_state(store, SnapshottedAccount, aid, models[aid])
    assert delta(counters(store), before, "snapshot_used") == 3  # the merged file serves them


# -- 5. crash: recovery from snapshot + tail ------------------------------------------------


@pytest.mark.both_backends
@pytest.mark.parametrize("kill", ["ray.kill", "SIGKILL"])
def test_recovery_after_a_crash_uses_the_snapshot_and_replays_the_tail(store_factory, kill):
    store = store_factory("crash", aggregates=(SnapshottedAccount,), partitions=1)
    write_snapshotted(store, "acc", 130)
    write_account(store, "other", 2)
    assert store.flush_snapshots() == 1
    write_account(store, "acc", 25, first=130)  # the tail after the snapshot
    model = expected_account("acc", 155)
    pid = counters(store)["pid"]
    if kill == "ray.kill":
        ray.kill(store._actors[0], no_restart=False)
    else:
        os.kill(pid, signal.SIGKILL)
    assert wait_restarted(store, pid)["hydrated"] == 0
    assert_state(store, SnapshottedAccount, "acc", model)
    s = counters(store)
    assert s["snapshot_used"] == 1 and s["events_replayed"] == 156 - 100
    # the dedup window survives too: an acknowledged command retried is not applied again
    acct = store.aggregate(SnapshottedAccount, "acc")
    res = acct.submit(Deposit(amount=1), command_id="acc-d140")
    assert res.duplicate and res.version == 142
    with pytest.raises(CommandIdReused):
        acct.submit(Deposit(amount=2), command_id="acc-d140")
    res = acct.submit(Withdraw(amount=5))
    assert (res.version, res.duplicate) == (157, False)


# -- 6. hydrate / passivate admin ------------------------------------------------------------


@pytest.mark.both_backends
def test_hydrate_and_passivate_admin(store_factory):
    store = store_factory("admin", aggregates=(SnapshottedAccount,), partitions=2, max_hydrated=3)
    accounts = [f"h{i}" for i in range(12)]
    models = {}
    for aid in accounts:
        write_account(store, aid, 2)
        models[aid] = expected_account(aid, 2)
    per_partition = [sum(1 for a in accounts if store.partition_of("BankAccount", a) == p) for p in range(2)]
    assert min(per_partition) >= 3  # each partition has more aggregates than it may hold
    assert [s["hydrated"] for s in store.stats()] == [3, 3]  # the LRU bound holds while writing
    assert store.passivate() == 6
    assert [s["hydrated"] for s in store.stats()] == [0, 0]
    assert store.passivate() == 0
    assert store.hydrate(0) == 0 and [s["hydrated"] for s in store.stats()] == [0, 0]
    assert store.hydrate(1) == 2 and [s["hydrated"] for s in store.stats()] == [1, 1]
    assert store.hydrate() == 6 and [s["hydrated"] for s in store.stats()] == [3, 3]
    assert store.hydrate(100) == 6 and [s["hydrated"] for s in store.stats()] == [3, 3]  # capped
    # the most recently written ones are the ones warmed up: reading them hydrates nothing new
    before = sum(s["hydrations"] for s in store.stats())
    recent = [[a for a in accounts if store.partition_of("BankAccount", a) == p][-3:] for p in range(2)]
    for aid in recent[0] + recent[1]:
        assert_state(store, SnapshottedAccount, aid, models[aid])
    assert sum(s["hydrations"] for s in store.stats()) == before
    for aid in accounts:
        assert_state(store, SnapshottedAccount, aid, models[aid])
    assert [s["hydrated"] for s in store.stats()] == [3, 3]
    assert store.passivate() == 6 and [s["hydrated"] for s in store.stats()] == [0, 0]
