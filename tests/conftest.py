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


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def release_session_instance() -> None:
    """Shut the shared instance down (a test that needs its own, e.g. a multi-node ``Cluster``);
    ``ray_session`` starts it again when next needed."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    os.environ.pop("RAY_API_SERVER_ADDRESS", None)


@pytest.fixture(scope="session")
def _ray_session_owner():
    """Shuts down, at the end of the session, the instance ``ray_session`` started."""
    state = {"started": False}
    yield state
    import ray

    if state["started"] and ray.is_initialized():
        ray.shutdown()
    os.environ.pop("RAY_API_SERVER_ADDRESS", None)
    shutil.rmtree(_TEMP_DIR, ignore_errors=True)


@pytest.fixture
def ray_session(_ray_session_owner):
    """A local Ray instance shared by every test that needs Ray (``ray.init`` costs seconds).

    Started on first use, and started again when a test that needs a Ray instance of its own
    (tests/cluster: a multi-node ``Cluster``) has shut it down in between.
    """
    import ray

    if not ray.is_initialized():
        # Ray Train's controller and placement-group cleaner use the state API the dashboard
        # serves; without it a trial stopped by Tune can leak its worker group's resources. They
        # find it through $RAY_API_SERVER_ADDRESS (workers inherit it): without it, another Ray
        # instance on the machine (a study running beside the tests) leaves them unable to tell
        # which is theirs, and placement groups of stopped trials are never freed.
        port = _free_port()
        os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
        ray.init(
            num_cpus=2,
            object_store_memory=400 * 1024**2,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            dashboard_port=port,
            log_to_driver=True,
            _temp_dir=_TEMP_DIR,
            runtime_env={"env_vars": {"PYTHONPATH": os.getcwd()}},
        )
        _ray_session_owner["started"] = True
    yield ray
