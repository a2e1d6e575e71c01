"""Node loss with the store on S3: on a simulated 3-node cluster (ray.cluster_utils.Cluster, each node
with a private scratch directory deleted when it is removed), the worker node hosting the most
partition actors is removed under write load. Its partitions come back on the other nodes within
30 s, the writers carry on (their commands resent by id), and no acknowledged command is lost or
doubled. Runs in its own process (it starts and stops its own Ray).

Ray's health checks at their defaults: the GCS marks a node dead after health_check_failure_threshold
(5) missed checks every health_check_period_ms (3 s), about 15 s (17 s measured here, machine busy);
the partition actors then restart on the other nodes (max_restarts=-1) and recover from S3.

A client on the removed node had opened the store with a projection: its projector and read model
(in the node's scratch directory) go with the node, and a new open on another node rebuilds the
read model from S3, equal to the log."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from es_actors.testing.own_process import run_in_own_process

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.ray_kill
def test_losing_a_node_moves_its_partitions_and_loses_no_acknowledged_command(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    proc = run_in_own_process([str(REPO / "tests" / "multinode_s3_node_loss.py"), str(tmp_path / "scratch"), str(out)],
                              REPO, timeout_s=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(out.read_text())
    assert len(set(r["before"].values())) >= 2, f"partitions were not spread over nodes: {r['before']}"
    assert r["moved"], "the removed node hosted no partition: the test proves nothing"
    assert r["back_s"] is not None and r["back_s"] <= 30, f"partitions back after {r['back_s']} s"
    assert all(node != r["victim"] for node in r["after"].values()), r["after"]
    assert not r["failed"], r["failed"][:5]
    stored = Counter(cid for evs in r["events"].values() for _v, cid in evs)
    doubled = [cid for cid, n in stored.items() if n > 1]
    assert not doubled, f"commands stored twice: {doubled[:5]}"
    by_account = {a: dict((cid, v) for v, cid in evs) for a, evs in r["events"].items()}
    lost = [(cid, a, v) for cid, a, v in r["acked"] if by_account[a].get(cid) != v]
    assert not lost, f"acknowledged commands lost or at another version: {lost[:5]}"
    for a, evs in r["events"].items():
        assert [v for v, _ in evs] == list(range(1, len(evs) + 1)), f"{a}: versions not gapless"
    assert len(r["acked"]) > 100, "hardly any load"
    # the projector on the lost node went with it; a new open elsewhere rebuilt its read model from S3
    assert r["projector_before"] == r["victim"] and r["projector_after"] != r["victim"], r
    assert r["balances"] == {a: len(evs) - 1 for a, evs in r["events"].items()}, "rebuilt read model != the log"
