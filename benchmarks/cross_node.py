"""A client on another node: ``append_single_64w`` from a client on the partition actors' node and
from one on another node of a simulated cluster (``ray.cluster_utils.Cluster``: a head and a worker
node, both on 127.0.0.1, one CPU each).

The store (local disk, 4 partitions, 10,000 accounts opened in bulk, untimed) is opened by the
driver on the head node, so its partition actors run there. Two client actors (``num_cpus=0``) are
pinned with ``NodeAffinitySchedulingStrategy``: one on the head node (it reaches the actors over the
direct local link, ADR-007), one on the worker node (over the TLS link the actors open on their
node's address for clients on other nodes, ADR-019), and one more on the worker node with
``remote_link=False`` (its batches go as Ray calls: one ``handle_batch`` call per partition carries
every command queued meanwhile). Each runs 64 closed-loop writer threads (Zipf over disjoint slices, one Deposit per
command, no expected version, so the two clients can take turns on the same accounts) for
``duration`` seconds after a warm-up; they take turns for ``repeats`` rounds (order rotated); medians.

Rows: bench ``append_single_64w_cross_node``, systems ``es_actors`` (same node),
``es_actors_other_node`` (TLS link) and ``es_actors_other_node_ray`` (Ray calls), metrics ``events_per_s``, ``p50_ms``, ``p99_ms``. The target (issue 13):
the other node reaches at least 0.8x the same node. Real networks add a round trip per batch; ADR-019
models it. Runs in its own process (it starts and stops its own Ray cluster).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import Context, log
from es_actors.testing.own_process import run_in_own_process

BENCHES = ["append_single_64w_cross_node"]
WRITERS = 64
PARTITIONS = 4
ROOT = Path(__file__).resolve().parents[1]


def run(ctx: Context, selected: list[str]) -> None:
    s = ctx.settings
    out = ROOT / "benchmarks" / ".cache" / "cross_node.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    log("cross_node: a 2-node simulated cluster, clients on the actors' node and on the other")
    proc = run_in_own_process(["-m", "benchmarks.cross_node", str(out), str(s.duration_s), str(s.warmup_s),
                               str(s.repeats), str(s.seed)], ROOT, timeout_s=900)
    if proc.returncode != 0:
        raise RuntimeError(f"cross_node failed: {proc.stderr[-3000:]}")
    result = json.loads(out.read_text())
    for system, runs in result["runs"].items():
        for metric in ("events_per_s", "p50_ms", "p99_ms"):
            ctx.results.record("append_single_64w_cross_node", system, metric, statistics.median(r[metric] for r in runs),
                               writers=WRITERS, runs=len(runs), notes=result["notes"][system])
        log(f"    {system:<22} " + ", ".join(f"{r['events_per_s']:,.0f}" for r in runs) + " events/s")
    same = statistics.median(r["events_per_s"] for r in result["runs"]["es_actors"])
    other = statistics.median(r["events_per_s"] for r in result["runs"]["es_actors_other_node"])
    by_ray = statistics.median(r["events_per_s"] for r in result["runs"]["es_actors_other_node_ray"])
    log(f"  cross_node: other node (TLS link) / same node = {other / same:.2f} (target >= 0.8); "
        f"by Ray calls {by_ray / same:.2f}")


# -- the measuring process ------------------------------------------------------------------------


def _client_class() -> Any:
    import ray

    @ray.remote(num_cpus=0)
    class Client:
        """64 writers in one process, through a Store that joins the running partition actors."""

        def __init__(self, store_path: str, **settings: Any) -> None:
            from es_actors import Store
            from es_actors.examples.bank import BankAccount

            self.store = Store.open(store_path, [BankAccount], **settings)
            self.node = ray.get_runtime_context().get_node_id()

        def links(self) -> list[str | None]:
            """Each channel's transport: "local" (loopback link), "tls" (from another node), None (Ray calls)."""
            return [ch._link.transport if ch._link is not None else None for ch in self.store._channels]

        def run(self, duration_s: float, warmup_s: float, seed: int) -> dict[str, Any]:
            from benchmarks.common import closed_loop
            from benchmarks.workload import N_ACCOUNTS, ZipfPicker, all_accounts, writer_slices
            from es_actors.examples.bank import BankAccount, Deposit

            slices = writer_slices(all_accounts(N_ACCOUNTS), WRITERS)
            store = self.store

            def make_op(i: int) -> Any:
                nxt = ZipfPicker(slices[i], seed + i).next
                handles: dict[str, Any] = {}

                def op() -> int:
                    aid, amount = nxt()
                    h = handles.get(aid) or handles.setdefault(aid, store.aggregate(BankAccount, aid))
                    h.submit(Deposit(amount=amount))
                    return 1

                return op

            r = closed_loop(WRITERS, make_op, duration_s, warmup_s)
            return {"events_per_s": r.events_per_s, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "errors": r.errors}

        def close(self) -> None:
            self.store.close()

    return Client


def main(out: Path, duration_s: float, warmup_s: float, repeats: int, seed: int) -> None:
    import tempfile

    from es_actors.testing.simulated_cluster import start_cluster  # sets Ray's single-machine switch first

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from benchmarks.workload import N_ACCOUNTS, all_accounts
    from es_actors import Store, Submission
    from es_actors.examples.bank import BankAccount, OpenAccount

    with tempfile.TemporaryDirectory(prefix="es_actors_cross_node_") as tmp:
        cluster, workers, _scratch = start_cluster(Path(tmp) / "scratch", workers=1)
        try:
            store_path = str(Path(tmp) / "store")
            store = Store.open(store_path, [BankAccount], partitions=PARTITIONS)
            accounts = all_accounts(N_ACCOUNTS)
            bad = [r for r in store.submit_many([Submission(BankAccount, a, OpenAccount(owner=a), expected_version=0)
                                                 for a in accounts]) if isinstance(r, Exception)]
            if bad:
                raise RuntimeError(f"opening accounts failed: {bad[0]!r}")
            actor_nodes = {st["node_id"] for st in store.stats()}
            head = cluster.head_node.node_id
            if actor_nodes != {head}:
                raise RuntimeError(f"the partition actors are not all on the head node: {actor_nodes}")
            Client = _client_class()
            on_head = NodeAffinitySchedulingStrategy(head, soft=False)
            on_worker = NodeAffinitySchedulingStrategy(workers[0].node_id, soft=False)
            clients = {
                "es_actors": Client.options(scheduling_strategy=on_head).remote(store_path),
                "es_actors_other_node": Client.options(scheduling_strategy=on_worker).remote(store_path),
                "es_actors_other_node_ray": Client.options(scheduling_strategy=on_worker).remote(store_path, remote_link=False),
            }
            runs: dict[str, list[dict[str, Any]]] = {k: [] for k in clients}
            names = list(clients)
            for rep in range(repeats):
                for name in names[rep % len(names):] + names[:rep % len(names)]:
                    runs[name].append(ray.get(clients[name].run.remote(duration_s, warmup_s, seed + 7919 * rep)))
            links = {name: ray.get(c.links.remote()) for name, c in clients.items()}
            expected = {"es_actors": ["local"] * PARTITIONS, "es_actors_other_node": ["tls"] * PARTITIONS,
                        "es_actors_other_node_ray": [None] * PARTITIONS}
            if links != expected:
                raise RuntimeError(f"links in use: {links}; expected {expected}")
            cluster_note = "2-node simulated cluster on 127.0.0.1, 1 CPU per node (no network round trip: see ADR-019's model)"
            notes = {
                "es_actors": f"client actor on the partition actors' node (direct local link on all {PARTITIONS} partitions); "
                             + cluster_note,
                "es_actors_other_node": f"client actor on the other node: TLS link (pinned throwaway certificate + HMAC "
                                        f"handshake) on all {PARTITIONS} partitions, one batch in flight each; " + cluster_note,
                "es_actors_other_node_ray": "client actor on the other node with remote_link=False: batched Ray calls "
                                            "(handle_batch), one in flight per partition; " + cluster_note,
            }
            out.write_text(json.dumps({"runs": runs, "notes": notes}))
            for c in clients.values():
                ray.get(c.close.remote())
            store.close()
        finally:
            ray.shutdown()
            cluster.shutdown()


if __name__ == "__main__":
    a = sys.argv[1:]
    main(Path(a[0]), float(a[1]), float(a[2]), int(a[3]), int(a[4]))
