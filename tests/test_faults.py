"""Fault injection against a real local Ray and real files: kills, torn tails, fencing, full disks.

What must hold whatever happens: every acknowledged command's events are in the log with the
version and position it was acknowledged with; positions are gapless per partition and
versions gapless per aggregate; no command is applied twice; a reader never sees a partial
record or file.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import duckdb
import psutil
import pytest
import ray
from hypothesis import given, settings
from hypothesis import strategies as st

from es_actors import Audit, StorageError, Store, StoreConfig, StoreCorrupted, Submission, WriterFenced
from es_actors.runtime.naming import NAMESPACE
from es_actors.domain import DomainRegistry
from es_actors.write.partition import Partition
from es_actors.codecs.rows import COL
from es_actors.runtime.naming import actor_name
from es_actors.storage.local import partition_log, wal
from es_actors.storage.layout import StoreLayout
from es_actors.storage.local.partition_log import PartitionLog
from es_actors.storage.local.reader import read_partition_rows
from es_actors.storage.local.durable_mark import DurableMark
from es_actors.storage.local.wal import list_tail_files, read_tail_file
from es_actors.examples.bank import BankAccount, Deposit, OpenAccount

REPO = Path(__file__).resolve().parents[1]
FAULT_LOAD = str(Path(__file__).with_name("fault_load.py"))
POS, ATYPE, AID, VER, CID, EID = (COL[c] for c in ("position", "aggregate_type", "aggregate_id", "version", "command_id", "event_id"))


# -- helpers ------------------------------------------------------------------------------


def amount_of(row: tuple[Any, ...]) -> int:
    return json.loads(row[COL["payload"]]).get("amount", 0)


def check_log(layout: StoreLayout, partitions: int) -> dict[str, tuple[Any, ...]]:
    """Read every partition without owning it and check the log's invariants; rows by command id.

    Every command of these tests appends exactly one event, so a command id seen twice means
    the command was applied twice.
    """
    by_cid: dict[str, tuple[Any, ...]] = {}
    event_ids: set[str] = set()
    for p in range(partitions):
        rows = read_partition_rows(layout, p)
        assert [r[POS] for r in rows] == list(range(1, len(rows) + 1)), f"partition {p}: positions not gapless 1..n"
        versions: dict[tuple[str, str], list[int]] = defaultdict(list)
        for r in rows:
            assert r[COL["partition"]] == p
            versions[(r[ATYPE], r[AID])].append(r[VER])
            assert r[CID] not in by_cid, f"command {r[CID]} applied twice: {by_cid[r[CID]][:5]} and {r[:5]}"
            assert r[EID] not in event_ids, f"event id {r[EID]} stored twice"
            by_cid[r[CID]] = r
            event_ids.add(r[EID])
        for key, vs in versions.items():
            assert vs == list(range(1, len(vs) + 1)), f"{key}: versions not gapless: {vs}"
    return by_cid


def subprocess_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("RAY_AUTH_MODE", "disabled")
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return env


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill_process_tree(root_pid: int) -> dict[int, str]:
    """SIGKILL a process, all its descendants and everything else in its session.

    Every process found is first stopped (SIGSTOP), and the search repeats until it finds no
    new one, so nothing can fork a survivor; then all are killed at once. Descendants are
    collected before any kill, while the tree is still intact (a dead parent's children are
    re-parented and could no longer be found from the root).
    """
    found: dict[int, psutil.Process] = {}
    names: dict[int, str] = {}
    for _ in range(50):
        candidates: list[psutil.Process] = []
        roots = [root_pid, *found]
        for pid in roots:
            try:
                proc = psutil.Process(pid)
                candidates.append(proc)
                candidates.extend(proc.children(recursive=True))
            except psutil.NoSuchProcess:
                pass
        for proc in psutil.process_iter():
            try:
                if os.getsid(proc.pid) == root_pid:
                    candidates.append(proc)
            except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
                pass
        new = [p for p in candidates if p.pid not in found]
        if not new:
            break
        for proc in new:
            found[proc.pid] = proc
            try:
                proc.suspend()
                names[proc.pid] = " ".join(proc.cmdline()[:2])[:120]
            except psutil.NoSuchProcess:
                pass
    procs = list(found.values())
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = [p for p in procs if _alive(p)]
    assert not survivors, f"processes survived SIGKILL: {survivors}"
    return names


def run_isolated(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a helper in its own session; whatever it leaves behind (e.g. its Ray) is killed."""
    proc = subprocess.Popen(
        [sys.executable, FAULT_LOAD, *args], cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        kill_process_tree(proc.pid)
        proc.wait(timeout=30)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def wait_gone(pids: list[int], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    for pid in pids:
        try:
            proc = psutil.Process(pid)
        except psutil.NoSuchProcess:
            continue
        while _alive(proc):
            assert time.monotonic() < deadline, f"process {pid} did not exit"
            time.sleep(0.05)


def wait_actor_names_free(names: list[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    for name in names:
        while True:
            try:
                ray.get_actor(name, namespace=NAMESPACE)
            except ValueError:
                break
            assert time.monotonic() < deadline, f"actor {name} still registered"
            time.sleep(0.1)


def make_row(pos: int, aid: str = "acc-x", version: int | None = None) -> tuple[Any, ...]:
    """A stored row as the write path would produce it (JSON-stable types)."""
    return (
        0, pos, "BankAccount", aid, pos if version is None else version, "MoneyDeposited", 1, f"ev-{pos}",
        f"cmd-{pos}", "digest", f"cmd-{pos}", f"cmd-{pos}", None, 1_700_000_000_000_000 + pos,
        json.dumps({"amount": pos}), "{}",
    )


def command_item(aid: str, cid: str, command: Any, expected: int | None = None) -> tuple[Any, ...]:
    """A batch item exactly as ``Store`` sends it to a partition (built by the store's own code)."""
    client = types.SimpleNamespace(registry=DomainRegistry([BankAccount]), config=StoreConfig())
    return Store._command_item(client, "BankAccount", aid, command, expected, cid, Audit())  # type: ignore[arg-type]


def open_item(aid: str) -> tuple[Any, ...]:
    return command_item(aid, f"open-{aid}", OpenAccount(owner=aid), expected=0)


def duckdb_sealed(glob: str) -> list[tuple[Any, ...]]:
    """(partition, position, command_id) of every row plain DuckDB sees through the sealed glob."""
    con = duckdb.connect()
    files = [f for (f,) in con.execute("SELECT file FROM glob(?)", [glob]).fetchall()]
    if not files:
        return []
    return con.execute(
        "SELECT partition, position, command_id FROM read_parquet(?) ORDER BY partition, position", [glob]
    ).fetchall()


def assert_sealed_prefixes(sealed: list[tuple[Any, ...]]) -> None:
    """Each partition's sealed rows are positions 1..k, each exactly once."""
    per: dict[int, list[int]] = defaultdict(list)
    for p, pos, _cid in sealed:
        per[p].append(pos)
    for p, positions in per.items():
        assert positions == list(range(1, len(positions) + 1)), f"sealed partition {p}: {positions[:20]}..."


# -- 1. the owning actor's process is SIGKILLed under load --------------------------------


@pytest.mark.parametrize("direct_link", [True, False], ids=["direct-link", "ray-calls"])
def test_actor_sigkill_under_load_keeps_every_ack_once(store_factory, direct_link):
    store = store_factory("kill", partitions=2, seal_rows=40, compact_min_run=3, direct_link=direct_link)
    accounts = [f"acc-{i}" for i in range(8)]
    for aid in accounts:
        store.aggregate(BankAccount, aid).submit(OpenAccount(owner=aid), command_id=f"open-{aid}")
    threads_n, per_thread = 4, 300
    total = threads_n * per_thread
    commands: dict[str, tuple[str, int]] = {}  # cid -> (account, amount)
    acked: dict[str, Any] = {}
    failed: dict[str, BaseException] = {}
    lock = threading.Lock()
    progress = [0]

    def worker(t: int) -> None:
        rng = random.Random(1000 + t)
        for i in range(per_thread):
            aid, amount, cid = rng.choice(accounts), rng.randint(1, 1000), f"t{t}-{i}"
            with lock:
                commands[cid] = (aid, amount)
            try:
                res = store.aggregate(BankAccount, aid).submit(Deposit(amount=amount), command_id=cid, timeout=90)
            except Exception as exc:  # noqa: BLE001 - any failure is allowed, as long as it is not a lie
                with lock:
                    failed[cid] = exc
            else:
                with lock:
                    acked[cid] = res
            with lock:
                progress[0] += 1

    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    thresholds = sorted(rng.uniform(0.05, 0.8) * total for _ in range(3))
    first_partition = rng.randrange(2)
    kills: list[tuple[int, int, int]] = []  # (partition, pid, commands done when killed)
    killer_errors: list[BaseException] = []
    stop = threading.Event()

    def killer() -> None:
        try:
            for k, threshold in enumerate(thresholds):
                while progress[0] < threshold and not stop.is_set():
                    time.sleep(0.001)
                if stop.is_set():
                    return
                p = (first_partition + k) % 2
                pid = ray.get(store._actors[p].stats.remote(), timeout=60)["pid"]  # waits out a restart
                os.kill(pid, signal.SIGKILL)
                kills.append((p, pid, progress[0]))
        except BaseException as exc:  # noqa: BLE001
            killer_errors.append(exc)

    workers = [threading.Thread(target=worker, args=(t,)) for t in range(threads_n)]
    kthread = threading.Thread(target=killer)
    kthread.start()
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert not any(w.is_alive() for w in workers), "submitters hung"
    stop.set()
    kthread.join(timeout=60)
    assert not killer_errors, killer_errors
    assert len(kills) == 3, f"seed {seed}: kills {kills}"
    assert all(done < total for _p, _pid, done in kills), f"seed {seed}: a kill came after the load: {kills}"
    # every kill really ended the process, and the partition came back in a new one
    wait_gone([pid for _p, pid, _d in kills])
    live = {s["partition"]: s["pid"] for s in store.stats()}
    assert not {pid for _p, pid, _d in kills} & set(live.values())
    assert len(acked) + len(failed) == total

    dup_acks = sum(1 for r in acked.values() if r.duplicate)
    print(f"seed={seed} kills={kills} failed={len(failed)} acked_as_duplicate={dup_acks}")
    before = check_log(store.layout, 2)
    for cid, res in acked.items():
        row = before[cid]
        aid, amount = commands[cid]
        assert (row[AID], amount_of(row)) == (aid, amount)
        assert res.version == row[VER], f"{cid} acknowledged as version {res.version}, stored as {row[VER]}"
        assert res.positions == ((row[COL["partition"]], row[POS]),)

    # Commands that raised may or may not have been applied; resubmitting with the same id tells
    # which, without applying anything twice.
    for cid, exc in failed.items():
        aid, amount = commands[cid]
        res = store.aggregate(BankAccount, aid).submit(Deposit(amount=amount), command_id=cid, timeout=90)
        if cid in before:
            assert res.duplicate and res.version == before[cid][VER], (cid, exc)
        acked[cid] = res

    # Every command made durable before a kill is remembered by the restarted actors (rebuilt
    # from the log): sending them all again applies nothing.
    cids = sorted(commands)
    again = store.submit_many(
        [Submission(BankAccount, commands[c][0], Deposit(amount=commands[c][1]), command_id=c) for c in cids], timeout=90
    )
    for cid, res in zip(cids, again):
        assert not isinstance(res, BaseException), (cid, res)
        assert res.duplicate and (res.version, res.positions) == (acked[cid].version, acked[cid].positions), cid

    after = check_log(store.layout, 2)
    opens = {f"open-{aid}" for aid in accounts}
    assert set(after) == set(commands) | opens, "the log holds exactly the submitted commands"
    for aid in accounts:
        expected_balance = sum(amount for a, amount in commands.values() if a == aid)
        n_deposits = sum(1 for a, _ in commands.values() if a == aid)
        state = store.aggregate(BankAccount, aid).state()
        assert (state.version, state.state.balance) == (n_deposits + 1, expected_balance), aid
        history = store.history("BankAccount", aid)
        assert [e.version for e in history] == list(range(1, n_deposits + 2))
        assert sum(e.event.amount for e in history[1:]) == expected_balance


# -- 2. the whole Ray runtime is SIGKILLed under load --------------------------------------


def read_acks(path: Path) -> dict[str, tuple[str, int, int, int, int]]:
    """cid -> (account, amount, version, partition, position); a torn last line is ignored."""
    out = {}
    for line in path.read_text().split("\n")[:-1]:  # the part after the last newline may be torn
        cid, aid, amount, version, partition, position = line.split(" ")
        out[cid] = (aid, int(amount), int(version), int(partition), int(position))
    return out


@pytest.mark.ray_kill
def test_kill_whole_ray_runtime_under_load(store_factory, tmp_path):
    root, acks_path = tmp_path / "store", tmp_path / "acks.txt"
    out_path, err_path = tmp_path / "load.out", tmp_path / "load.err"
    ray_temp = tempfile.mkdtemp(prefix="esray", dir="/tmp")  # short: Ray's socket paths must fit
    killed: dict[int, str] = {}
    try:
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, FAULT_LOAD, "load", str(root), str(acks_path), "150", ray_temp],
                cwd=REPO, env=subprocess_env(), stdout=out, stderr=err, start_new_session=True,
            )
        try:
            deadline = time.monotonic() + 120
            target = random.randint(300, 600)
            while True:
                n = acks_path.read_bytes().count(b"\n") if acks_path.exists() else 0
                if n >= target:
                    break
                assert proc.poll() is None, f"load exited early ({proc.returncode}): {err_path.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"only {n} acks in time: {err_path.read_text()[-3000:]}"
                time.sleep(0.02)
            time.sleep(random.uniform(0, 0.3))
            killed = kill_process_tree(proc.pid)
        finally:
            if not killed:  # the test failed before its kill: leave no Ray behind
                kill_process_tree(proc.pid)
            proc.wait(timeout=30)
    finally:
        shutil.rmtree(ray_temp, ignore_errors=True)
    # the runtime really was there and really is gone: raylet, gcs and the partition workers
    everything = " ".join(killed.values())
    assert "raylet" in everything and "gcs_server" in everything and "PartitionActor" in everything, killed

    acks = read_acks(acks_path)
    assert len(acks) >= 300
    layout = StoreLayout(root)

    # Before anyone recovers the store: plain DuckDB over the sealed glob reads whole files only,
    # each row once; the reader (sealed + durable tail) has every acknowledged event.
    sealed = duckdb_sealed(layout.sealed_glob)
    assert_sealed_prefixes(sealed)
    by_cid = check_log(layout, 2)
    print(f"killed {len(killed)} processes; {len(acks)} acks; {len(by_cid)} events durable, {len(sealed)} sealed")
    for cid, (aid, amount, version, partition, position) in acks.items():
        row = by_cid.get(cid)
        assert row is not None, f"acknowledged {cid} lost"
        assert (row[AID], amount_of(row), row[VER], row[COL["partition"]], row[POS]) == (aid, amount, version, partition, position)
    assert {(p, pos, c) for p, pos, c in sealed} <= {(r[0], r[POS], r[CID]) for r in by_cid.values()}

    # Reopen with the session Ray: recovery keeps every event a reader saw, unchanged, and writing
    # continues. Readers stop at the durable mark, so recovery may also adopt whole frames written
    # after it (the kill came between their write and the mark): never acknowledged, and only
    # after what readers saw in their partition.
    store = store_factory("store", partitions=2, seal_rows=25, compact_min_run=3)
    recovered = check_log(layout, 2)
    assert {c: recovered.get(c) for c in by_cid} == by_cid
    seen_last = {p: max((r[POS] for r in by_cid.values() if r[0] == p), default=0) for p in range(2)}
    extras = set(recovered) - set(by_cid)
    assert not extras & set(acks)
    assert all(recovered[c][POS] > seen_last[recovered[c][0]] for c in extras)
    by_cid = recovered
    accounts = sorted({aid for aid, *_ in acks.values()})
    # the restarted actors rebuilt their dedup records from the log: resending applies nothing
    cids = sorted(c for c in acks if not c.startswith("open-"))
    again = store.submit_many(
        [Submission(BankAccount, acks[c][0], Deposit(amount=acks[c][1]), command_id=c) for c in cids], timeout=90
    )
    for cid, res in zip(cids, again):
        assert not isinstance(res, BaseException), (cid, res)
        assert res.duplicate and (res.version, res.positions) == (acks[cid][2], ((acks[cid][3], acks[cid][4]),)), cid
    assert check_log(layout, 2) == by_cid
    next_pos = {p: 1 + sum(1 for r in by_cid.values() if r[0] == p) for p in range(2)}
    new_cids = []
    for aid in accounts:
        hist = store.history("BankAccount", aid)
        last = hist[-1].version
        assert [e.version for e in hist] == list(range(1, last + 1))
        state = store.aggregate(BankAccount, aid).state()
        assert state.version == last
        assert state.state.balance == sum(e.event.amount for e in hist[1:])
        res = store.aggregate(BankAccount, aid).submit(Deposit(amount=7), expected_version=last, command_id=f"after-{aid}")
        p = store.partition_of("BankAccount", aid)
        assert res.version == last + 1 and not res.duplicate
        assert res.positions == ((p, next_pos[p]),)
        next_pos[p] += 1
        new_cids.append(f"after-{aid}")
    store.close()
    final = check_log(layout, 2)
    assert set(final) == set(by_cid) | set(new_cids)
    sealed = duckdb_sealed(layout.sealed_glob)  # closed: everything is sealed, each once
    assert sorted(sealed) == sorted((r[0], r[POS], r[CID]) for r in final.values())


# -- 3. torn tail -------------------------------------------------------------------------


def test_torn_tail_after_abrupt_actor_stop(store_factory, tmp_path):
    store = store_factory("torn", partitions=1)
    acct = store.aggregate(BankAccount, "t-1")
    acct.submit(OpenAccount(owner="t"), command_id="open-t-1")
    acked = [acct.submit(Deposit(amount=i), command_id=f"d{i}") for i in range(1, 21)]
    assert [r.version for r in acked] == list(range(2, 22))
    pids = [s["pid"] for s in store.stats()]
    names = [actor_name(store.layout, store.descriptor, p) for p in range(store.descriptor.partitions)]
    for a in store._actors:
        ray.kill(a, no_restart=True)
    store._actors = None  # abandoned: nothing sealed, nothing closed
    wait_gone(pids)
    wait_actor_names_free(names)

    layout = StoreLayout(store.root)
    assert duckdb_sealed(layout.sealed_glob) == []  # nothing was sealed
    (_first, tail), = list_tail_files(layout.tail_dir(0))
    rows, valid, size = read_tail_file(tail)
    assert valid == size and [r[CID] for r in rows] == ["open-t-1"] + [f"d{i}" for i in range(1, 21)]
    # a crash mid-write: the header of a 500-byte frame and a few bytes of it
    with open(tail, "ab") as f:
        f.write(struct.pack("<II", 500, 12345) + b'[[0,22,"BankAccount","t-1"')
    assert read_partition_rows(layout, 0) == rows  # readers stop at the last whole frame

    store = store_factory("torn", partitions=1)
    assert tail.stat().st_size == valid, "the torn frame was cut"
    history = store.history("BankAccount", "t-1")
    assert [(e.command_id, e.version, e.position) for e in history] == [(r[CID], r[VER], r[POS]) for r in rows]
    res = store.aggregate(BankAccount, "t-1").submit(Deposit(amount=5), expected_version=21)
    assert (res.version, res.positions) == (22, ((0, 22),))
    assert store.aggregate(BankAccount, "t-1").state().state.balance == sum(range(1, 21)) + 5
    check_log(layout, 1)


@pytest.fixture(scope="module")
def torn_base(tmp_path_factory):
    """A partition log with six frames (1..6 rows) in one tail file, closed without sealing."""
    root = tmp_path_factory.mktemp("torn-base")
    plog = PartitionLog(StoreLayout(root), 0, StoreConfig(partitions=1, seal_rows=10**6))
    frames = []
    pos = 1
    for n in range(1, 7):
        rows = [make_row(pos + i) for i in range(n)]
        start = plog._writer.size
        plog.append(rows)
        frames.append((start, plog._writer.size, rows))
        pos += n
    name = plog._writer.path.name
    plog.close()
    return root, name, frames


@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_torn_last_frame_is_cut_and_writing_continues(torn_base, data):
    root, name, frames = torn_base
    start, end, last_rows = frames[-1]
    cut = data.draw(st.integers(start + 1, end - 1), label="cut inside the last frame")
    garbage = data.draw(st.binary(max_size=64), label="garbage after the cut")
    durable = [r for _s, _e, rows in frames[:-1] for r in rows]
    config = StoreConfig(partitions=1, seal_rows=10**6)
    with tempfile.TemporaryDirectory() as d:
        copy = Path(d) / "store"
        shutil.copytree(root, copy, symlinks=True)
        layout = StoreLayout(copy)
        tail = layout.tail_dir(0) / name
        mark = DurableMark(layout.tail_dir(0))  # a crash mid-write: the last frame was never published durable
        mark.publish(durable[-1][POS], 1)
        mark.close()
        with open(tail, "r+b") as f:
            f.truncate(cut)
            f.seek(0, os.SEEK_END)
            f.write(garbage)
        assert read_partition_rows(layout, 0) == durable  # a reader sees whole frames only

        plog = PartitionLog(layout, 0, config)
        try:
            assert plog.unsealed_rows() == durable
            assert tail.stat().st_size == start, "recovery cuts exactly the torn frame"
            assert plog.next_position == last_rows[0][POS]
            new = [make_row(plog.next_position + i) for i in range(3)]
            plog.append(new)
        finally:
            plog.close()
        plog = PartitionLog(layout, 0, config)
        try:
            assert plog.unsealed_rows() == durable + new
            assert plog.next_position == new[-1][POS] + 1
        finally:
            plog.close()
        assert read_partition_rows(layout, 0) == durable + new


def test_crash_between_segment_write_and_rename_is_invisible(tmp_path):
    """SIGKILL after a seal wrote its temp file, before the rename: DuckDB must not see it."""
    root = tmp_path / "store"
    r = run_isolated(["crash-seal", str(root)], timeout=60)
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    tmp_file = Path(json.loads(r.stdout.strip().splitlines()[-1])["dying_before_rename"])
    assert tmp_file.exists() and tmp_file.stat().st_size > 0
    layout = StoreLayout(root)
    assert duckdb_sealed(layout.sealed_glob) == [], "a segment that was never published is visible"
    assert [row[POS] for row in read_partition_rows(layout, 0)] == list(range(1, 11))

    plog = PartitionLog(layout, 0, StoreConfig(partitions=1, seal_rows=10))
    try:
        assert not tmp_file.exists(), "recovery removes the temp file"
        assert [row[POS] for row in plog.unsealed_rows()] == list(range(1, 11))
        plog.seal_all(timeout_s=30)
    finally:
        plog.close()
    assert duckdb_sealed(layout.sealed_glob) == [(0, i, f"c{i}") for i in range(1, 11)]


def write_tail_file(layout: StoreLayout, rows: list[tuple[Any, ...]]) -> None:
    """A closed tail file as a crashed owner leaves it: one frame, named by its first position."""
    tail_dir = layout.tail_dir(0)
    tail_dir.mkdir(parents=True, exist_ok=True)
    with open(tail_dir / wal.tail_file_name(rows[0][POS]), "wb") as f:
        f.write(wal.file_header(rows[0][POS]) + wal.encode_frame(rows))


@pytest.fixture(scope="module")
def sealed_base(tmp_path_factory):
    """A partition with 4000 events in sealed segments (replay has Parquet to read)."""
    root = tmp_path_factory.mktemp("sealed-base") / "store"
    plog = PartitionLog(StoreLayout(root), 0, StoreConfig(partitions=1, seal_rows=400))
    try:
        for first in range(1, 4001, 200):
            plog.append([make_row(p) for p in range(first, first + 200)])
        plog.seal_all(timeout_s=30)
    finally:
        plog.close()
    return root


def test_recovery_reads_every_row_while_the_sealer_moves_them(sealed_base, tmp_path):
    """A crash leaves closed, unsealed tail files; the new owner's sealer starts on them at once.

    Rebuilding state must see every row exactly once although the sealer moves rows from the
    tail into segments meanwhile (a row seen in neither place looks like a gap: the partition
    would refuse to start with StoreCorrupted after an ordinary crash).
    """
    registry = DomainRegistry([BankAccount])
    config = StoreConfig(partitions=1, seal_rows=40)
    for attempt in range(5):
        root = tmp_path / f"copy-{attempt}"
        shutil.copytree(sealed_base, root, symlinks=True)
        layout = StoreLayout(root)
        for first in range(4001, 4401, 40):
            write_tail_file(layout, [make_row(p) for p in range(first, first + 40)])
        part = Partition(layout, 0, registry, config)
        try:
            version, state = part.get_state("BankAccount", "acc-x")
            assert version == 4400 and state.balance == sum(range(1, 4401))
            assert part.log.next_position == 4401
            part.seal()
        finally:
            part.close()
        assert [pos for _p, pos, _c in duckdb_sealed(layout.sealed_glob)] == list(range(1, 4401))


def test_an_owner_that_refuses_a_corrupt_log_releases_its_lock(tmp_path):
    registry = DomainRegistry([BankAccount])
    config = StoreConfig(partitions=1, lock_timeout_s=0)
    # a version gap: positions are fine, the partition refuses to start
    layout = StoreLayout(tmp_path / "version-gap")
    write_tail_file(layout, [make_row(1, version=1), make_row(2, version=2), make_row(3, version=5)])
    with pytest.raises(StoreCorrupted, match="version 5 follows 2"):
        Partition(layout, 0, registry, config)
    PartitionLog(layout, 0, config).close()  # not fenced: the refusing owner let go of the lock
    # a position gap between tail files: the log itself refuses to open
    layout = StoreLayout(tmp_path / "position-gap")
    write_tail_file(layout, [make_row(1), make_row(2)])
    write_tail_file(layout, [make_row(9), make_row(10)])
    with pytest.raises(StoreCorrupted, match="position 9 where 3 was expected"):
        PartitionLog(layout, 0, config)
    with pytest.raises(StoreCorrupted):  # and again, rather than WriterFenced by our own leak
        PartitionLog(layout, 0, config)


# -- 4. writer fencing across processes ----------------------------------------------------


def run_fence(root: Path, accounts: list[str]) -> dict[str, Any]:
    r = run_isolated(["fence", str(root), *accounts], timeout=60)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_second_process_is_fenced_but_can_read(store_factory):
    store = store_factory("fenced", partitions=2, lock_timeout_s=0.5)
    accounts = ["f-1", "f-2", "f-3", "f-4"]
    acks: dict[str, list[list[Any]]] = {}
    for aid in accounts:
        h = store.aggregate(BankAccount, aid)
        results = [h.submit(OpenAccount(owner=aid), command_id=f"open-{aid}")]
        results += [h.submit(Deposit(amount=i), command_id=f"{aid}-d{i}") for i in (1, 2)]
        acks[aid] = [[r.version, *r.positions[0], r.command_id] for r in results]
    assert {store.partition_of("BankAccount", a) for a in accounts} == {0, 1}

    out = run_fence(store.root, accounts)
    assert out["owned"] == {}, "a second writer got hold of a partition that is owned"
    assert set(out["fenced"]) == {"0", "1"}
    for p, info in out["fenced"].items():
        msg = info["message"]
        assert str(store.layout.tail_dir(int(p))) in msg
        assert "another process already writes this partition" in msg and "read-only" in msg
        assert 0.4 <= info["waited_s"] < 5, "lock_timeout_s is honoured"
    assert out["history"] == acks, "the read-only store sees every durable event"
    assert "read-only" in out["read_only_submit"]
    assert out["ray_started"] is False

    # the same through Ray: a process with its own Ray cluster cannot open the store for writing,
    # and what it gets is the plain WriterFenced with its message, not a Ray traceback
    ray_temp = tempfile.mkdtemp(prefix="esray", dir="/tmp")
    try:
        r = run_isolated(["fence-ray", str(store.root), ray_temp], timeout=90)
    finally:
        shutil.rmtree(ray_temp, ignore_errors=True)
    assert r.returncode == 0, r.stderr[-3000:]
    via_ray = json.loads(r.stdout.strip().splitlines()[-1])
    assert via_ray["fenced"] and via_ray["type"] == "WriterFenced", via_ray
    assert via_ray["message"].startswith(str(store.layout.tail_dir(0))) or via_ray["message"].startswith(
        str(store.layout.tail_dir(1))
    ), via_ray["message"]
    assert "another process already writes this partition" in via_ray["message"]
    assert "\x1b[" not in via_ray["message"] and "Traceback" not in via_ray["message"] and 'File "' not in via_ray["message"]
    assert via_ray["waited_s"] < 10

    # the owner is undisturbed; once it closes, the other process may own the partitions
    res = store.aggregate(BankAccount, "f-1").submit(Deposit(amount=3), expected_version=3)
    assert res.version == 4
    store.close()
    out = run_fence(store.root, accounts)
    assert out["fenced"] == {}
    stored = {p: len(read_partition_rows(store.layout, p)) for p in range(2)}
    assert out["owned"] == {str(p): {"next_position": n + 1, "rows": n} for p, n in stored.items()}
    assert out["history"]["f-1"][-1][0] == 4


def test_restarted_owner_finds_its_partition_taken(store_factory):
    """The owner dies and another process takes the lock first: the restarted actor is fenced."""
    store = store_factory("taken", partitions=1, lock_timeout_s=0.5)
    acct = store.aggregate(BankAccount, "k-1")
    acked = [acct.submit(OpenAccount(owner="k"), command_id="open-k-1")]
    acked += [acct.submit(Deposit(amount=i), command_id=f"k{i}") for i in range(1, 6)]
    pid = store.stats()[0]["pid"]
    taken: dict[str, Any] = {}

    def take() -> None:  # waits on the lock, gets it the moment the owner's process is gone
        try:
            taken["log"] = PartitionLog(store.layout, 0, StoreConfig(partitions=1, lock_timeout_s=30))
        except BaseException as exc:  # noqa: BLE001
            taken["error"] = exc

    thief = threading.Thread(target=take)
    thief.start()
    time.sleep(0.3)
    os.kill(pid, signal.SIGKILL)
    thief.join(timeout=40)
    assert "log" in taken, taken
    plog = taken["log"]
    try:
        assert plog.next_position == 7
        with pytest.raises(WriterFenced) as info:
            acct.submit(Deposit(amount=100), command_id="late", timeout=60)
        assert type(info.value) is WriterFenced, type(info.value)
        msg = str(info.value)
        assert msg.startswith(str(store.layout.tail_dir(0))) and "another process already writes" in msg, msg
        rows = read_partition_rows(store.layout, 0)
        assert [(r[CID], r[VER], r[POS]) for r in rows] == [
            (res.command_id, res.version, res.positions[0][1]) for res in acked
        ], "the fenced owner wrote nothing"
    finally:
        plog.close()


# -- 5. disk full ---------------------------------------------------------------------------


class TinyDisk:
    """A 2 MiB tmpfs if this process may mount one, else a byte budget on the tail's raw write."""

    def __init__(self, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.path = path
        path.mkdir()
        self.mounted = (
            os.geteuid() == 0
            and subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=2m,nr_inodes=256", "tmpfs", str(path)], capture_output=True
            ).returncode == 0
        )
        self.budget = 1 << 30  # fallback only: bytes the tail may still write
        self.no_inodes = False  # fallback only: creating a tail file fails
        if not self.mounted:
            monkeypatch.setattr(wal, "_write", self._budget_write)
            disk = self

            class NoRoomTailWriter(partition_log.TailWriter):
                def __init__(self, directory: Path, first_position: int) -> None:
                    if disk.no_inodes and not (directory / wal.tail_file_name(first_position)).exists():
                        raise OSError(errno.ENOSPC, "No space left on device")
                    super().__init__(directory, first_position)

            monkeypatch.setattr(partition_log, "TailWriter", NoRoomTailWriter)

    def exhaust_inodes(self) -> None:
        """Leave blocks free but no inode: no new file can be created."""
        if not self.mounted:
            self.no_inodes = True
            return
        d = self.path / "inode-filler"
        d.mkdir()
        try:
            for i in range(10_000):
                (d / str(i)).touch()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        else:
            raise AssertionError("inodes never ran out")

    def free_inodes(self) -> None:
        if not self.mounted:
            self.no_inodes = False
            return
        shutil.rmtree(self.path / "inode-filler")

    def _budget_write(self, fd: int, data: bytes) -> int:
        if self.budget <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = os.write(fd, data[: self.budget])  # a partial write, as a real file system does
        self.budget -= n
        return n

    def leave_free(self, nbytes: int) -> None:
        """Fill the disk (a filler file) so that about nbytes stay free."""
        if not self.mounted:
            self.budget = nbytes
            return
        with open(self.path / "filler", "ab") as f:
            chunk = b"\0" * 4096
            free = os.statvfs(self.path)
            while free.f_bavail * free.f_frsize > nbytes:
                f.write(chunk)
                f.flush()
                free = os.statvfs(self.path)

    def fill_completely(self) -> None:
        if not self.mounted:
            self.budget = 0
            return
        with open(self.path / "filler2", "ab", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
        try:
            with open(self.path / "filler3", "ab", buffering=0) as f:
                while True:
                    f.write(b"\0")
        except OSError as exc:
            assert exc.errno == errno.ENOSPC

    def free_space(self) -> None:
        if not self.mounted:
            self.budget = 1 << 30
            return
        for name in ("filler", "filler2", "filler3"):
            (self.path / name).unlink(missing_ok=True)

    def close(self) -> None:
        if self.mounted and subprocess.run(["umount", str(self.path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


@pytest.fixture
def tiny_disk(tmp_path, monkeypatch):
    disk = TinyDisk(tmp_path / "tiny", monkeypatch)
    try:
        yield disk
    finally:
        disk.close()


def test_disk_full_is_clear_loses_nothing_and_recovers(tiny_disk):
    layout = StoreLayout(tiny_disk.path / "store")
    registry = DomainRegistry([BankAccount])
    config = StoreConfig(partitions=1, seal_rows=10**6)
    accounts = ["d-1", "d-2", "d-3"]
    part = Partition(layout, 0, registry, config)
    try:
        assert [r.ok for r in part.handle_batch([open_item(a) for a in accounts])] == [True] * 3
        tiny_disk.leave_free(300_000)
        acked: list[tuple[Any, ...]] = []
        failed_batch = err = None
        amounts: dict[str, int] = {}
        for n in range(1000):
            batch = []
            for k in range(40):
                cid = f"b{n}-{k}"
                amounts[cid] = n + k + 1
                batch.append(command_item(accounts[k % 3], cid, Deposit(amount=amounts[cid])))
            results = part.handle_batch(batch)
            kinds = {r.ok for r in results}
            if kinds == {True}:
                acked.extend(row for r in results for row in r.rows)
                continue
            assert kinds == {False}, "a batch is one frame: all of it is durable or none"
            failed_batch, err = batch, results[0].error
            assert all(r.error is err for r in results)
            break
        assert err is not None, "the disk never filled up"
        assert len(acked) > 0
        assert isinstance(err, StorageError)
        assert "disk full" in str(err) and "not acknowledged" in str(err), str(err)
        assert part.stats()["rejections"]["StorageError"] == 40

        # nothing half-written: the tail holds exactly the acknowledged frames
        (_first, tail), = list_tail_files(layout.tail_dir(0))
        rows, valid, size = read_tail_file(tail)
        assert valid == size
        assert rows[3:] == [tuple(r) for r in acked]
        # the failed batch changed nothing in memory either
        counts = Counter(r[AID] for r in acked)
        for aid in accounts:
            assert part.get_state("BankAccount", aid)[0] == counts[aid] + 1
        assert part.log.next_position == 4 + len(acked)

        # still full: the same commands fail again, cleanly
        tiny_disk.fill_completely()
        again = part.handle_batch(failed_batch)
        assert all(isinstance(r.error, StorageError) for r in again)
        assert read_tail_file(tail)[1:] == (valid, valid)
    finally:
        part.close()

    # the log reopens on the full disk, with every acknowledged event
    part = Partition(layout, 0, registry, config)
    try:
        assert part.log.unsealed_rows()[3:] == [tuple(r) for r in acked]
        before = {aid: part.get_state("BankAccount", aid) for aid in accounts}
        tiny_disk.free_space()
        # the failed commands were never applied, so their ids are fresh: accepted now, once
        results = part.handle_batch(failed_batch)
        assert [r.ok for r in results] == [True] * len(failed_batch)
        assert [r.rows[0][POS] for r in results] == list(range(4 + len(acked), 4 + len(acked) + len(failed_batch)))
        for aid in accounts:
            version, state = part.get_state("BankAccount", aid)
            added = [item for item in failed_batch if item.aggregate_id == aid]
            assert version == before[aid][0] + len(added)
            assert state.balance == before[aid][1].balance + sum(amounts[item.command_id] for item in added)
    finally:
        part.close()
    by_cid = check_log(layout, 1)
    assert set(by_cid) == {f"open-{a}" for a in accounts} | {r[CID] for r in acked} | {i.command_id for i in failed_batch}


# -- 6. group commit --------------------------------------------------------------------------


def test_group_commit_shares_durable_writes(store_factory):
    store = store_factory("group", partitions=1)
    accounts = [f"g-{i}" for i in range(8)]
    for aid in accounts:
        store.aggregate(BankAccount, aid).submit(OpenAccount(owner=aid))
    threads_n, per_thread = 64, 20
    n = threads_n * per_thread
    before = store.stats()[0]
    barrier = threading.Barrier(threads_n)
    results: list[Any] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(t: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            try:
                res = store.aggregate(BankAccount, accounts[(t + i) % 8]).submit(
                    Deposit(amount=t * 100 + i + 1), command_id=f"g{t}-{i}", timeout=50
                )
            except Exception as exc:  # noqa: BLE001
                with lock:
                    errors.append(exc)
            else:
                with lock:
                    results.append(res)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(threads_n)]
    t0 = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=55)
    elapsed = time.monotonic() - t0
    assert not any(th.is_alive() for th in threads)
    after = store.stats()[0]
    assert not errors, errors[:3]
    assert len(results) == n and not any(r.duplicate for r in results)
    writes = after["durable_writes"] - before["durable_writes"]
    print(f"{n} commands, {writes} durable writes, {after['batches'] - before['batches']} batches, {elapsed:.2f}s")
    assert 1 <= writes < n / 3, f"{writes} durable writes for {n} commands in {elapsed:.1f}s"
    assert writes <= after["batches"] - before["batches"], "a batch costs at most one durable write"
    assert after["accepted"] - before["accepted"] == n

    by_cid = check_log(store.layout, 1)
    for res in results:
        row = by_cid[res.command_id]
        assert (res.version, res.positions) == (row[VER], ((0, row[POS]),))
    for k, aid in enumerate(accounts):
        expected = sum(t * 100 + i + 1 for t in range(threads_n) for i in range(per_thread) if (t + i) % 8 == k)
        state = store.aggregate(BankAccount, aid).state()
        assert state.state.balance == expected and state.version == 1 + n // 8


def test_no_room_for_a_new_tail_file_does_not_undo_a_durable_append(tiny_disk):
    """Rotation (a new tail file) fails after the frame is durable: the batch stays acknowledged."""
    layout = StoreLayout(tiny_disk.path / "store")
    registry = DomainRegistry([BankAccount])
    config = StoreConfig(partitions=1, seal_rows=6)
    accounts = ["r-1", "r-2", "r-3"]
    amounts: dict[str, int] = {}
    part = Partition(layout, 0, registry, config)
    try:
        assert [r.ok for r in part.handle_batch([open_item(a) for a in accounts])] == [True] * 3
        tiny_disk.exhaust_inodes()
        for n in range(4):  # 3 events a batch: from the second on, the tail is due for rotation
            batch = []
            for k, aid in enumerate(accounts):
                amounts[f"r{n}-{k}"] = 10 * n + k + 1
                batch.append(command_item(aid, f"r{n}-{k}", Deposit(amount=amounts[f"r{n}-{k}"])))
            results = part.handle_batch(batch)
            assert [r.ok for r in results] == [True] * 3, results
            assert [r.version for r in results] == [n + 2] * 3
        assert part.log.seal_error is not None and "No space" in part.log.seal_error
        (_first, tail), = list_tail_files(layout.tail_dir(0))
        rows, valid, size = read_tail_file(tail)
        assert valid == size and len(rows) == 15

        tiny_disk.free_inodes()
        results = part.handle_batch([command_item(a, f"late-{a}", Deposit(amount=1)) for a in accounts])
        assert [(r.ok, r.version) for r in results] == [(True, 6)] * 3
        part.seal()
        deadline = time.monotonic() + 10
        while part.log.seal_error is not None and time.monotonic() < deadline:
            time.sleep(0.05)  # the sealer clears it after its next good seal
        assert part.log.seal_error is None
    finally:
        part.close()
    assert [pos for _p, pos, _c in duckdb_sealed(layout.sealed_glob)] == list(range(1, 19))
    by_cid = check_log(layout, 1)
    assert set(by_cid) == {f"open-{a}" for a in accounts} | set(amounts) | {f"late-{a}" for a in accounts}
    part = Partition(layout, 0, registry, config)
    try:
        for k, aid in enumerate(accounts):
            version, state = part.get_state("BankAccount", aid)
            assert version == 6
            assert state.balance == sum(amounts[f"r{n}-{k}"] for n in range(4)) + 1
    finally:
        part.close()
