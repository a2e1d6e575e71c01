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


def pytest_generate_tests(metafunc):
    """A module with ``BACKENDS = ("local", "s3")`` (or a test marked ``both_backends``) runs each test
    that opens stores through ``store_factory`` once per storage backend."""
    if "backend" not in metafunc.fixturenames:
        return
    marked = metafunc.definition.get_closest_marker("both_backends") is not None
    backends = ("local", "s3") if marked else getattr(metafunc.module, "BACKENDS", None)
    if backends:
        metafunc.parametrize("backend", backends, indirect=True)


@pytest.fixture
def backend(request) -> str:
    """The storage backend a test's stores live on: "local" unless the module or test asks for both;
    a test marked ``local_only`` (it reads a local store's files) is skipped on the others."""
    which = getattr(request, "param", "local")
    marker = request.node.get_closest_marker("local_only")
    if which != "local" and marker is not None:
        pytest.skip(f"local disk only: {marker.args[0] if marker.args else 'reads local files'}")
    return which


@pytest.fixture
def store_uri(backend, tmp_path):
    """Where a store named ``name`` lives on this test's backend: a directory under tmp_path, or a
    prefix in a bucket of the local S3-compatible server (es_actors.testing.local_s3)."""
    if backend == "local":
        return lambda name: str(tmp_path / name)
    import hashlib

    from es_actors.testing.local_s3 import shared_local_s3

    s3 = shared_local_s3()
    bucket = s3.bucket("es-actors-tests")
    base = hashlib.sha256(str(tmp_path).encode()).hexdigest()[:16]
    return lambda name: f"s3://{bucket}/{base}/{name}?endpoint_url={s3.endpoint_url}"


@pytest.fixture
def store_factory(ray_session, store_uri):
    """Open stores on fresh directories (or bucket prefixes); every one is closed when the test ends."""
    opened: list[Store] = []

    def make(name: str = "store", aggregates=(BankAccount,), **settings) -> Store:
        s = Store.open(store_uri(name), list(aggregates), **settings)
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
