"""CPU of one read-only ``history`` read beside live writers: where ``mixed_8w8r``'s reader time goes.

    python -m benchmarks.read_cpu [--pre-tail N] [--seal] [--write-rate R] [--read-rate R] [--reads N]

Builds a store of the mixed bench's shape (5,000 streams x 2 events, ``benchmarks.mixed_domain``,
4 partitions, sealed) on a local Ray, appends ``--pre-tail`` more events (left in the write-ahead
tail, or sealed with ``--seal``), starts writer threads at ``--write-rate`` commands/s, and in a
spawned process with a read-only store (no Ray) reads ``--reads`` random streams
(``history(..., limit=50)``): closed loop, or open loop at ``--read-rate`` reads/s. Prints CPU us
per read (``time.thread_time`` around each read), wall us per read and events per read; ``--profile``
adds a cProfile of the reads. Not part of ``make bench`` (ADR-015 quotes it). Compare code by running
it from two checkouts in alternation.
"""

from __future__ import annotations

import argparse
import cProfile
import multiprocessing as mp
import pstats
import random
import shutil
import tempfile
import threading
import time
from typing import Any

STREAMS = 5_000
PARTITIONS = 4


def _sid(i: int) -> str:
    return f"stream-{i:05d}"


def _reader(root: str, reads: int, rate: float, profile: bool, out: Any) -> None:
    from es_actors import Store

    from benchmarks.mixed_domain import Stream

    store = Store.open(root, [Stream], read_only=True)
    rng = random.Random(1)
    for _ in range(200):  # files opened, caches warm
        store.history("Stream", _sid(rng.randrange(STREAMS)), limit=50)
    prof = cProfile.Profile() if profile else None
    cpu = events = 0.0
    t0, p0 = time.perf_counter(), time.process_time()
    for k in range(reads):
        if rate:
            wait = t0 + k / rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
        c = time.thread_time()
        if prof:
            prof.enable()
        events += len(store.history("Stream", _sid(rng.randrange(STREAMS)), limit=50))
        if prof:
            prof.disable()
        cpu += time.thread_time() - c
    wall, proc = time.perf_counter() - t0, time.process_time() - p0
    out.put((cpu / reads * 1e6, wall / reads * 1e6, events / reads, proc / reads * 1e6))
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pre-tail", type=int, default=0, help="events appended before the reads (unsealed)")
    ap.add_argument("--seal", action="store_true", help="seal them")
    ap.add_argument("--write-rate", type=float, default=1_500.0, help="commands/s during the reads (0: none)")
    ap.add_argument("--read-rate", type=float, default=0.0, help="reads/s, open loop (0: closed loop)")
    ap.add_argument("--reads", type=int, default=3_000)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()

    from es_actors import Store, Submission
    from es_actors.runtime.cluster import start_local_ray

    from benchmarks.mixed_domain import DATA, Append, Stream

    start_local_ray(num_cpus=2, include_dashboard=False)
    scratch = tempfile.mkdtemp(prefix="es_actors_read_cpu_")
    root = scratch + "/store"
    store = Store.open(root, [Stream], partitions=PARTITIONS)
    subs = [Submission(Stream, _sid(i), Append(data=DATA)) for _ in range(2) for i in range(STREAMS)]
    subs += [Submission(Stream, _sid(i % STREAMS), Append(data=DATA)) for i in range(args.pre_tail)]
    for s in range(0, len(subs), 1_000):
        store.submit_many(subs[s : s + 1_000])
    if args.seal:
        store.seal()
    versions = {_sid(i): 2 + args.pre_tail // STREAMS + (1 if i < args.pre_tail % STREAMS else 0) for i in range(STREAMS)}
    stop = threading.Event()

    def writer(w: int) -> None:
        ids = [_sid(i) for i in range(w, STREAMS, 4)]
        rng, step, due = random.Random(w), 4.0 / args.write_rate, time.monotonic()
        while not stop.is_set():
            sid = ids[rng.randrange(len(ids))]
            store.aggregate(Stream, sid).submit(Append(data=DATA), expected_version=versions[sid])
            versions[sid] += 1
            due += step
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)

    threads = [threading.Thread(target=writer, args=(w,), daemon=True) for w in range(4)] if args.write_rate else []
    for t in threads:
        t.start()
    time.sleep(2)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    p = ctx.Process(target=_reader, args=(root, args.reads, args.read_rate, args.profile, out))
    p.start()
    cpu, wall, events, proc = out.get()
    p.join()
    stop.set()
    for t in threads:
        t.join()
    store.close()
    shutil.rmtree(scratch, ignore_errors=True)
    print(f"read_cpu: {cpu:.0f} us CPU / read ({proc:.0f} us of the reader process's CPU), {wall:.0f} us wall / read, {events:.1f} events / read "
          f"(pre-tail {args.pre_tail:,}{' sealed' if args.seal else ''}, writes {args.write_rate:,.0f}/s, "
          f"reads {'closed loop' if not args.read_rate else f'{args.read_rate:,.0f}/s'})")


if __name__ == "__main__":
    main()
