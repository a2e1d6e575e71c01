"""Two revisions of es_actors measured against each other: interleaved runs, medians, ratios.

A change that must keep benchmark figures ("median new/old >= 0.95 per metric") is measured
here: each round runs every chosen bench once in each checkout, the order alternating between
rounds (so drift of a noisy machine falls on both), and the table gives the median of the
rounds per metric and the ratio, oriented so that > 1 means the new revision is better.

Each checkout needs its own ``.venv`` with its own editable install, e.g.::

    git worktree add --detach ../es-old <old-rev> && (cd ../es-old && make install)
    .venv/bin/python -m benchmarks.compare_revisions --old ../es-old --new . --benches append,project --rounds 5

Runs only es_actors (peers do not change between revisions). Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

LOWER_IS_BETTER_UNITS = {"ms", "s"}


def run_once(checkout: Path, bench: str, out: Path, timeout_s: float) -> bool:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    cmd = [str(checkout / ".venv/bin/python"), "-m", "benchmarks.run", "--only", bench, "--systems", "es_actors",
           "--repeats", "1", "--out", str(out)]
    with open(out.with_suffix(".log"), "w") as log:
        try:
            return subprocess.run(cmd, cwd=checkout, env=env, stdout=log, stderr=log, timeout=timeout_s).returncode == 0
        except subprocess.TimeoutExpired:
            return False


def table(results: Path) -> list[tuple[str, str, str, float, float, float, int]]:
    """(bench, metric, unit, old median, new median, ratio new-better, runs) per metric."""
    vals: dict[tuple[str, str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for f in sorted(results.glob("*.jsonl")):
        side = f.name.split("-", 1)[0]
        for line in f.read_text().splitlines():
            r = json.loads(line)
            if r.get("system") == "es_actors":
                vals[(r["bench"], r["metric"], r.get("unit", ""))][side].append(float(r["value"]))
    rows = []
    for (bench, metric, unit), d in sorted(vals.items()):
        if not d.get("old") or not d.get("new"):
            continue
        mo, mn = statistics.median(d["old"]), statistics.median(d["new"])
        lower = unit in LOWER_IS_BETTER_UNITS or metric.endswith("_ms") or metric == "seconds"
        ratio = (mo / mn if mn else float("inf")) if lower else (mn / mo if mo else float("inf"))
        rows.append((bench, metric, unit, mo, mn, ratio, min(len(d["old"]), len(d["new"]))))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", type=Path, required=True, help="checkout of the previous revision (with .venv)")
    ap.add_argument("--new", type=Path, required=True, help="checkout of the new revision (with .venv)")
    ap.add_argument("--benches", default="append,project", help="comma-separated --only values")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/.cache/compare"))
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    ap.add_argument("--table-only", action="store_true", help="print the table of an earlier --out and stop")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        for side in ("old", "new"):
            if not (getattr(args, side) / ".venv/bin/python").exists():
                ap.error(f"--{side} {getattr(args, side)} has no .venv (run `make install` there)")
        for i in range(1, args.rounds + 1):
            order = ("old", "new") if i % 2 else ("new", "old")
            for bench in args.benches.split(","):
                for side in order:
                    print(f"[{time.strftime('%H:%M:%S')}] round {i}/{args.rounds} {bench} {side}", file=sys.stderr)
                    if not run_once(getattr(args, side).resolve(), bench, (args.out / f"{side}-{bench}-{i}.jsonl").resolve(),
                                    args.timeout):
                        print(f"  failed: see {args.out / f'{side}-{bench}-{i}.log'}", file=sys.stderr)
    print("| bench | metric | old median | new median | new better by (>1 better) | runs |")
    print("|---|---|---|---|---|---|")
    for bench, metric, unit, mo, mn, ratio, n in table(args.out):
        print(f"| {bench} | {metric} ({unit}) | {mo:,.4g} | {mn:,.4g} | {ratio:.3f} | {n} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
