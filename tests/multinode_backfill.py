"""A backfill on a simulated 3-node Ray cluster, one worker node removed mid-run (run by
tests/test_backfill_multinode.py in its own process: it starts and stops its own Ray).

    python tests/multinode_backfill.py STORE SCRATCH_ROOT OUT.json

Each node gets a private scratch directory (its TMPDIR), deleted when the node is removed, so
nothing the backfill needs can survive on a node's own disk by accident. Prints nothing; writes
the backfill's report, the nodes' ids, the removed node and the built and replayed tables to OUT.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from es_actors.testing.simulated_cluster import start_three_nodes  # noqa: E402  (sets Ray's single-machine switch first)

import ray  # noqa: E402

from es_actors import Store  # noqa: E402
from es_actors.examples.bank import BankAccount, Deposit, OpenAccount  # noqa: E402
from es_actors.jobs.backfill import backfill  # noqa: E402
from tests.backfill_domains import SlowBalances  # noqa: E402
from tests.test_backfill import sequential_replay, tables_of_file  # noqa: E402


def main(store: Path, scratch_root: Path, out: Path) -> None:
    cluster, workers, scratch = start_three_nodes(scratch_root)
    try:
        s = Store.open(store, [BankAccount], partitions=3, seal_rows=2_000)
        rng = random.Random(5)
        accounts = [f"m-{i}" for i in range(60)]
        s.submit_many([(BankAccount, a, OpenAccount(owner=a)) for a in accounts])
        for _ in range(12):
            s.submit_many([(BankAccount, rng.choice(accounts), Deposit(amount=rng.randrange(1, 99))) for _ in range(1_000)])
        s.close()  # sealed; no actor of it left to be lost with the node
        removed: dict[str, str] = {}

        def remove_a_worker_once_work_is_under_way() -> None:
            tasks = store / "backfills" / SlowBalances.name / f"v{SlowBalances.version}" / "tasks"
            deadline = time.monotonic() + 120
            node = workers[0]

            def checkpointed_there() -> bool:  # a task on that node has a checkpoint and is not done
                for f in tasks.glob("*/checkpoint.json"):
                    try:
                        ck = json.loads(f.read_text())
                    except ValueError:
                        continue
                    if ck.get("worker") == node.node_id and ck.get("seq") == 1 and not ck.get("final"):  # most of it ahead
                        return True
                return False

            while time.monotonic() < deadline and not checkpointed_there():
                time.sleep(0.01)
            removed["waited_s"] = str(round(120 - (deadline - time.monotonic()), 2))
            removed["node"] = node.node_id
            cluster.remove_node(node, allow_graceful=False)
            shutil.rmtree(scratch[1])

        killer = threading.Thread(target=remove_a_worker_once_work_is_under_way)
        killer.start()
        report = backfill(store, SlowBalances, [BankAccount], parallelism=3, progress=False, task_events=4_000, checkpoint_events=400)
        killer.join()
        result = {
            "report": report.to_dict(),
            "nodes": [cluster.head_node.node_id] + [w.node_id for w in workers],
            "removed": removed.get("node"),
            "waited": removed.get("waited_s"),
            "built": {k: [list(map(str, r)) for r in v] for k, v in tables_of_file(store, SlowBalances).items()},
            "replayed": {k: [list(map(str, r)) for r in v] for k, v in sequential_replay(store, SlowBalances).items()},
        }
        out.write_text(json.dumps(result))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
