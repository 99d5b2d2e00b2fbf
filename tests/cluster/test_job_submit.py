"""End to end: ``raycontrast train`` submitted with ``ray job submit`` to a token-protected Ray head.

The head is a real ``ray start --head`` in its own process group, temp dir, ports and token file. It is
a separate Ray instance from the session's ``ray_session`` one: this test process never connects to it
except through the Jobs API (the ``ray job`` CLI in subprocesses), and stops exactly the processes that
head started (never ``ray stop``, which would stop every Ray instance on the machine).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.train.conftest import TINY

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent  # the virtualenv running the tests: the head uses it too
RAY = str(VENV_BIN / "ray")
START_TIMEOUT_S = 90
JOB_TIMEOUT_S = 300  # the job takes ~40-60 s on 2 idle cores; generous for a loaded machine


@dataclass
class Head:
    url: str  # the Jobs API (dashboard), http://127.0.0.1:<port>
    gcs_port: int
    token: str
    env: dict[str, str]  # environment for `ray job ...` clients: token auth on, this head's token
    root: Path  # temp dir: token file, head log, Ray's session dir
    proc: subprocess.Popen  # `ray start --head --block`


def _psutil():
    """Ray ships psutil in ray/thirdparty_files, which importing ray puts on sys.path."""
    import ray  # noqa: F401

    return importlib.import_module("psutil")


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 right now (held open together so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _free_range(size: int, avoid: set[int]) -> int:
    """The first port of ``size`` consecutive ports that are all free (for Ray's worker ports)."""
    for _ in range(100):
        lo = random.randrange(20000, 60000 - size)
        if avoid & set(range(lo, lo + size)):
            continue
        try:
            for port in range(lo, lo + size):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.bind(("127.0.0.1", port))
            return lo
        except OSError:
            continue
    raise RuntimeError("no free port range for Ray's workers")


def _status(url: str, token: str | None) -> int:
    """HTTP status of GET ``url`` (with ``Authorization: Bearer token`` when given)."""
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def _head_processes(proc: subprocess.Popen, marker: str) -> list:
    """The head's process tree, plus any process still naming its temp dir (reparented ones)."""
    psutil = _psutil()
    found = {}
    try:
        parent = psutil.Process(proc.pid)
        for p in [parent, *parent.children(recursive=True)]:
            found[p.pid] = p
    except psutil.NoSuchProcess:
        pass
    for p in psutil.process_iter(["cmdline"]):
        try:
            if marker in " ".join(p.info["cmdline"] or ()):
                found.setdefault(p.pid, p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return list(found.values())


def _stop_head(proc: subprocess.Popen, marker: str) -> None:
    """SIGTERM to ``ray start --block`` (it stops what it started), then SIGKILL to any survivor."""
    psutil = _psutil()

    procs = _head_processes(proc, marker)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
    _, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()  # psutil checks that the pid still names the same process (no reuse)
    psutil.wait_procs(alive, timeout=10)
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def token_head():
    """A Ray head with token auth on, everything on 127.0.0.1, stopped (only it) on teardown."""
    # short: Ray's socket paths (under the temp dir) must stay < 107 bytes
    root = Path(f"/tmp/rcj{secrets.token_hex(4)}")
    root.mkdir(mode=0o700)
    try:
        yield from _run_head(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _run_head(root: Path):
    """Start the head, wait for its Jobs API, yield it, stop it (the body of ``token_head``)."""
    (root / "home").mkdir()
    token = secrets.token_hex(32)
    token_file = root / "auth_token"
    token_file.write_text(token)
    token_file.chmod(0o600)

    gcs, dash, client, nm, om, agent, agent_grpc, rt_env, metrics = ports = _free_ports(9)
    workers_lo = _free_range(100, set(ports))
    url = f"http://127.0.0.1:{dash}"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("RAY_AUTH") and k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")
    }
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",  # the job's `raycontrast` is the venv's
        HOME=str(root / "home"),  # nothing reads or writes the user's ~/.ray (its auth_token)
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token_file),  # Ray's token sources: RAY_AUTH_TOKEN, this, ~/.ray
        # With this, Ray takes 127.0.0.1 as the node address, so the GCS, raylet and agents listen on
        # loopback only (otherwise they listen on every interface of the machine).
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        # State-API calls inside the cluster (Ray Train's) go to this head even when other Ray
        # instances run on the machine, instead of failing on "multiple active Ray instances".
        RAY_API_SERVER_ADDRESS=url,
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
        RAY_USAGE_STATS_ENABLED="0",
    )
    command = [
        RAY,
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--temp-dir={root / 'ray'}",
        f"--port={gcs}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        f"--ray-client-server-port={client}",
        f"--node-manager-port={nm}",
        f"--object-manager-port={om}",
        f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={rt_env}",
        f"--metrics-export-port={metrics}",
        f"--min-worker-port={workers_lo}",
        f"--max-worker-port={workers_lo + 99}",
        "--num-cpus=2",
        "--object-store-memory=400000000",
        "--disable-usage-stats",
    ]
    log = (root / "head.log").open("wb")
    proc = subprocess.Popen(
        command, env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ray start exited ({proc.returncode}):\n{_tail(root / 'head.log')}")
            try:
                if _status(f"{url}/api/jobs/", token) == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the head's Jobs API did not come up:\n{_tail(root / 'head.log')}")
            time.sleep(0.5)
        yield Head(url=url, gcs_port=gcs, token=token, env=env, root=root, proc=proc)
    finally:
        try:
            _stop_head(proc, str(root))
        finally:
            log.close()


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _job_info(head: Head, submission_id: str) -> dict:
    """The Jobs API's record of a job (GET /api/jobs/<id>, with the token)."""
    request = urllib.request.Request(f"{head.url}/api/jobs/{submission_id}")
    request.add_header("Authorization", f"Bearer {head.token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _ray(head: Head, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [RAY, *args],
        env=head.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _listening_addresses(head: Head) -> set[str]:
    """Local addresses of every listening socket of the head's processes."""
    psutil = _psutil()
    addresses = set()
    for p in _head_processes(head.proc, str(head.root)):
        try:
            conns = p.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        addresses |= {c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN}
    return addresses


def test_train_submitted_as_a_job_attaches_to_the_cluster_and_checkpoints(token_head, tmp_path):
    head = token_head
    # Token auth is on: the Jobs API refuses a request without the token or with a wrong one.
    assert _status(f"{head.url}/api/jobs/", None) == 401
    assert _status(f"{head.url}/api/jobs/", "not-the-token") == 403

    runs = tmp_path / "runs"
    submission_id = f"raycontrast-e2e-{secrets.token_hex(3)}"
    # an elastic group (issue 14): the same code path as a fixed one, here it gets its max of 2
    overrides = [*TINY, "train.num_workers=[1,2]", f"storage_path={runs}", "name=jobrun"]
    # `sh -c` only reports which `raycontrast` and which cluster address the job sees, then execs
    # exactly `raycontrast train experiments/synthetic.yaml <overrides>`.
    script = (
        'echo "JOB_RAYCONTRAST=$(command -v raycontrast)"; echo "JOB_RAY_ADDRESS=$RAY_ADDRESS"; '
        'exec raycontrast train "$@"'
    )
    try:
        submitted = _ray(
            head,
            "job",
            "submit",
            "--address",
            head.url,
            "--submission-id",
            submission_id,
            "--working-dir",
            str(REPO),
            "--runtime-env",
            str(REPO / "cluster" / "runtime_env.yaml"),
            "--",
            "sh",
            "-c",
            script,
            "sh",
            "experiments/synthetic.yaml",
            *overrides,
            timeout=JOB_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        _ray(head, "job", "stop", "--address", head.url, submission_id)
        pytest.fail(f"the job did not finish in {JOB_TIMEOUT_S}s")
    out = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0, out[-6000:]

    info = _job_info(head, submission_id)
    assert info["status"] == "SUCCEEDED", info
    assert info["entrypoint"].startswith("sh -c ")

    # The driver is the venv's raycontrast, attached (RAY_ADDRESS from the Jobs API) to this head
    # instead of starting a Ray instance of its own.
    assert f"JOB_RAYCONTRAST={VENV_BIN / 'raycontrast'}" in out
    assert f"JOB_RAY_ADDRESS=127.0.0.1:{head.gcs_port}" in out
    assert f"Connecting to existing Ray cluster at address: 127.0.0.1:{head.gcs_port}" in out
    assert "training worker group of size 2" in out

    run_dir = runs / "jobrun"
    checkpoints = sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())
    assert checkpoints and (checkpoints[-1] / "state.pt").is_file()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["iterations"] == 4 and summary["status"] == "completed"
    assert summary["run_dir"] == str(run_dir) and summary["bank"]["mode"] == "actor"
    assert [(g["start"], g["world_size"]) for g in summary["worker_groups"]] == [(0, 2)]
    assert (run_dir / "metrics.csv").is_file() and (run_dir / "bank" / "snapshot.pt").is_file()

    # Nothing this head started listens beyond loopback.
    listening = _listening_addresses(head)
    assert listening and listening <= {"127.0.0.1", "::ffff:127.0.0.1"}, listening
