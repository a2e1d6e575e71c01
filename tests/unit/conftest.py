"""The unit layer: the write path's logic without Ray. Every test here must pass with Ray
absent; this hook fails any test that imports it (fakes stand in for Ray actors only)."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture(autouse=True)
def no_ray_started():
    yield
    ray = sys.modules.get("ray")
    if ray is not None and getattr(ray, "is_initialized", lambda: False)():
        pytest.fail("a unit test started Ray")
