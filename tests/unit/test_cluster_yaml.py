"""cluster.yaml and cluster-local.yaml pass Ray's own offline validation and keep the promises the
README makes for a cluster: a real install source, Python 3.11, the autoscaling config on the head,
token authentication on every node, the dashboard on loopback, Ray's ports closed to the outside."""

from __future__ import annotations

import glob
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
FILES = ["cluster.yaml", "cluster-local.yaml"]


def _config(name: str) -> dict:
    from ray.autoscaler._private.util import fillout_defaults, validate_config

    full = fillout_defaults(yaml.safe_load((ROOT / name).read_text()))  # what `ray up` does first
    validate_config(full)  # Ray's schema: raises on an unknown or mistyped field
    return full


@pytest.mark.parametrize("name", FILES)
def test_ray_validates_the_cluster_config(name: str) -> None:
    _config(name)


@pytest.mark.parametrize("name", FILES)
def test_the_cluster_installs_es_actors_from_a_real_source_on_python_3_11(name: str) -> None:
    cfg = _config(name)
    assert re.fullmatch(r"rayproject/ray:2\.60\.0-py311(-cpu)?", cfg["docker"]["image"]), cfg["docker"]
    setup = " ".join(cfg["setup_commands"])
    assert "example.invalid" not in (ROOT / name).read_text()
    assert "pip install" in setup and "es_actors_dist/es_actors-" in setup
    assert cfg["file_mounts"]["~/es_actors_dist"] == "./dist"  # the wheel `pip wheel -w dist .` builds
    import ray

    assert ray.__version__ in cfg["docker"]["image"]  # the Ray es_actors pins


@pytest.mark.parametrize("name", FILES)
def test_every_node_starts_with_token_auth_and_the_head_with_the_autoscaler_and_a_loopback_dashboard(name: str) -> None:
    cfg = _config(name)
    head = [c for c in cfg["head_start_ray_commands"] if "ray start" in c]
    workers = [c for c in cfg["worker_start_ray_commands"] if "ray start" in c]
    assert head and workers
    for cmd in head + workers:
        assert cmd.startswith("RAY_AUTH_MODE=token "), cmd
        assert "0.0.0.0" not in cmd
    assert all("--autoscaling-config=~/ray_bootstrap_config.yaml" in c for c in head)
    assert all("--dashboard-host=127.0.0.1" in c for c in head)
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # file_mounts reach every node


def test_the_aws_security_group_admits_only_ssh_from_outside() -> None:
    rules = _config("cluster.yaml")["provider"]["security_group"]["IpPermissions"]
    assert [(r["FromPort"], r["ToPort"]) for r in rules] == [(22, 22)]


def test_the_wheel_the_cluster_installs_can_be_built_from_this_repository(tmp_path: Path) -> None:
    """What `pip wheel --no-deps -w dist .` gives matches the setup command's glob."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                          str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert glob.glob(str(tmp_path / "es_actors-*.whl"))


def test_workers_reach_the_bucket_with_credentials_of_their_own() -> None:
    """Partition actors are spread over every node, so workers need the bucket too: on AWS an instance
    profile (the launcher gives its default one to the head only); on your machines the AWS profile,
    mounted into the container (Ray passes no environment into it)."""
    worker = _config("cluster.yaml")["available_node_types"]["worker"]["node_config"]
    assert worker["IamInstanceProfile"]["Name"]
    assert any(".aws:/home/ray/.aws:ro" in o for o in _config("cluster-local.yaml")["docker"]["run_options"])
