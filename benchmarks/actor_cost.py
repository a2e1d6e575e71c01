"""ADR-006 measurement: one Ray actor per aggregate vs aggregates inside one partition actor.

Run: RAY_AUTH_MODE=disabled .venv/bin/python -m benchmarks.actor_cost
Light on purpose (2 cores shared). Figures are quoted in adrs/ADR-006.
"""

import os
import shutil
import tempfile
import time

import psutil
import ray


N_ACTORS = int(os.environ.get("N_ACTORS", 10))
N_AGGS = int(os.environ.get("N_AGGS", 10_000))


def mem(pid):
    m = psutil.Process(pid).memory_full_info()
    return m.rss / 2**20, m.pss / 2**20


@ray.remote(num_cpus=0)
class Trivial:
    def ping(self):
        return os.getpid()


def main():
    t = time.perf_counter()
    from es_actors.runtime.cluster import start_local_ray  # loopback only (ADR-012)

    start_local_ray(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    print(f"ray.init: {time.perf_counter() - t:.2f} s")

    # --- A: one Ray actor per "aggregate" --------------------------------------------
    # one alone first (creation -> first answered call)
    t = time.perf_counter()
    a0 = Trivial.remote()
    pid0 = ray.get(a0.ping.remote())
    single = time.perf_counter() - t
    t = time.perf_counter()
    actors = [Trivial.remote() for _ in range(N_ACTORS)]
    pids = ray.get([a.ping.remote() for a in actors])
    batch = time.perf_counter() - t
    time.sleep(1.0)
    rss, pss = zip(*(mem(p) for p in pids))
    print(f"1 actor, create -> first answer: {single:.2f} s")
    print(f"{N_ACTORS} actors at once, create -> all answered: {batch:.2f} s ({batch / N_ACTORS:.2f} s/actor)")
    print(f"per actor RSS MiB: mean {sum(rss) / len(rss):.0f} (min {min(rss):.0f}, max {max(rss):.0f}); "
          f"PSS MiB: mean {sum(pss) / len(pss):.0f} (min {min(pss):.0f}, max {max(pss):.0f}); "
          f"sum PSS {sum(pss):.0f} MiB")
    for a in actors + [a0]:
        ray.kill(a)
    del actors, a0
    time.sleep(1.0)

    # --- B: N_AGGS aggregates inside one partition actor -----------------------------
    from es_actors import Store, Submission
    from es_actors.examples.bank import BankAccount, OpenAccount

    root = tempfile.mkdtemp(prefix="actor_cost_") + "/store"
    shutil.rmtree(root, ignore_errors=True)
    t = time.perf_counter()
    store = Store.open(root, aggregates=[BankAccount], partitions=1)
    print(f"Store.open (1 partition actor, empty log): {time.perf_counter() - t:.2f} s")
    apid = store.stats()[0]["pid"]
    rss0, pss0 = mem(apid)
    subs = [Submission(BankAccount, f"acc-{i}", OpenAccount(owner=f"o{i}")) for i in range(N_AGGS)]
    t = time.perf_counter()
    res = store.submit_many(subs)
    el = time.perf_counter() - t
    errs = [r for r in res if isinstance(r, Exception)]
    st = store.stats()[0]
    rss1, pss1 = mem(apid)
    print(f"submit_many OpenAccount x{N_AGGS}: {el:.2f} s ({N_AGGS / el:.0f} commands/s), errors {len(errs)}, "
          f"batches {st['batches']}, durable writes {st['durable_writes']}, aggregates {st['aggregates']}, "
          f"client calls {store._channels[0].calls}")
    print(f"partition actor RSS {rss0:.0f} -> {rss1:.0f} MiB, PSS {pss0:.0f} -> {pss1:.0f} MiB "
          f"(+{(pss1 - pss0) * 2**20 / N_AGGS / 1024:.1f} KiB PSS per aggregate incl. dedup record)")
    t = time.perf_counter()
    store.close()
    print(f"Store.close (seal + release): {time.perf_counter() - t:.2f} s")

    # --- C: eager rehydration of those aggregates at actor start ----------------------
    t = time.perf_counter()
    store = Store.open(root, aggregates=[BankAccount])
    reopen = time.perf_counter() - t
    st = store.stats()[0]
    print(f"Store.open again (actor start + replay of {st['next_position'] - 1} events, "
          f"{st['aggregates']} aggregates): {reopen:.2f} s")
    store.close()
    ray.shutdown()
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
