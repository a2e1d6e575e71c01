"""A client actor on another node of a simulated 2-node Ray cluster writes over the TLS link (run by
tests/test_remote_link.py in its own process: it starts and stops its own Ray).

    python tests/multinode_remote_link.py TMP_DIR OUT.json

The driver opens a local-disk store on the head node (its partition actors run there); a client
actor pinned to the worker node joins it, submits deposits from a few threads, and reports which
transport each channel uses. A second client with ``remote_link=False`` must use Ray calls.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from es_actors.testing.simulated_cluster import start_cluster  # noqa: E402  (sets Ray's single-machine switch first)

import ray  # noqa: E402
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: E402

from es_actors import Store, Submission  # noqa: E402
from es_actors.examples.bank import BankAccount, Deposit, OpenAccount  # noqa: E402

PARTITIONS = 2
ACCOUNTS = [f"acct-{i}" for i in range(20)]


@ray.remote(num_cpus=0)
class Client:
    def __init__(self, store_path: str, **settings: Any) -> None:
        self.store = Store.open(store_path, [BankAccount], **settings)
        self.node = ray.get_runtime_context().get_node_id()

    def deposit(self, rounds: int, amount: int) -> dict[str, Any]:
        from concurrent.futures import ThreadPoolExecutor

        def one(aid: str) -> list[str]:
            errors = []
            h = self.store.aggregate(BankAccount, aid)
            for _ in range(rounds):
                try:
                    h.submit(Deposit(amount=amount))
                except Exception as exc:  # reported, the test fails on any
                    errors.append(repr(exc))
            return errors

        with ThreadPoolExecutor(8) as pool:
            errors = [e for errs in pool.map(one, ACCOUNTS) for e in errs]
        links = [getattr(ch._link, "transport", None) if ch._link is not None else None for ch in self.store._channels]
        return {"node": self.node, "errors": errors, "links": links}

    def close(self) -> None:
        self.store.close()


def main(tmp: Path, out: Path) -> None:
    cluster, workers, _scratch = start_cluster(tmp / "scratch", workers=1)
    try:
        store_path = str(tmp / "store")
        store = Store.open(store_path, [BankAccount], partitions=PARTITIONS)
        store.submit_many([Submission(BankAccount, a, OpenAccount(owner=a), expected_version=0) for a in ACCOUNTS])
        actor_nodes = [st["node_id"] for st in store.stats()]
        on_worker = NodeAffinitySchedulingStrategy(workers[0].node_id, soft=False)
        client = Client.options(scheduling_strategy=on_worker).remote(store_path)
        r = ray.get(client.deposit.remote(10, 3), timeout=180)
        slow = Client.options(scheduling_strategy=on_worker).remote(store_path, remote_link=False)
        r2 = ray.get(slow.deposit.remote(1, 5), timeout=180)
        balances = {a: store.aggregate(BankAccount, a).state().state.balance for a in ACCOUNTS}
        ray.get([client.close.remote(), slow.close.remote()])
        store.close()
        out.write_text(json.dumps({
            "partitions": PARTITIONS, "actor_nodes": actor_nodes, "client_node": r["node"], "links": r["links"],
            "errors": r["errors"] + r2["errors"], "balances": balances, "expected": {a: 35 for a in ACCOUNTS},
            "ray_client_links": r2["links"], "ray_client_on_worker": r2["node"] == r["node"],
        }))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
