"""A partition actor undoes Ray's lowered CPU priority (niceness 15) for all its threads, or,
when the process may not (no CAP_SYS_NICE, RLIMIT_NICE too low), says so once and keeps
running. Runs in a child process that lowers its own priority first; no Ray."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

_CHILD = textwrap.dedent(
    """
    import json, logging, os, threading, io
    from es_actors.runtime.process import run_at_normal_priority
    os.nice(5)
    stop = threading.Event()
    early = threading.Thread(target=stop.wait)  # started before: must be reset too
    early.start()
    buf = io.StringIO()
    logging.basicConfig(stream=buf, level=logging.WARNING)
    result = run_at_normal_priority("partition actor 0")
    late = threading.Thread(target=stop.wait)  # started after: inherits the new niceness
    late.start()
    niceness = [os.getpriority(os.PRIO_PROCESS, int(t)) for t in os.listdir("/proc/self/task")]
    stop.set(); early.join(); late.join()
    print(json.dumps({"result": result, "niceness": niceness, "log": buf.getvalue()}))
    """
)


_SETPRIV = shutil.which("setpriv")


def _run_child(unprivileged: bool) -> dict:
    """``unprivileged``: the child runs without CAP_SYS_NICE (util-linux setpriv), as most do."""
    drop = [_SETPRIV or "setpriv", "--inh-caps=-sys_nice", "--bounding-set=-sys_nice"] if unprivileged else []
    out = subprocess.run([*drop, sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="per-thread niceness is Linux's")
def test_every_thread_returns_to_niceness_zero_or_a_warning_says_why_not():
    got = _run_child(unprivileged=False)
    assert set(got["niceness"]) == {got["result"]}  # what it reports is what every thread runs at
    if got["result"] == 0:
        assert got["log"] == "" and len(got["niceness"]) == 3
    else:  # not allowed to raise its priority: one warning naming the way out
        _assert_warned(got)
    if os.geteuid() == 0:
        assert got["result"] == 0


@pytest.mark.skipif(
    not os.path.isdir("/proc/self/task") or _SETPRIV is None or os.geteuid() != 0,
    reason="drops CAP_SYS_NICE with setpriv, as root",
)
def test_without_the_right_to_raise_it_the_actor_warns_once_and_runs_as_started():
    got = _run_child(unprivileged=True)
    assert set(got["niceness"]) == {5}
    _assert_warned(got)


def _assert_warned(got: dict) -> None:
    assert got["result"] == 5
    assert got["log"].count("WARNING") == 1
    assert "RAY_worker_niceness=0" in got["log"] and "partition actor 0" in got["log"]
