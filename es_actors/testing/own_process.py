"""Run a multi-node script (a simulated cluster, es_actors.testing.simulated_cluster) in a Python process
of its own: it starts and stops its own Ray, so it must not join the caller's (``RAY_ADDRESS`` is
dropped), and it imports the repository at ``root`` first."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_in_own_process(args: list[str], root: Path, timeout_s: float) -> subprocess.CompletedProcess[str]:
    """``python ARGS...`` in ``root``, output captured; the caller checks the return code."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, *args], cwd=root, env=env, capture_output=True, text=True, timeout=timeout_s)
