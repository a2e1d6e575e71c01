"""What a read may cost for ``mixed_8w8r``'s open-loop write target, on this machine.

    python -m benchmarks.reader_budget [--budgets 0,50,100,150,200] [--repeats 2]

Runs ``mixed_8w8r``'s es_actors shape (8 writer threads on a fresh clone of the pre-populated store,
4 partitions, local Ray) with no readers, with the 8 real open-loop reader processes (2,000 reads/s
in all), and with 8 stand-in reader processes on the same schedule that read nothing and only spend
a fixed CPU time per read (``--budgets``, in microseconds). Prints, per configuration, the median
writes/s, its ratio to the writes with no readers, and the CPU one reader process spent per read
(sleeps and wake-ups included). The stand-ins tell how much CPU per read the target of 0.8x leaves;
the real readers' figure where they stand. Not part of ``make bench`` (ADR-015 quotes it): ~25 s
per configuration and repeat.
"""

from __future__ import annotations

import argparse
import statistics

from benchmarks.mixed import EsSide, MixedRun, one_run

WARMUP_S, DURATION_S = 1.5, 6.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", default="0,50,100,150,200", help="CPU microseconds per stand-in read, comma-separated")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    configs = [("none", ""), ("real", "")] + [("cpu", b.strip()) for b in args.budgets.split(",") if b.strip()]
    es = EsSide(args.seed)
    runs: dict[tuple[str, str], list[MixedRun]] = {}
    try:
        for rep in range(args.repeats):
            for kind, budget in configs[rep % len(configs):] + configs[: rep % len(configs)]:
                es.rounds += 1
                es.start_round()
                try:
                    if kind == "none":
                        run = one_run("es_actors", str(es.root), es.make_write, "none", WARMUP_S, DURATION_S, rep)
                    elif kind == "real":
                        run = one_run("es_actors", str(es.root), es.make_write, "open", WARMUP_S, DURATION_S, rep)
                    else:
                        run = one_run("cpu", budget, es.make_write, "open", WARMUP_S, DURATION_S, rep)
                finally:
                    es.end_round()
                runs.setdefault((kind, budget), []).append(run)
    finally:
        es.close()
    base = statistics.median(r.writes_per_s for r in runs[("none", "")])
    print(f"{'readers':<26} {'writes/s':>9} {'ratio':>6} {'reader CPU us/read':>19}")
    for (kind, budget), rs in runs.items():
        name = {"none": "none", "real": "es_actors reads"}.get(kind, f"stand-ins, {budget} us/read")
        writes = statistics.median(r.writes_per_s for r in rs)
        cpu = statistics.median(r.reader_cpu_us for r in rs) if kind != "none" else float("nan")
        print(f"{name:<26} {writes:9,.0f} {writes / base:6.2f} {cpu:19,.0f}")


if __name__ == "__main__":
    main()
