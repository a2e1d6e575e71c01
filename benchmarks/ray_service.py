"""A local Ray run as a service: in a session of its own, as PostgreSQL's server runs.

Linux schedules by session first when autogroups are on (``/proc/sys/kernel/sched_autogroup_enabled``,
the default of most distributions): the CPU is shared fairly between sessions, then between the
processes of each. ``pg_ctl start`` puts PostgreSQL's server in a session of its own, while a Ray
started by ``ray.init()`` in the bench process shares the bench's session, and with it the bench's
reader processes: under a load of readers, PostgreSQL's server keeps its share of the machine and
es_actors' server (the partition actors) competes with every reader for its share. A bench that
puts load beside the writers (``mixed_8w8r``) runs each system's server the same way: es_actors'
Ray in a session of its own too, as ``ray start`` would run it on a server.

:func:`ray_service` starts that Ray from a small host process (``start_new_session``) that calls
``start_local_ray`` (loopback only, workers at niceness 0, as everywhere else), prints its address,
and stops it when its stdin closes; the bench process joins it and leaves it afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Iterator

from benchmarks.common import log

_HOST = r"""
import logging, sys
import ray
from es_actors.runtime.cluster import start_local_ray
start_local_ray(num_cpus=int(sys.argv[1]), include_dashboard=False, logging_level=logging.WARNING)
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()  # until the bench closes it
ray.shutdown()
"""


@contextmanager
def ray_service(num_cpus: int = 2) -> Iterator[str]:
    """A local Ray in a session of its own, joined by this process for the ``with`` block (the
    address is yielded); a Ray this process had started before is shut down first and started
    again (``benchmarks.append.start_ray``) by the next bench that wants it."""
    import ray

    from es_actors.runtime.cluster import join_ray

    if ray.is_initialized():
        ray.shutdown()
    host = subprocess.Popen([sys.executable, "-c", _HOST, str(num_cpus)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert host.stdout is not None
        address = host.stdout.readline().strip()
        if not address:
            raise RuntimeError(f"ray_service: the Ray host exited ({host.wait(timeout=30)}) without an address")
        join_ray(address)
        log(f"  Ray as a service (session {os.getsid(host.pid)}, this bench's {os.getsid(0)}) at {address}")
        yield address
    finally:
        ray.shutdown()
        _stop(host)


def _stop(host: subprocess.Popen[str]) -> None:
    """Close the host's stdin (it shuts its Ray down); whatever of its session is left is killed."""
    sid = host.pid
    try:
        if host.stdin is not None:
            host.stdin.close()
        host.wait(timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        host.kill()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = _session_members(sid)
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL if time.monotonic() > deadline - 5 else signal.SIGTERM)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


def _session_members(sid: int) -> list[int]:
    """Pids of the processes still in session ``sid`` (the host's processes: raylet, GCS, workers)."""
    members = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.getsid(int(name)) == sid:
                    members.append(int(name))
            except (ProcessLookupError, PermissionError):
                continue
    return members
