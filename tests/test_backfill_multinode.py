"""Backfill on a simulated 3-node cluster (ray.cluster_utils.Cluster, each node with a private
scratch directory, deleted when it is removed): work runs on several nodes, and removing a node
mid-backfill still gives exactly the sequential replay's tables. Runs in its own process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from es_actors.testing.own_process import run_in_own_process

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.ray_kill
def test_backfill_survives_losing_a_node_and_runs_on_several(tmp_path):
    out = tmp_path / "out.json"
    proc = run_in_own_process(
        [str(REPO / "tests" / "multinode_backfill.py"), str(tmp_path / "store"), str(tmp_path / "scratch"), str(out)],
        REPO, timeout_s=400,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["removed"] in result["nodes"], "no node was removed: the test proves nothing"
    assert result["built"] == result["replayed"]
    ran_on = {t["node"] for t in result["report"]["task_results"]}
    assert len(ran_on) >= 2, ran_on
    # the task cut off on the removed node ran again elsewhere, from its checkpoint
    assert any(t["resumed_at"] > 0 for t in result["report"]["task_results"]), (
        result["removed"], result["waited"], [(t["task"], t["node"], t["resumed_at"]) for t in result["report"]["task_results"]])
