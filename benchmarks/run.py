"""Run the benchmarks: ``python -m benchmarks.run [--only NAME[,NAME...]]``.

NAME is a bench (``append_single_64w``), a module (``append``) or a prefix of bench names
(``append_single``). A full run (no ``--only``) truncates ``benchmarks/results/latest.jsonl``
first; a partial run appends to it. Results of this run are printed as a table at the end.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import time
from pathlib import Path

from benchmarks.common import (
    RESULTS_PATH,
    Context,
    ResultWriter,
    Settings,
    format_table,
    log,
    machine_notes,
    setup_env,
)

# Bench modules, in run order. Each exposes BENCHES (names) and run(ctx, selected_names).
MODULES = ["append", "lifecycle", "projection", "query_events", "reads", "mixed", "subscribe", "backfill", "cross_node"]


def _load(name: str):
    return importlib.import_module(f"{__package__ or 'benchmarks'}.{name}")


def select(only: list[str] | None) -> list[tuple[str, list[str]]]:
    plan = []
    unmatched = set(only or [])
    for mod_name in MODULES:
        mod = _load(mod_name)
        if not only:
            names = list(mod.BENCHES)
        else:
            names = []
            for b in mod.BENCHES:
                matched = [o for o in only if o == mod_name or b == o or b.startswith(o)]
                if matched:  # every selector that names it is used (a prefix must not hide an exact name)
                    names.append(b)
                    unmatched.difference_update(matched)
        if names:
            plan.append((mod_name, names))
    if unmatched:
        known = [b for m in MODULES for b in _load(m).BENCHES]
        raise SystemExit(f"unknown bench(es) {sorted(unmatched)}; known: modules {MODULES}, benches {known}")
    return plan


def _on_term(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    setup_env()
    # Ctrl-C and SIGTERM unwind normally, so stores are closed and postgres is stopped and
    # removed (also when started from a shell that ignores SIGINT in background jobs).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_term)
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated benches, modules or name prefixes")
    ap.add_argument("--duration", type=float, default=Settings.duration_s, help="measured seconds per load run")
    ap.add_argument("--warmup", type=float, default=Settings.warmup_s, help="warm-up seconds per load run")
    ap.add_argument("--repeats", type=int, default=Settings.repeats, help="repetitions per configuration (median)")
    ap.add_argument("--systems", help="comma-separated systems to run (default: all)")
    ap.add_argument("--out", default=str(RESULTS_PATH), help="JSONL results file (default: %(default)s)")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    ap.add_argument("--list", action="store_true", help="list the benches and exit")
    args = ap.parse_args(argv)

    if args.list:
        for mod_name in MODULES:
            print(f"{mod_name}: {', '.join(_load(mod_name).BENCHES)}")
        return 0
    only = [x.strip() for x in args.only.split(",") if x.strip()] if args.only else None
    plan = select(only)
    settings = Settings(
        duration_s=args.duration,
        warmup_s=args.warmup,
        repeats=args.repeats,
        systems={x.strip() for x in args.systems.split(",")} if args.systems else None,
    )
    out = Path(args.out)
    ctx = Context(settings=settings, results=ResultWriter(out, truncate=only is None))
    t0 = time.monotonic()
    log(f"benchmarks: {machine_notes()}; {settings.duration_s:g} s windows after {settings.warmup_s:g} s warm-up, "
        f"{settings.repeats} repetitions; results -> {out}")
    failed = []
    for mod_name, names in plan:
        t = time.monotonic()
        log(f"== {mod_name}: {', '.join(names)}")
        try:
            _load(mod_name).run(ctx, names)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # one module failing should not hide the others' results
            import traceback

            traceback.print_exc()
            failed.append(mod_name)
            log(f"== {mod_name} FAILED: {exc!r}")
        log(f"== {mod_name} took {time.monotonic() - t:.0f} s")
    print()
    print(format_table(ctx.results.records, markdown=args.markdown))
    print(f"\ntotal wall time: {time.monotonic() - t0:.0f} s; {len(ctx.results.records)} rows in {out}")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
