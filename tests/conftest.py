"""Shared fixtures: one Ray instance for the whole test session, started on first use."""

from __future__ import annotations

import os
import shutil

import pytest

# Workers and the driver must not pick up a cluster from the environment during tests.
os.environ.pop("RAY_ADDRESS", None)
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray instance shared by every test that needs Ray (``ray.init`` costs seconds)."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    temp_dir = f"/tmp/rct{os.getpid()}"  # Ray's socket paths must stay short
    ray.init(
        num_cpus=2,
        object_store_memory=400 * 1024**2,
        include_dashboard=False,
        log_to_driver=True,
        _temp_dir=temp_dir,
        runtime_env={"env_vars": {"PYTHONPATH": os.getcwd()}},
    )
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
