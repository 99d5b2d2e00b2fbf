"""Shared fixtures: one Ray instance for the whole test session, started on first use."""

from __future__ import annotations

import os
import shutil

import pytest

# Workers and the driver must not pick up a cluster from the environment during tests.
os.environ.pop("RAY_ADDRESS", None)
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
# Ray Train's controller polls its workers every 2 s by default: tiny test runs finish sooner with 0.5 s.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
# Single-machine mode: Ray uses 127.0.0.1 as the node address, so nothing listens beyond loopback.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

_TEMP_DIR = f"/tmp/rct{os.getpid()}"  # Ray's socket paths must stay short


def pytest_collection_modifyitems(config, items):
    """Run the tests that replace the shared Ray instance (``own_ray``) last: restarting it costs
    seconds, and the tests after them would otherwise start it again."""
    items.sort(key=lambda item: item.get_closest_marker("own_ray") is not None)


@pytest.fixture(scope="session")
def _ray_session_owner():
    """Shuts down, at the end of the session, the instance ``ray_session`` started."""
    state = {"started": False}
    yield state
    import ray

    if state["started"] and ray.is_initialized():
        ray.shutdown()
    shutil.rmtree(_TEMP_DIR, ignore_errors=True)


@pytest.fixture
def ray_session(_ray_session_owner):
    """A local Ray instance shared by every test that needs Ray (``ray.init`` costs seconds).

    Started on first use, and started again when a test that needs a Ray instance of its own
    (tests/cluster: a multi-node ``Cluster``) has shut it down in between.
    """
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            object_store_memory=400 * 1024**2,
            # Ray Train's controller and placement-group cleaner use the state API it serves;
            # without it a trial stopped by Tune can leak its worker group's resources
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            log_to_driver=True,
            _temp_dir=_TEMP_DIR,
            runtime_env={"env_vars": {"PYTHONPATH": os.getcwd()}},
        )
        _ray_session_owner["started"] = True
    yield ray
