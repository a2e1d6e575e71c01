"""A store on S3 (the local server) on a simulated 3-node Ray cluster; under write load, the worker
node hosting the most partition actors is removed (run by tests/test_s3_node_loss.py in its own
process: it starts and stops its own Ray).

    python tests/multinode_s3_node_loss.py SCRATCH_ROOT OUT.json

Each node gets a private scratch directory (its TMPDIR), deleted when the node is removed, so
nothing can survive on a node's own disk by accident. Writes to OUT: where the partitions ran
before and after, how long until every partition answered again, and every acknowledged command
with the version it was given, and the log as read back from S3.

A client on the removed node had opened the store with a projection (its projector and read
model on that node, the read model in the node's scratch directory); after the loss, a new open
on the head node rebuilds the read model from S3. OUT also holds where each projector ran and
the rebuilt balances.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from es_actors.testing.local_s3 import LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY, REGION, start_local_s3  # noqa: E402

os.environ.update(AWS_ACCESS_KEY_ID=LOCAL_ACCESS_KEY, AWS_SECRET_ACCESS_KEY=LOCAL_SECRET_KEY, AWS_DEFAULT_REGION=REGION)

from es_actors.testing.simulated_cluster import start_three_nodes  # noqa: E402  (sets Ray's single-machine switch first)

import ray  # noqa: E402

from es_actors import Store  # noqa: E402
from es_actors.examples.bank import BankAccount, Deposit, OpenAccount  # noqa: E402

PARTITIONS = 6


@ray.remote(num_cpus=0)
class ProjectionClient:
    """A process on one node that opened the store with the balances projection (its projector runs
    on this node, the read model in ``read_models``)."""

    def __init__(self, uri: str, read_models: str) -> None:
        from es_actors.examples.bank_projections import Balances

        self.store = Store.open(uri, [BankAccount], projections=[Balances], read_model_dir=read_models)

    def projector_node(self) -> str:
        return str(ray.get(self.store.projections.running().node_id.remote()))
WRITERS = 4
LOAD_S = 14.0


def partition_nodes(store: Store) -> dict[int, str]:
    """partition -> node id of the actor that answers for it now (those that answer within 2 s)."""
    out: dict[int, str] = {}
    for p, actor in enumerate(store._actors or []):
        try:
            out[p] = ray.get(actor.stats.remote(), timeout=2)["node_id"]
        except Exception:
            pass
    return out


def main(scratch_root: Path, out: Path) -> None:
    s3 = start_local_s3()
    uri = f"s3://{s3.bucket('es-actors-node-loss')}/store?endpoint_url={s3.endpoint_url}"
    cluster, workers, scratch = start_three_nodes(scratch_root)
    acked: list[tuple[str, str, int]] = []  # (command id, account, version)
    failed: list[str] = []
    lock = threading.Lock()
    try:
        store = Store.open(uri, [BankAccount], partitions=PARTITIONS, seal_rows=500, retry_deadline_s=60.0)
        accounts = [f"n-{i}" for i in range(48)]
        store.submit_many([(BankAccount, a, OpenAccount(owner=a)) for a in accounts])
        before = partition_nodes(store)
        counts = {w.node_id: sum(1 for n in before.values() if n == w.node_id) for w in workers}
        victim = max(workers, key=lambda w: counts[w.node_id])
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        client = ProjectionClient.options(scheduling_strategy=NodeAffinitySchedulingStrategy(victim.node_id, soft=False)).remote(
            uri, str(scratch[1 + workers.index(victim)] / "read-models"))
        projector_before = ray.get(client.projector_node.remote(), timeout=120)
        stop = threading.Event()

        def write(w: int) -> None:
            i = 0
            while not stop.is_set():
                account = accounts[(w * 12 + i) % len(accounts)]
                cid = f"w{w}-{i}"
                try:
                    r = store.aggregate(BankAccount, account).submit(Deposit(amount=1), command_id=cid)
                    with lock:
                        acked.append((cid, account, r.version))
                except Exception as exc:  # an outcome unknown after the retry deadline: record it
                    with lock:
                        failed.append(f"{cid}: {type(exc).__name__}: {exc}")
                i += 1

        threads = [threading.Thread(target=write, args=(w,)) for w in range(WRITERS)]
        for t in threads:
            t.start()
        time.sleep(3.0)
        moved = [p for p, n in before.items() if n == victim.node_id]
        removed_at = time.monotonic()
        cluster.remove_node(victim, allow_graceful=False)
        shutil.rmtree(scratch[1 + workers.index(victim)])
        back_s = None
        while time.monotonic() - removed_at < 60:
            now = partition_nodes(store)
            if len(now) == PARTITIONS and all(now[p] != victim.node_id for p in moved):  # every partition answers
                back_s = time.monotonic() - removed_at
                break
            time.sleep(0.2)
        time.sleep(max(0.0, LOAD_S - (time.monotonic() - removed_at)))
        stop.set()
        for t in threads:
            t.join(timeout=120)
        after = partition_nodes(store)
        from es_actors.examples.bank_projections import Balances
        from es_actors.storage.backends import open_backend

        heads = {p: open_backend(uri).head_watch(p).refresh() for p in range(PARTITIONS)}
        rebuilt_at = time.monotonic()
        again = Store.open(uri, [BankAccount], projections=[Balances], read_model_dir=str(scratch[0] / "read-models"))
        projector_after = str(ray.get(again.projections.running().node_id.remote()))
        again.projections.wait_for("balances", heads, timeout=120)
        rebuilt_s = time.monotonic() - rebuilt_at
        balances = {r["account"]: r["balance"] for r in again.query("SELECT account, balance FROM balances").to_pylist()}
        again.close()
        store.close()
        reader = Store.open(uri, [BankAccount], read_only=True)
        events = {}
        for a in accounts:
            events[a] = [(h.version, h.command_id) for h in reader.aggregate(BankAccount, a).history()]
        out.write_text(json.dumps({
            "nodes": [cluster.head_node.node_id] + [w.node_id for w in workers], "victim": victim.node_id,
            "before": before, "after": after, "moved": moved, "back_s": back_s, "acked": acked, "failed": failed,
            "events": events, "projector_before": projector_before, "projector_after": projector_after,
            "balances": balances, "rebuilt_s": rebuilt_s,
        }))
    finally:
        ray.shutdown()
        cluster.shutdown()
        s3.stop()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
