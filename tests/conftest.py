"""Test fixtures: one real local Ray per test session, real files in temporary directories."""

from __future__ import annotations

import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # the session's Ray listens on 127.0.0.1 only
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Stores on the local S3-compatible server (es_actors.testing.local_s3) take credentials from the
# environment, as a deployment does; set before Ray starts so its workers inherit them. Local test
# values only: they open nothing but the server the tests start on 127.0.0.1.
from es_actors.testing.local_s3 import LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY, REGION  # noqa: E402

os.environ.update(AWS_ACCESS_KEY_ID=LOCAL_ACCESS_KEY, AWS_SECRET_ACCESS_KEY=LOCAL_SECRET_KEY, AWS_DEFAULT_REGION=REGION)
for _name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
    os.environ.pop(_name, None)

import pytest
import ray

from es_actors import Store
from es_actors.examples.bank import BankAccount


@pytest.fixture(scope="session")
def ray_session():
    """A small local Ray (no dashboard, loopback only) shared by every test that needs one."""
    if not ray.is_initialized():
        from es_actors.runtime.cluster import start_local_ray

        start_local_ray(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture
def store_factory(ray_session, tmp_path):
    """Open stores on fresh directories; every one is closed when the test ends."""
    opened: list[Store] = []

    def make(name: str = "store", aggregates=(BankAccount,), **settings) -> Store:
        s = Store.open(tmp_path / name, list(aggregates), **settings)
        opened.append(s)
        return s

    yield make
    for s in opened:
        s.close()


@pytest.fixture
def store(store_factory) -> Store:
    return store_factory(partitions=2)


@pytest.fixture(scope="module")
def shared_store(ray_session, tmp_path_factory):
    """One store for a module's property examples, plus a second client Store on the same actors."""
    import itertools

    path = tmp_path_factory.mktemp("shared") / "store"
    s = Store.open(path, [BankAccount], partitions=2)
    other = Store.open(path, [BankAccount])  # same cluster: joins the same named partition actors
    yield s, other, itertools.count()
    s.close()
