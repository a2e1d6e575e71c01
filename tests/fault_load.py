"""Subprocess side of tests/test_faults.py: things that must run in a process the test can kill.

Run as a script (``python tests/fault_load.py MODE ...``); each mode prints one JSON line
on stdout when it has something to report.

* ``load ROOT ACKS SECONDS RAY_TEMP``: start an own local Ray, open a store on ROOT and
  submit Deposits from a few threads until killed (or SECONDS pass). After each
  acknowledged command one line ``cid aggregate_id amount version partition position``
  is appended to ACKS with a single ``write`` (so a kill leaves at most one partial line).
* ``fence ROOT``: no Ray. Try to own every partition of ROOT (``PartitionLog``, with a
  small ``lock_timeout_s``) and read it read-only; report what happened.
* ``fence-ray ROOT RAY_TEMP``: start an own local Ray and try ``Store.open`` for writing;
  report the error the caller gets (type, message, how long it waited).
* ``crash-seal ROOT``: no Ray. Write to partition 0 with tiny ``seal_rows`` and SIGKILL
  this very process after the first segment's temp file is written, before its rename.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ACCOUNTS = [f"acc-{i}" for i in range(6)]


def load(root: str, acks: str, seconds: float, ray_temp: str) -> None:

    from es_actors import Store
    from es_actors.runtime.cluster import start_local_ray  # loopback only (ADR-012)
    from es_actors.examples.bank import BankAccount, Deposit, OpenAccount

    start_local_ray(
        num_cpus=1,
        include_dashboard=False,
        logging_level="ERROR",
        object_store_memory=100 * 1024 * 1024,
        _temp_dir=ray_temp,
    )
    store = Store.open(root, [BankAccount], partitions=2, seal_rows=25, compact_min_run=3)
    fd = os.open(acks, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def ack(cid: str, aid: str, amount: int, res) -> None:
        ev = res.events[0]
        os.write(fd, f"{cid} {aid} {amount} {res.version} {ev.partition} {ev.position}\n".encode())

    for aid in ACCOUNTS:
        cid = f"open-{aid}"
        ack(cid, aid, 0, store.aggregate(BankAccount, aid).submit(OpenAccount(owner=aid), command_id=cid))
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    deadline = time.monotonic() + seconds

    def worker(t: int) -> None:
        rng = random.Random(t)
        i = 0
        while time.monotonic() < deadline:
            aid, amount, cid = rng.choice(ACCOUNTS), rng.randint(1, 1000), f"w{t}-{i}"
            i += 1
            res = store.aggregate(BankAccount, aid).submit(Deposit(amount=amount), command_id=cid)
            ack(cid, aid, amount, res)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    store.close()


def fence(root: str) -> None:
    from es_actors import EsActorsError, Store, StoreConfig, WriterFenced
    from es_actors.storage.layout import StoreLayout
    from es_actors.storage.local.partition_log import PartitionLog
    from es_actors.examples.bank import BankAccount, Deposit

    layout = StoreLayout(Path(root))
    desc = layout.read_descriptor()
    assert desc is not None
    out: dict = {"fenced": {}, "owned": {}}
    config = StoreConfig(partitions=desc.partitions, lock_timeout_s=0.5)
    for p in range(desc.partitions):
        t0 = time.monotonic()
        try:
            plog = PartitionLog(layout, p, config)
        except WriterFenced as exc:
            out["fenced"][p] = {"message": str(exc), "waited_s": time.monotonic() - t0}
        else:
            sealed, unsealed = plog.durable_snapshot()
            out["owned"][p] = {"next_position": plog.next_position, "rows": sealed.num_rows + len(unsealed)}
            plog.close()
    ro = Store.open(root, [BankAccount], read_only=True)
    out["history"] = {
        aid: [[e.version, e.partition, e.position, e.command_id] for e in ro.history("BankAccount", aid)]
        for aid in sys.argv[3:]
    }
    try:
        ro.aggregate(BankAccount, sys.argv[3]).submit(Deposit(amount=1))
    except EsActorsError as exc:
        out["read_only_submit"] = str(exc)
    # reading needs no Ray runtime (importing the package is fine; starting or joining one is not)
    out["ray_started"] = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    print(json.dumps(out), flush=True)


def fence_ray(root: str, ray_temp: str) -> None:
    """With an own Ray: opening the store for writing must fail with WriterFenced, promptly."""
    import ray

    from es_actors import Store, WriterFenced
    from es_actors.runtime.cluster import start_local_ray  # loopback only (ADR-012)
    from es_actors.examples.bank import BankAccount

    start_local_ray(num_cpus=1, include_dashboard=False, logging_level="ERROR",
                    object_store_memory=100 * 1024 * 1024, _temp_dir=ray_temp)
    t0 = time.monotonic()
    out: dict = {}
    try:
        Store.open(root, [BankAccount], lock_timeout_s=0.5)
    except WriterFenced as exc:
        out = {"fenced": True, "type": type(exc).__name__, "message": str(exc), "waited_s": time.monotonic() - t0}
    except Exception as exc:  # noqa: BLE001
        out = {"fenced": False, "type": type(exc).__name__, "message": str(exc)}
    else:
        out = {"fenced": False, "type": None}
    print(json.dumps(out), flush=True)
    ray.shutdown()


def crash_seal(root: str) -> None:
    from es_actors import StoreConfig
    from es_actors.storage.local import segments
    from es_actors.storage.layout import StoreLayout
    from es_actors.storage.local.partition_log import PartitionLog

    real_replace = os.replace

    def replace_then_die(src, dst, *a, **kw):
        if Path(src).name != Path(dst).name and str(dst).endswith(".parquet"):  # a segment's publish
            print(json.dumps({"dying_before_rename": str(src)}), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst, *a, **kw)

    segments.os.replace = replace_then_die  # this process is about to die anyway
    layout = StoreLayout(Path(root))
    plog = PartitionLog(layout, 0, StoreConfig(partitions=1, seal_rows=10))
    now = time.time_ns() // 1000
    for pos in range(1, 11):  # the 10th append rotates the tail and wakes the sealer
        plog.append([(0, pos, "BankAccount", "acc-x", pos, "MoneyDeposited", 1, f"e{pos}", f"c{pos}", "d",
                      f"c{pos}", f"c{pos}", None, now, json.dumps({"amount": pos}), "{}")])
    time.sleep(30)  # the sealer kills us long before this


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "load":
        load(sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5])
    elif mode == "fence":
        fence(sys.argv[2])
    elif mode == "fence-ray":
        fence_ray(sys.argv[2], sys.argv[3])
    elif mode == "crash-seal":
        crash_seal(sys.argv[2])
    else:
        raise SystemExit(f"unknown mode {mode}")
