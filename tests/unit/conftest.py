"""The unit layer: logic without Ray (decide, hydration, client batching, the projection runner,
the facade's Ray-free parts). Fakes stand in for Ray actors only, never for files or DuckDB.
This hook fails any test here that starts Ray (in a full run the integration tests' session
Ray may already be up: only a start by the test itself counts)."""

from __future__ import annotations

import sys

import pytest


def _ray_is_up() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and bool(getattr(ray, "is_initialized", lambda: False)())


@pytest.fixture(autouse=True)
def no_ray_started():
    before = _ray_is_up()
    yield
    if not before and _ray_is_up():
        pytest.fail("a unit test started Ray")
