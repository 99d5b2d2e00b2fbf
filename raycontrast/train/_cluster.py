"""The driver's one door to Ray: attach to a cluster or start a local instance, and measure capacity.

Every command (``train``, ``tune``, ``study``, their ``--dry-run``) goes through :func:`capacity`: with an
address (``--address`` / ``$RAY_ADDRESS``) or an initialised Ray it attaches and asks the cluster;
otherwise it either starts a local instance (a run) or only measures what one would offer (a dry run).
"""

from __future__ import annotations

import os
import tempfile

import ray

from raycontrast.config import ConfigError

__all__ = [
    "CONNECT_TIMEOUT_S",
    "ClusterUnreachable",
    "capacity",
    "check_address",
    "cluster_capacity",
    "connect",
    "local_capacity",
    "shutdown_local",
]

CONNECT_TIMEOUT_S = 10.0
"""How long the driver tries to reach a cluster's address before giving up with an error."""

_started_local = False  # connect() started a local Ray instance in this process


class ClusterUnreachable(ConfigError):
    """``--address`` / ``$RAY_ADDRESS`` names a cluster that cannot be reached."""


def _check_reachable(address: str, source: str) -> None:
    """A TCP connection to ``host:port`` of ``address`` within :data:`CONNECT_TIMEOUT_S` (``ray.init``
    itself retries for minutes); ``auto``/``local`` and addresses without a port are left to Ray."""
    import socket
    from urllib.parse import urlsplit

    target = address if "://" in address else f"tcp://{address}"
    try:
        parts = urlsplit(target)
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if not host or port is None:
        if address.strip() in ("auto", "local"):
            return
        raise ClusterUnreachable(
            f"{source}={address!r} is not a Ray address: expected host:port (the head's GCS, e.g. "
            "10.0.0.5:6379), ray://host:10001, or auto"
        )
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        reason = "timed out" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise ClusterUnreachable(
            f"cannot reach the Ray cluster at {source}={address} ({reason} after at most "
            f"{CONNECT_TIMEOUT_S:g}s): check the head's address and port and that the cluster is "
            "up, or leave the address unset to start a local Ray instance"
        ) from None


def _address(address: str | None) -> tuple[str | None, str]:
    """The cluster address to use and where it came from (``--address`` or ``$RAY_ADDRESS``)."""
    if address:
        return address, "--address"
    return os.environ.get("RAY_ADDRESS") or None, "$RAY_ADDRESS"


def check_address(address: str | None = None) -> None:
    """Fail fast (within :data:`CONNECT_TIMEOUT_S`) when ``address`` / ``$RAY_ADDRESS`` names a host
    that does not answer; a no-op without an address or when Ray is already initialised."""
    address, source = _address(address)
    if address and not ray.is_initialized():
        _check_reachable(address, source)


def connect(address: str | None = None) -> None:
    """Attach to ``address`` / ``$RAY_ADDRESS`` (a cluster, or the job's cluster under ``ray job
    submit``), else start a local Ray instance. No-op when Ray is already initialised.

    Raises:
        ClusterUnreachable: the address cannot be reached within :data:`CONNECT_TIMEOUT_S` (or Ray
            finds no cluster there).
    """
    global _started_local
    if ray.is_initialized():
        return
    address, source = _address(address)
    if address:
        _check_reachable(address, source)
        try:
            ray.init(address=address)
        except (ConnectionError, TimeoutError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ClusterUnreachable(
                f"cannot attach to the Ray cluster at {source}={address}: {first}"
            ) from None
    else:
        # the dashboard (loopback only) serves the state API that Ray Train's controller polls
        _start_local()
        _started_local = True


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_local() -> None:
    """A Ray instance of this run's own: its own temp dir and dashboard port, never another instance
    on the machine. The dashboard (loopback only) serves the state API that Ray Train's controller
    and placement-group cleaner poll; they find it through ``$RAY_API_SERVER_ADDRESS`` (inherited by
    every worker), where they would otherwise look for "the" local instance and, finding two, fail
    (the cleaner's thread dies, and with it the freeing of placement groups)."""
    port = _free_port()
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    temp_dir = os.path.join(tempfile.gettempdir(), "raycontrast-ray", str(os.getpid()))
    print("[raycontrast] starting Ray (a local instance of this run's own)", flush=True)
    ray.init(
        address="local",
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=port,
        _temp_dir=temp_dir,
    )


def shutdown_local() -> None:
    """Stop the local Ray instance :func:`connect` started (flushing its actors' log lines to the
    console); instances started or attached elsewhere are left alone."""
    global _started_local
    if _started_local and ray.is_initialized():
        ray.shutdown()
    if _started_local:
        os.environ.pop("RAY_API_SERVER_ADDRESS", None)
    _started_local = False


def local_capacity() -> dict[str, float]:
    """What a local Ray instance started here would offer (the CPUs and GPUs Ray detects), without
    starting one."""
    try:
        from ray._private.utils import get_num_cpus

        cpus = float(get_num_cpus())  # cgroup / container limits included
    except Exception:  # pragma: no cover - Ray internals moved
        cpus = float(os.cpu_count() or 1)
    import torch

    gpus = float(torch.cuda.device_count()) if torch.cuda.is_available() else 0.0
    return {"CPU": cpus, "GPU": gpus}


def cluster_capacity() -> dict[str, float]:
    """Resources of the connected cluster: its current total, raised to the autoscaler's maximum
    when the cluster publishes one (``ray up`` clusters whose GPU workers start on demand)."""
    total = {k: float(v) for k, v in ray.cluster_resources().items()}
    try:
        from ray._private.state import state

        maximum = state.get_max_resources_from_cluster_config() or {}
    except Exception:  # not published (a static cluster, a local instance)
        maximum = {}
    for key, value in maximum.items():
        total[key] = max(total.get(key, 0.0), float(value))
    return total


def capacity(address: str | None = None, start: bool = False) -> dict[str, float]:
    """What the run's cluster offers. With ``address`` / ``$RAY_ADDRESS`` or an initialised Ray:
    attach (:func:`connect`) and ask it; otherwise start a local instance when ``start`` (a run),
    else measure what one would offer without starting it (``--dry-run``)."""
    check_address(address)
    if start or _address(address)[0] or ray.is_initialized():
        connect(address)
        return cluster_capacity()
    return local_capacity()
