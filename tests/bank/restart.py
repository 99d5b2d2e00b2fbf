"""Killing a bank actor so that Ray restarts it, deterministically for the tests."""

import time


def kill_and_wait_restart(handle, timeout_s: float = 60.0) -> None:
    """Kill ``handle``'s actor (Ray restarts it: ``__init__`` reloads the snapshot) and return once the
    new incarnation answers. ``ray.kill`` is asynchronous: a call sent right after it may still reach
    the old incarnation, which would make the test's steps race the restart."""
    import ray

    old = ray.get(handle.describe.remote(), timeout=timeout_s)["pid"]
    ray.kill(handle, no_restart=False)
    deadline = time.monotonic() + timeout_s
    while ray.get(handle.describe.remote(), timeout=timeout_s)["pid"] == old:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the actor was not restarted within {timeout_s} s")
        time.sleep(0.1)
