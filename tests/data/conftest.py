"""Fixtures of the data tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def ray_instance():
    """A small local Ray instance, started only if none is running (and then shut down)."""
    ray = pytest.importorskip("ray")
    started = False
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200_000_000)
        started = True
    yield ray
    if started:
        ray.shutdown()
