"""A catch-up subscription that then follows a live store: ``subscribe_tail`` (issue 11).

The store: a hard-linked working copy of the 1M bank data set of ``projection.py`` (sealed
segments, 4 partitions, ~1.1M events with the probe aggregates), opened writable (local Ray).
A load thread offers ``Deposit`` commands open-loop at ``RATE`` (5,000/s: 50 per
``submit_many_async`` call every 10 ms on a fixed schedule, random accounts of 5,000 opened for it, no expected
version); after 2 s of load, ``store.subscribe(order="partition", follow=True)`` starts from
checkpoint 0 (every event of the data set behind it) in a process of its own (spawned, a
read-only store on the same directory, no Ray: as an integration outside the writer would run,
and not sharing a GIL with the load generator's client):

- ``events_per_s``: events delivered (decoded ``RecordedEvent`` s) from the subscription's start
  until every partition's checkpoint has reached the head it had when the subscription started
  (the data set's events, plus what the load had acknowledged by then), over that time.
- ``p50_ms`` / ``p99_ms``: then, while it follows, the delay of each event delivered inside a
  ``--duration`` window after ``--warmup``: delivery time - the event's ``recorded_at``.

Every delivered event is checked: positions per partition consecutive from 1 (none missed,
none twice). ``--repeats`` subscriptions on the same store (it grows by the load, ~5,000
events/s), medians. Bounded: a catch-up longer than ``CATCHUP_TIMEOUT_S`` fails the bench.
Time added to ``make bench``: Store.open on the 1M copy (~5 s) + per repetition the catch-up
(~1.1M events at the subscription's decode rate) + warm-up + window: ~1-1.5 min with the defaults.
Targets (issue 11): >= 200k events/s catching up, p99 <= 500 ms following.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import threading
import time
from typing import Any

from benchmarks.common import Context, log, percentile, scratch_dir
from benchmarks.datasets import clone
from benchmarks.projection import PARTITIONS, Dataset, start_ray

BENCHES = ["subscribe_tail"]

RATE = int(os.environ.get("BENCH_SUB_RATE", 5_000))  # commands/s offered while the subscription runs
BURST = 50
CATCHUP_TIMEOUT_S = 300.0
LOAD_ACCOUNTS = 5_000  # fresh accounts the load deposits to (opened before it starts)
LOAD_LEAD_S = 2.0  # load before the first subscription starts (the write path warms up)


class Load:
    """Open-loop Deposit commands on a fixed schedule (a late burst is sent at once, none skipped)."""

    def __init__(self, store: Any, accounts: list[str], seed: int) -> None:
        self.store = store
        self.accounts = accounts
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.acked = 0
        self.errors = 0
        self.first_error: BaseException | None = None
        self.heads: dict[int, int] = {}
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._loop, name="subscribe-load", daemon=True)

    def _on_done(self, fut: Any) -> None:
        exc = fut.exception()
        with self.lock:
            if exc is not None:
                self.errors += 1
                self.first_error = self.first_error or exc
                return
            self.acked += 1
            for p, pos in fut.result().positions:
                if pos > self.heads.get(p, 0):
                    self.heads[p] = pos

    def _loop(self) -> None:
        from es_actors import Submission
        from es_actors.examples.bank import BankAccount, Deposit

        period = BURST / RATE
        due = time.perf_counter()
        command = Deposit(amount=1)
        while not self.stop.is_set():
            subs = [Submission(BankAccount, self.rng.choice(self.accounts), command) for _ in range(BURST)]
            for f in self.store.submit_many_async(subs):
                f.add_done_callback(self._on_done)
            due += period
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def open_load_accounts(store: Any, n: int = LOAD_ACCOUNTS) -> list[str]:
    """Fresh accounts for the load, opened before it starts. Not the data set's accounts: their
    first command would hydrate each from the sealed log (events spread over every segment), and
    this bench measures the subscription, not the actors' hydration (``activate_10k`` does)."""
    from es_actors import Submission
    from es_actors.examples.bank import BankAccount, OpenAccount

    names = [f"load-{i:06d}" for i in range(n)]
    for r in store.submit_many([Submission(BankAccount, a, OpenAccount(owner=a)) for a in names]):
        if isinstance(r, Exception):
            raise RuntimeError(f"subscribe_tail: opening the load's accounts failed: {r!r}")
    return names


def one_subscription(store: Any, heads: dict[int, int], warmup_s: float, duration_s: float) -> dict[str, Any]:
    """Catch up from checkpoint 0 to ``heads``, then follow for the window; see the module docstring."""
    sub = store.subscribe(order="partition", follow=True)
    guard = threading.Timer(CATCHUP_TIMEOUT_S + warmup_s + duration_s + 30, sub.close)
    guard.daemon = True
    guard.start()
    last = {p: 0 for p in range(PARTITIONS)}
    behind = {p for p in range(PARTITIONS) if heads.get(p, 0) > 0}
    delivered = 0
    delays: list[float] = []
    t0 = time.perf_counter()
    caught_s: float | None = None
    w0 = w1 = 0.0
    try:
        for e in sub:
            p, pos = e.partition, e.position
            if pos != last[p] + 1:
                raise RuntimeError(f"subscribe_tail: partition {p} delivered position {pos} after {last[p]}")
            last[p] = pos
            if caught_s is None:
                delivered += 1
                if p in behind and pos >= heads[p]:
                    behind.discard(p)
                    if not behind:
                        caught_s = time.perf_counter() - t0
                        w0 = time.time() + warmup_s
                        w1 = w0 + duration_s
                elif time.perf_counter() - t0 > CATCHUP_TIMEOUT_S:
                    raise RuntimeError(f"subscribe_tail: no catch-up in {CATCHUP_TIMEOUT_S:.0f} s ({delivered:,} events)")
                continue
            now = time.time()
            if now >= w1:
                break
            if now >= w0:
                delays.append((now * 1e6 - e.recorded_at_us) / 1000.0)
    finally:
        guard.cancel()
        sub.close()
    if caught_s is None:
        raise RuntimeError(f"subscribe_tail: the subscription ended before catching up ({delivered:,} events)")
    return {"events": delivered, "seconds": caught_s, "delays": delays}


def subscriber_main(root: str, ready: Any, heads_q: Any, out: Any, warmup_s: float, duration_s: float) -> None:
    """The subscriber process: a read-only store (no Ray) on the same directory; says ready, takes
    the heads to catch up to, runs :func:`one_subscription`, sends its result (or the error)."""
    try:
        from es_actors import Store
        from es_actors.examples.bank import BankAccount

        store = Store.open(root, [BankAccount], read_only=True)
    except BaseException as exc:
        ready.put(repr(exc))
        return
    ready.put("ok")
    heads = heads_q.get(timeout=120)
    try:
        out.put(one_subscription(store, heads, warmup_s, duration_s))
    except BaseException as exc:
        out.put(repr(exc))


def subscribe_in_process(root: str, load: "Load", counts: dict[int, int], warmup_s: float,
                         duration_s: float) -> dict[str, Any]:
    """One subscription in a fresh process, from checkpoint 0 to the heads when it starts."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    ready, heads_q, out = ctx.Queue(), ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=subscriber_main, name="subscriber", daemon=True,
                       args=(root, ready, heads_q, out, warmup_s, duration_s))
    proc.start()
    try:
        msg = ready.get(timeout=120)
        if msg != "ok":
            raise RuntimeError(f"subscribe_tail: the subscriber process failed to start: {msg}")
        with load.lock:
            heads = {p: max(n, load.heads.get(p, 0)) for p, n in counts.items()}
        heads_q.put(heads)
        r = out.get(timeout=CATCHUP_TIMEOUT_S + warmup_s + duration_s + 60)
        if isinstance(r, str):
            raise RuntimeError(f"subscribe_tail: the subscription failed: {r}")
        return r
    finally:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.terminate()


def run(ctx: Context, selected: list[str]) -> None:
    from es_actors import Store
    from es_actors.examples.bank import BankAccount

    s = ctx.settings
    if not s.wants("es_actors"):
        return
    ds = Dataset("1m")
    log(f"subscribe: data set {ds.dir.name}: {ds.describe()}")
    start_ray()
    work = scratch_dir("es_actors_subscribe_")
    root = work / work.name
    store = load = None
    runs: list[dict[str, Any]] = []
    try:
        clone(ds.store, root)
        t = time.perf_counter()
        store = Store.open(root, [BankAccount], partitions=PARTITIONS)
        log(f"subscribe: writable store open on {ds.events:,} events in {time.perf_counter() - t:.1f} s")
        load = Load(store, open_load_accounts(store), s.seed)
        t_load = time.perf_counter()
        load.start()
        for rep in range(s.repeats):
            time.sleep(LOAD_LEAD_S if rep == 0 else 0)
            r = subscribe_in_process(str(root), load, ds.counts, s.warmup_s, s.duration_s)
            runs.append(r)
            log(f"  subscribe_tail es_actors catch-up {r['events']:,} events in {r['seconds']:.2f} s "
                f"({r['events'] / r['seconds']:,.0f} events/s); following: p50 {percentile(r['delays'], 50):.1f} ms "
                f"p99 {percentile(r['delays'], 99):.1f} ms ({len(r['delays']):,} events)")
        load_s = time.perf_counter() - t_load
    finally:
        if load is not None:
            load.close()
        if store is not None:
            store.close()
        shutil.rmtree(work, ignore_errors=True)
    if load.errors:
        log(f"  warning: {load.errors} load commands failed; first: {load.first_error!r}")
    cps = load.acked / load_s if load_s else 0.0
    notes = (f"store.subscribe(order='partition', follow=True) from checkpoint 0 in a process of its own (read-only "
             f"store, no Ray) over a writable copy of {ds.describe()}, while a thread offers Deposit commands open-loop at {RATE:,}/s "
             f"(acknowledged {cps:,.0f}/s over the module); events_per_s: catch-up to the heads at the subscription's "
             f"start; p50/p99_ms: delivery - recorded_at while following, {s.duration_s:g} s window after "
             f"{s.warmup_s:g} s; positions checked consecutive; {len(runs)} subscriptions, medians; "
             "targets: >= 200k events/s catching up, p99 <= 500 ms following")
    extra = {"runs": len(runs), "events": int(statistics.median(r["events"] for r in runs)),
             "commands_per_s": round(cps, 1), "errors": load.errors or None, "notes": notes}
    ctx.results.record("subscribe_tail", "es_actors", "events_per_s",
                       statistics.median(r["events"] / r["seconds"] for r in runs), unit="events/s", **extra)
    ctx.results.record("subscribe_tail", "es_actors", "seconds", statistics.median(r["seconds"] for r in runs),
                       unit="s", **extra)
    for q in (50, 99):
        ctx.results.record("subscribe_tail", "es_actors", f"p{q}_ms",
                           statistics.median(percentile(r["delays"], q) for r in runs), unit="ms", **extra)
