"""Training across several Ray nodes, simulated on this machine with ``ray.cluster_utils.Cluster``.

A head with no CPUs and two 1-CPU worker nodes: with ``train.num_workers=2`` and
``train.cpus_per_worker=1`` the two Train workers must run on different nodes, so every bank exchange
crosses a node boundary for at least one of them. A Ray Train callback (it runs in the Train controller,
while training) records at every report each rank's bank checks, the node of the bank actor
(``describe()``) and the nodes of the Train worker group's placement group bundles (one bundle per
worker: ``ray.util.placement_group_table()``, read from the GCS). The run's actor and placement group are
gone once ``run_training`` returns, so placement is observed during the run.

One Ray instance per process: the test shuts down the session's instance first (marked ``own_ray``, it
runs after every other test; ``ray_session`` would start the instance again) and shuts its own cluster
down afterwards.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import signal
from pathlib import Path

import pytest
import ray
from ray.train import UserCallback

from raycontrast.bank import bank_actor_name
from raycontrast.bank.actor import NAMESPACE
from raycontrast.config import load_config
from raycontrast.train import run_training
from tests.conftest import release_session_instance
from tests.train.conftest import TINY

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.own_ray]

REPO = Path(__file__).resolve().parents[2]
TRAIN_TIMEOUT_S = 240  # ~30-60 s on 2 cores


@contextlib.contextmanager
def _deadline(seconds: int):
    """Raise TimeoutError in this (main) thread after ``seconds``: a hung run fails the test."""

    def expire(signum, frame):
        raise TimeoutError(f"training did not finish in {seconds}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


class PlacementProbe(UserCallback):
    """Appends one JSON line per report: rank checks, bank actor node, worker bundle nodes."""

    def __init__(self, out: str, actor_name: str, num_workers: int):
        self.out = out
        self.actor_name = actor_name
        self.num_workers = num_workers

    def after_report(self, run_context, metrics, checkpoint):
        actor = ray.get_actor(self.actor_name, namespace=NAMESPACE)
        described = ray.get(actor.describe.remote(), timeout=60)
        worker_groups = [
            group
            for group in ray.util.placement_group_table().values()
            if group["state"] == "CREATED"
            and len(group["bundles"]) == self.num_workers
            and all(b.get("CPU") == 1.0 for b in group["bundles"].values())
        ]
        record = {
            "iteration": metrics[0].get("iteration"),
            "ranks": [
                {k: m.get(k) for k in ("bank_replicas_identical", "bank_matches_actor")}
                for m in metrics
            ],
            "actor_node": described["node_id"],
            "worker_groups": [sorted(g["bundles_to_node_id"].values()) for g in worker_groups],
        }
        with open(self.out, "a") as f:
            f.write(json.dumps(record) + "\n")


@pytest.fixture
def three_nodes(monkeypatch):
    """Head (0 CPUs) + two 1-CPU worker nodes, all on 127.0.0.1; the driver connected to it."""
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    release_session_instance()  # ray_session starts it again when next needed
    # Ray takes 127.0.0.1 as the node address (here and in the processes it starts), so every port
    # the nodes open listens on loopback only.
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
    # Cluster records its address in /tmp/ray/ray_current_cluster, which every Ray user of the machine
    # reads (a plain ray.init() elsewhere would join this cluster), and deletes that file on shutdown:
    # keep both out of the shared file.
    monkeypatch.setattr(ray._private.utils, "write_ray_address", lambda *a, **k: None)
    monkeypatch.setattr(ray._common.utils, "reset_ray_address", lambda *a, **k: None)

    temp_dir = f"/tmp/rcm{secrets.token_hex(4)}"  # Ray's socket paths must stay short
    cluster = Cluster(shutdown_at_exit=True)
    try:
        head = cluster.add_node(
            num_cpus=0,
            temp_dir=temp_dir,
            include_dashboard=False,
            object_store_memory=150 * 1024**2,
            dashboard_agent_listen_port=None,  # a free port, not the default other Rays may hold
        )
        workers = [
            cluster.add_node(num_cpus=1, temp_dir=temp_dir, object_store_memory=150 * 1024**2)
            for _ in range(2)
        ]
        cluster.wait_for_nodes()
        ray.init(
            address=cluster.address,
            log_to_driver=True,
            # workers import this module to unpickle the probe callback
            runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},
        )
        yield head.node_id, [w.node_id for w in workers]
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_train_workers_on_two_nodes_share_one_bank_actor(three_nodes, tmp_path):
    head_node, worker_nodes = three_nodes
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert alive == {head_node, *worker_nodes}
    assert ray.cluster_resources().get("CPU") == 2.0  # the head offers none

    cfg = load_config(
        "experiments/synthetic.yaml",
        [
            *TINY,
            "train.num_workers=2",
            "train.cpus_per_worker=1",
            "bank.mode=actor",
            "train.max_failures=0",  # fail at once instead of restarting the worker group
            "name=multinode",
            f"storage_path={tmp_path / 'runs'}",
        ],
    )
    records_path = tmp_path / "probe.jsonl"
    probe = PlacementProbe(str(records_path), bank_actor_name(cfg.name), cfg.train.num_workers)
    with _deadline(TRAIN_TIMEOUT_S):
        summary = run_training(cfg, callbacks=[probe])

    assert summary["iterations"] == 4 and summary["bank"]["mode"] == "actor"
    assert summary["bank"]["bank_replicas_identical"] is True
    assert summary["bank"]["bank_matches_actor"] is True
    records = [json.loads(line) for line in records_path.read_text().splitlines()]
    assert [r["iteration"] for r in records] == [2, 4]  # train.eval_every=2
    for record in records:
        # Checked at every evaluation on every rank: all replicas equal each other and the actor.
        assert len(record["ranks"]) == 2
        assert all(r["bank_replicas_identical"] is True for r in record["ranks"]), record
        assert all(r["bank_matches_actor"] is True for r in record["ranks"]), record
        # One Train worker on each worker node (none on the CPU-less head) ...
        (bundle_nodes,) = record["worker_groups"]
        assert sorted(bundle_nodes) == sorted(worker_nodes)
        # ... and the bank actor (num_cpus=0) on a node of the cluster, remote to at least one of them.
        assert record["actor_node"] in {head_node, *worker_nodes}
        assert any(node != record["actor_node"] for node in bundle_nodes)
    run_dir = Path(summary["run_dir"])
    assert any(p.is_dir() for p in run_dir.glob("checkpoint_*"))
