"""A simulated Ray cluster on 127.0.0.1 (``ray.cluster_utils.Cluster``) for multi-node tests and
benchmarks (each run in its own process: importing this module sets Ray's single-machine switch):
every node gets a private scratch directory (its TMPDIR), which a test deletes when it removes the
node, so nothing can survive on a node's own disk by accident."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from es_actors.runtime.cluster import _RAY_CLUSTER_SWITCH

# Every node on 127.0.0.1: Ray's single-machine switch keeps the loopback address (as the
# runtime's start_local_ray does), else the nodes would announce the machine's address.
os.environ[_RAY_CLUSTER_SWITCH] = "0"

import ray  # noqa: E402
from ray._private import ray_constants  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

ray_constants.ENABLE_RAY_CLUSTER = False


def start_cluster(scratch_root: Path, workers: int = 2) -> tuple[Any, list[Any], list[Path]]:
    """(the cluster, its worker nodes, the scratch directories: head's first), one CPU per node; this
    process is connected to it as the driver."""
    scratch = [scratch_root / f"node{i}" for i in range(workers + 1)]
    for d in scratch:
        d.mkdir(parents=True)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False, "env_vars": {"TMPDIR": str(scratch[0])}, "node_ip_address": "127.0.0.1",
    })
    nodes = [cluster.add_node(num_cpus=1, env_vars={"TMPDIR": str(scratch[i])}, node_ip_address="127.0.0.1")
             for i in range(1, workers + 1)]
    ray.init(address=cluster.address, logging_level=logging.ERROR, log_to_driver=False)
    cluster.wait_for_nodes()
    return cluster, nodes, scratch


def start_three_nodes(scratch_root: Path) -> tuple[Any, list[Any], list[Path]]:
    """A head and two workers: :func:`start_cluster` with ``workers=2``."""
    return start_cluster(scratch_root, workers=2)
