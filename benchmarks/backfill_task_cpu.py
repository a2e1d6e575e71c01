"""CPU of a backfill's tasks, without Ray: where ``backfill_10m``'s time goes (ADR-016).

    python -m benchmarks.backfill_task_cpu balances|daily [workers=2] [runs=5]

Plans the backfill of ``Balances`` or ``DailyTotals`` over the 10M bench data set (cached by
``benchmarks.datasets``; built once if absent) for ``workers`` workers, then runs each task's
function (``run_task``, DuckDB threads=1) one after another in this process over a hard-linked
copy, and prints the summed ``time.process_time`` per run, per task, and a digest of the parts (two
versions of the code must give the same). To compare code, run it from two checkouts in
alternation. Not part of ``make bench``; beside it, DuckDB's raw GROUP BY at threads=1 is the
floor (``benchmarks.backfill.duckdb_raw``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import statistics
import sys
import time

from benchmarks.common import scratch_dir
from benchmarks.datasets import clone
from benchmarks.projection import PARTITIONS, Dataset


def main(argv: list[str]) -> None:
    import duckdb

    from es_actors.domain import DomainRegistry
    from es_actors.examples.bank import BankAccount
    from es_actors.examples.bank_projections import Balances, DailyTotals
    from es_actors.read.backfill.plan import make_plan
    from es_actors.read.backfill.task import run_task
    from es_actors.read.backfill.work import open_work
    from es_actors.storage.layout import StoreLayout

    which = argv[0] if argv else "balances"
    workers = int(argv[1]) if len(argv) > 1 else 2
    runs = int(argv[2]) if len(argv) > 2 else 5
    p = {"balances": Balances, "daily": DailyTotals}[which]
    ds = Dataset("10m")
    work_dir = scratch_dir("backfill_task_cpu_")
    store = work_dir / "store"
    try:
        clone(ds.store, store)
        layout = StoreLayout.from_uri(store)
        registry = DomainRegistry([BankAccount])
        plan = make_plan(layout, PARTITIONS, p, workers)
        totals, per_task, digest = [], [], ""
        for _ in range(runs):
            open_work(layout, p.name, p.version, "cpu").discard()
            work = open_work(layout, p.name, p.version, "cpu")
            per_task = []
            for spec in plan.tasks:
                c0 = time.process_time()
                run_task(store, PARTITIONS, registry, p, spec, work)
                per_task.append(round(time.process_time() - c0, 3))
            totals.append(sum(per_task))
            con = duckdb.connect()
            rows = [con.execute("SELECT count(*), sum(hash(t)) FROM read_parquet(?) t", [str(work.table_file(ck, t))]).fetchone()
                    for spec in plan.tasks if (ck := work.load_checkpoint(spec.id)) is not None for t in ck.tables]
            con.close()
            digest = hashlib.md5(str(rows).encode()).hexdigest()[:10]
        print(json.dumps({"projection": p.name, "tasks": len(plan.tasks), "cpu_s": [round(t, 3) for t in totals],
                          "median_s": round(statistics.median(totals), 3), "last_per_task": per_task, "digest": digest}))
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
