"""Tuning of the long-lived Ray worker processes that host es_actors' actors."""

from __future__ import annotations

import gc
import logging
import os

log = logging.getLogger(__name__)


def tune_gc_for_a_long_lived_heap() -> None:
    """A partition actor holds millions of small long-lived objects (states, command ids, tail
    rows) and allocates a few per command. With CPython's default thresholds the collector
    re-scans them so often that throughput fell ~25% and bulk p99 rose from ~75 to ~190 ms
    as a store grew (4 x 8 s bulk rounds here). The recovered heap is frozen out of the
    collector's reach and collections run less often; reference cycles are still collected."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def run_at_normal_priority(what: str) -> int:
    """Undo Ray's lowered CPU priority for this process; the niceness it runs at afterwards.

    Ray starts workers at niceness 15. A partition actor is the store's server: every command
    waits for its thread twice (the batch arrives, the fdatasync returns), and at niceness 15
    any CPU-bound process at the normal 0 takes the CPU first. Two such processes on a 2-core
    machine cut a writer's throughput from ~7,000 to ~300 commands/s (scheduling delay ~8 ms
    per wake-up, perf sched). A local Ray started by es_actors runs workers at 0 already
    (runtime.cluster.start_local_ray); in a Ray started elsewhere this sets each thread back
    to 0 (Linux niceness is per thread; threads started later inherit it), which needs
    CAP_SYS_NICE or RLIMIT_NICE. Without them it warns once and runs as Ray started it.
    """
    if not hasattr(os, "getpriority"):
        return 0
    try:
        current = os.getpriority(os.PRIO_PROCESS, 0)  # this thread's, on Linux
    except OSError:
        return 0
    if current <= 0:
        return current
    try:
        threads = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        threads = [0]
    for tid in threads:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, 0)
        except ProcessLookupError:  # the thread ended meanwhile
            continue
        except OSError as exc:  # PermissionError: no CAP_SYS_NICE, RLIMIT_NICE too low
            log.warning(
                "%s runs at niceness %d (Ray's worker_niceness) and cannot lower it (%s): CPU-bound "
                "processes on this node will slow its writes; start Ray with RAY_worker_niceness=0 "
                "(or grant the process CAP_SYS_NICE)", what, current, exc.strerror or exc,
            )
            return current
    return 0
