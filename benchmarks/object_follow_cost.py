"""What following a whole-object (blobdir) store costs: ``python -m benchmarks.object_follow_cost [--old DIR]``.

- CPU seconds (``time.process_time``) of a follower catching up from 0 over ``--events`` events
  with ``max_rows=10_000`` (each batch's table read), in a fresh process;
- LISTs per second of 4 followers of one partition polling every 0.02 s (``projector_poll_s``)
  for 2 s with nothing new (followers from one backend; ``StoreConfig.object_poll_s`` when the
  code has it).

With ``--old DIR`` (a checkout's ``es_actors`` parent, e.g. ``git archive <rev> es_actors | tar -x -C
DIR``), old and new run in alternation, ``--rounds`` each, in processes of their own; medians are
printed. A cost probe, not part of ``make bench``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]


def build(root: Path, events: int) -> None:
    from es_actors.config import StoreConfig
    from es_actors.storage.objects import ObjectBackend
    from es_actors.testing.storage_conformance import EventLog

    log = ObjectBackend.on_directory(root).open_log(0, StoreConfig())
    ev = EventLog()
    for i in range(events // 1000):
        ev.append(log, [f"a{(i * 7 + k) % 5000}" for k in range(1000)])
    log.close()


def follow(root: Path, max_rows: int) -> dict[str, Any]:
    from es_actors.storage.objects import ObjectBackend

    follower = ObjectBackend.on_directory(root).follower(0)
    rows = polls = 0
    t0 = time.process_time()
    while (batch := follower.poll(max_rows=max_rows)) is not None:
        rows += batch.to_table().num_rows
        polls += 1
    return {"cpu_s": time.process_time() - t0, "rows": rows, "polls": polls}


def idle(root: Path, followers: int, seconds: float, poll_s: float) -> dict[str, Any]:
    from es_actors.config import StoreConfig
    from es_actors.storage.objects import DirectoryBlobStore, ObjectBackend

    lists = [0]

    class Counting(DirectoryBlobStore):
        def list(self, prefix: str) -> list[str]:
            lists[0] += 1
            return super().list(prefix)

    shares = "poll_s" in inspect.signature(ObjectBackend).parameters
    backend = ObjectBackend(Counting(root), StoreConfig().object_poll_s) if shares else ObjectBackend(Counting(root))
    fs = [backend.follower(0) for _ in range(followers)]
    for f in fs:
        while f.poll(10_000_000) is not None:
            pass
    lists[0] = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for f in fs:
            assert f.poll(10_000) is None
        time.sleep(poll_s)
    return {"lists_per_s": lists[0] / seconds, "shared": shares}


def _child(pythonpath: str, *args: str) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=pythonpath)
    out = subprocess.run([sys.executable, "-m", "benchmarks.object_follow_cost", *args], env=env,
                         cwd=tempfile.gettempdir(),  # not the checkout: -m puts the cwd first on sys.path
                         capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{args}: exit {out.returncode}: {out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", help="directory holding an older es_actors package")
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--max-rows", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--store", help="a blobdir store built before (else one is built in a temporary directory)")
    ap.add_argument("--child", nargs="*")
    a = ap.parse_args()
    if a.child:
        kind, root = a.child[0], Path(a.child[1])
        import es_actors

        if kind == "which":
            print(json.dumps({"code": es_actors.__file__}))
            return
        result = follow(root, a.max_rows) if kind == "follow" else idle(root, 4, 2.0, 0.02)
        print(json.dumps(result | {"code": es_actors.__file__}))
        return
    with tempfile.TemporaryDirectory() as tmp:
        d = a.store or tmp
        if not a.store:
            build(Path(d), a.events)
        paths = {"new": f"{HERE}"} | ({"old": f"{a.old}{os.pathsep}{HERE}"} if a.old else {})
        results: dict[str, dict[str, list[float]]] = {k: {"cpu_s": [], "lists_per_s": []} for k in paths}
        for name, pp in paths.items():
            print(name, "runs", _child(pp, "--child", "which", d)["code"])
        for _ in range(a.rounds):
            for name, pp in paths.items():
                results[name]["cpu_s"].append(_child(pp, "--max-rows", str(a.max_rows), "--child", "follow", d)["cpu_s"])
                results[name]["lists_per_s"].append(_child(pp, "--child", "idle", d)["lists_per_s"])
        for name, r in results.items():
            print(f"{name}: follow {a.events} events, max_rows={a.max_rows}: CPU {statistics.median(r['cpu_s']):.3f} s "
                  f"(runs {', '.join(f'{x:.3f}' for x in r['cpu_s'])}); 4 idle followers: "
                  f"{statistics.median(r['lists_per_s']):.1f} LIST/s (runs {', '.join(f'{x:.0f}' for x in r['lists_per_s'])})")


if __name__ == "__main__":
    main()
