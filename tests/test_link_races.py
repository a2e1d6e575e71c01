"""The direct link's fast path (es_actors/write/client.py, DirectLink) under hostile timing, with
real Ray and real partition actors: the thread that takes a batch writes it to the loopback
connection itself, the link's thread only reads replies. What must hold: one batch in flight per
channel; a batch is never lost, never applied twice, never left hanging (every submitter gets a
result or an es_actors error); Store.close drains and closes the link without hanging.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import defaultdict
from concurrent.futures import Future
from typing import Any

import psutil
import ray

from es_actors import Audit, CommandTimeout, ConcurrencyError, EsActorsError, Submission
from es_actors.codecs.rows import COL
from es_actors.examples.bank import BankAccount, Deposit, OpenAccount
from es_actors.storage.local.reader import read_partition_rows
from es_actors.write.direct_link import shutdown_link

POS, AID, VER, CID = (COL[c] for c in ("position", "aggregate_id", "version", "command_id"))


def _wait_dead(pid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        assert time.monotonic() < deadline, f"process {pid} did not exit"
        time.sleep(0.02)


SLOW_PICKLE_S = 0.8


class SlowText(str):
    """Text that takes SLOW_PICKLE_S to pickle (and arrives as plain text): it holds the thread
    that sends its batch between marking the batch in flight and writing it."""

    def __reduce__(self) -> tuple[Any, ...]:
        time.sleep(SLOW_PICKLE_S)
        return (str, (str(self),))


def _live_pid(actor: Any, timeout: float = 60.0) -> int:
    """The actor's process id once it serves (waits out a restart in progress)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return int(ray.get(actor.stats.remote(), timeout=timeout)["pid"])
        except (ray.exceptions.ActorUnavailableError, ray.exceptions.RayActorError):
            assert time.monotonic() < deadline, "the actor did not come back"
            time.sleep(0.05)


def test_a_resend_due_after_close_fails_instead_of_hanging(store_factory):
    """A batch whose actor died waits 0.2 s to be resent. If Store.close's drain (submit_timeout_s)
    ends within those 0.2 s, the link's thread has left when the resend comes: the batch must
    fail (CommandTimeout: the outcome is unknown), not wait forever in a queue nobody reads (a
    future of submit_many_async never finished)."""
    store = store_factory("late", partitions=2, submit_timeout_s=0.05, retry_deadline_s=60)
    aids = ["a", "b", "c", "d", "e", "f"]
    for aid in aids:
        store.aggregate(BankAccount, aid).submit(OpenAccount(owner=aid), timeout=30)
    assert {store.partition_of("BankAccount", a) for a in aids} == {0, 1}
    pids = [ray.get(a.stats.remote(), timeout=30)["pid"] for a in store._actors]
    for actor in store._actors:
        ray.kill(actor, no_restart=True)  # gone for good: every resend fails, 0.2 s apart
    for pid in pids:
        _wait_dead(pid)
    futures = store.submit_many_async([Submission(BankAccount, a, Deposit(amount=1)) for a in aids])
    time.sleep(0.5)  # the batches are failing and being resent
    store.close()
    for fut in futures:
        exc = fut.exception(timeout=5)  # concurrent.futures.TimeoutError: the batch was lost
        assert isinstance(exc, CommandTimeout), exc


def test_a_sender_whose_batch_was_failed_and_resent_does_not_send_it_again(store_factory):
    """A submitter marks its batch in flight and is slow to write it (here: pickling; in life:
    a big batch, or a thread descheduled on busy cores). Meanwhile the connection breaks: the
    receiver fails the batch, and the channel resends the same batch over a new connection.
    The first submitter, when it gets to write, must see that the in-flight batch is now the
    resend, not its own attempt; else it queues the batch once more, the batch goes twice, and
    every later reply goes to the batch after the one it answers (another command's result)."""
    store = store_factory("stale", partitions=1)
    acct = store.aggregate(BankAccount, "s1")
    acct.submit(OpenAccount(owner="s"), command_id="open-s1", timeout=30)  # connected: the fast path
    channel = store._channels[0]
    link = channel._link
    item = store._command_item("BankAccount", "s1", Deposit(amount=5), None, "slow-1", Audit())
    item.reason = SlowText("slow to pickle")
    slow: list[Any] = []
    sender = threading.Thread(target=lambda: slow.append(channel.submit([item])[0]))
    sender.start()
    time.sleep(0.15)  # the sender is pickling: its batch is in flight, not yet written
    shutdown_link(link._conn)  # the connection breaks (as after a failed write): resend in 0.2 s
    (nxt,) = store.submit_many_async([Submission(BankAccount, "s1", Deposit(amount=7), command_id="next-1")])
    sender.join(timeout=10)
    first, second = slow[0].result(timeout=10), nxt.result(timeout=10)
    assert (first.command_id, first.version, first.duplicate) == ("slow-1", 2, False)
    assert (second.command_id, second.version, second.duplicate) == ("next-1", 3, False)
    assert [e.version for e in acct.history()] == [1, 2, 3]


def test_an_unpicklable_item_fails_alone_and_the_link_keeps_serving(store_factory):
    """Pickling happens on the submitter's thread after the batch is marked in flight: a failure
    must clear it (else the channel waits forever for a reply to a batch never sent)."""
    store = store_factory("pickle", partitions=1)
    acct = store.aggregate(BankAccount, "p1")
    acct.submit(OpenAccount(owner="p"), timeout=30)  # the link is connected: the fast path
    channel = store._channels[0]
    for _ in range(3):
        bad = channel.submit([threading.Lock()])[0]  # cannot be pickled
        assert bad.exception(timeout=10) is not None
        assert acct.submit(Deposit(amount=1), timeout=10).version >= 2
    assert acct.state().version == 4


def test_sigkill_twice_while_8_threads_and_async_futures_share_one_partition(store_factory):
    """Hammer the fast path: 8 threads submit with expected versions (one account each) and
    futures of submit_many_async wait on nobody, all on one partition channel, while its actor is
    SIGKILLed twice. Every acknowledged event is in the log exactly once at its acknowledged
    version, versions are gapless, no submitter waits past its deadline."""
    store = store_factory("hammer", partitions=1, retry_deadline_s=60)
    threads_n, per_thread = 8, 20
    accounts = [f"acc-{t}" for t in range(threads_n)]
    for aid in [*accounts, "async"]:
        store.aggregate(BankAccount, aid).submit(OpenAccount(owner=aid), command_id=f"open-{aid}", timeout=30)
    total = threads_n * per_thread
    lock = threading.Lock()
    progress = [0]
    acked: dict[str, int] = {}  # command id -> acknowledged version
    errors: list[str] = []

    def worker(t: int) -> None:
        aid, version, rng = accounts[t], 1, random.Random(t)
        acct = store.aggregate(BankAccount, aid)
        for i in range(per_thread):
            cid = f"t{t}-{i}"
            for attempt in range(4):  # an unknown outcome is learnt by resubmitting the same id
                try:
                    res = acct.submit(Deposit(amount=rng.randint(1, 9)), expected_version=version,
                                      command_id=cid, timeout=30)
                except ConcurrencyError as exc:  # would mean a command applied without its ack, then lost
                    with lock:
                        errors.append(f"{cid}: {exc}")
                    return
                except EsActorsError:
                    continue
                if res.version != version + 1:
                    with lock:
                        errors.append(f"{cid}: expected version {version + 1}, got {res.version}")
                    return
                version = res.version
                with lock:
                    acked[cid] = res.version
                    progress[0] += 1
                break
            else:
                with lock:
                    errors.append(f"{cid}: no answer in 4 attempts")
                return

    async_futures: list[tuple[str, Future[Any]]] = []
    settled = threading.Semaphore(0)

    def async_submitter() -> None:
        n = 0
        while progress[0] < total and n < 200:
            cids = [f"async-{n + k}" for k in range(5)]
            n += 5
            futs = store.submit_many_async(
                [Submission(BankAccount, "async", Deposit(amount=1), command_id=c) for c in cids])
            for c, f in zip(cids, futs):
                f.add_done_callback(lambda _f: settled.release())
                async_futures.append((c, f))
            time.sleep(0.01)

    kills: list[int] = []

    def killer() -> None:
        for threshold in (0.2 * total, 0.55 * total):
            while progress[0] < threshold and not errors:
                time.sleep(0.002)
            if errors:
                return
            pid = _live_pid(store._actors[0])
            kills.append(progress[0])
            os.kill(pid, signal.SIGKILL)

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(t,)) for t in range(threads_n)]
    threads += [threading.Thread(target=async_submitter), threading.Thread(target=killer)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=max(0.0, 90 - (time.monotonic() - started)))
    assert not any(th.is_alive() for th in threads), "a submitter hung"
    assert not errors, errors[:5]
    assert len(kills) == 2 and all(done < total for done in kills), f"kills not under load: {kills}"
    assert len(acked) == total
    for _ in async_futures:  # every future settles, though no thread waits on it
        assert settled.acquire(timeout=max(0.1, 60 - (time.monotonic() - started))), "an async future never settled"
    async_acked = {}
    for c, f in async_futures:
        exc = f.exception()
        assert exc is None or isinstance(exc, EsActorsError), (c, exc)
        if exc is None:
            async_acked[c] = f.result().version

    rows = read_partition_rows(store.layout, 0)
    assert [r[POS] for r in rows] == list(range(1, len(rows) + 1)), "positions not gapless"
    by_cid: dict[str, tuple[Any, ...]] = {}
    versions: dict[str, list[int]] = defaultdict(list)
    for r in rows:
        assert r[CID] not in by_cid, f"command {r[CID]} applied twice"
        by_cid[r[CID]] = r
        versions[r[AID]].append(r[VER])
    for aid, vs in versions.items():
        assert vs == list(range(1, len(vs) + 1)), f"{aid}: versions not gapless: {vs}"
    for cid, version in [*acked.items(), *async_acked.items()]:
        assert by_cid[cid][VER] == version, (cid, version)
    for t, aid in enumerate(accounts):
        assert len(versions[aid]) == per_thread + 1  # exactly the acknowledged commands, each once


def test_close_with_a_short_drain_while_8_threads_send(store_factory):
    """Store.close whose drain ends with a batch in flight on the fast path: the link is shut down
    under the receiving thread (never closed under a writer). close returns at once; every
    submitter ends with its result or an es_actors error; what was acknowledged is in the log
    once; nothing is applied twice."""
    store = store_factory("closing", partitions=2, submit_timeout_s=0.02)
    lock = threading.Lock()
    acked: dict[str, int] = {}
    odd: list[str] = []
    submitted = [0]

    def worker(t: int) -> None:
        acct = store.aggregate(BankAccount, f"c-{t}")
        for i in range(10_000):
            cid = f"c{t}-{i}"
            try:
                res = acct.submit(Deposit(amount=1), command_id=cid, timeout=30)
            except EsActorsError:
                if store._closed:
                    return
                continue
            except BaseException as exc:  # noqa: BLE001 - not an es_actors error: a defect
                with lock:
                    odd.append(f"{cid}: {type(exc).__name__}: {exc}")
                return
            with lock:
                acked[cid] = res.version
                submitted[0] += 1

    for t in range(8):
        store.aggregate(BankAccount, f"c-{t}").submit(OpenAccount(owner="c"), command_id=f"open-c{t}", timeout=30)
    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    deadline = time.monotonic() + 20
    while submitted[0] < 200 and time.monotonic() < deadline:
        time.sleep(0.005)
    t0 = time.monotonic()
    store.close()
    assert time.monotonic() - t0 < 10, "close hung"
    for th in threads:
        th.join(timeout=max(0.0, 20 - (time.monotonic() - t0)))
    assert not any(th.is_alive() for th in threads), "a submitter hung after close"
    assert not odd, odd[:5]
    by_cid: dict[str, tuple[Any, ...]] = {}
    for p in range(2):
        rows = read_partition_rows(store.layout, p)
        assert [r[POS] for r in rows] == list(range(1, len(rows) + 1))
        for r in rows:
            assert r[CID] not in by_cid, f"command {r[CID]} applied twice"
            by_cid[r[CID]] = r
    for cid, version in acked.items():
        assert by_cid[cid][VER] == version, cid
