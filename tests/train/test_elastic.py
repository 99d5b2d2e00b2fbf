"""Elastic training (``train.num_workers: [min, max]``): the config, the bank actor adopting each worker
group (its world size; the live bank kept, else the checkpoint's), fresh RNG streams for new ranks, a
worker killed mid-run, and a simulated multi-node cluster losing and regaining a node.

The sampler's world-size independence (no sample repeated or skipped across a resize) is tested in
test_units.py.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from raycontrast.config import ConfigError, load_config
from raycontrast.contrast import BankRecords, MemoryBank
from tests.conftest import release_session_instance
from tests.train.conftest import TINY, logged_iterations, read_rows, wait_for

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        (["train.num_workers=[1,2]"], None),
        (["train.num_workers=[2,2]"], None),
        (["train.num_workers=[1,4]", "train.batch_size=12"], None),
        (["train.num_workers=[1,3]"], r"not by 3; of \[1, 2, 3\] it divides by \[1, 2\].*multiple of 6"),
        (["train.num_workers=[2,1]"], r"\[min, max\] with 1 <= min <= max"),
        (["train.num_workers=[0,2]"], r"\[min, max\] with 1 <= min <= max"),
        (["train.num_workers=[1,2,3]"], r"\[min, max\]"),
        (["train.num_workers=3"], r"batch_size=8 must be divisible by train.num_workers=3"),
        (["train.num_workers=[1,x]"], r"train.num_workers must be int or list of int"),
    ],
)  # fmt: skip
def test_num_workers_range_is_validated_for_every_world_size(overrides, error):
    if error is None:
        cfg = load_config("experiments/synthetic.yaml", overrides)
        assert cfg.train.elastic and cfg.train.min_workers <= cfg.train.max_workers
        return
    with pytest.raises(ConfigError, match=error):
        load_config("experiments/synthetic.yaml", overrides)


def test_scaling_config_is_elastic_only_for_a_range():
    from raycontrast.train.launcher import scaling_config

    elastic = scaling_config(
        load_config(
            "experiments/synthetic.yaml",
            ["train.num_workers=[1,2]", "train.resize_interval_s=2", "train.cpus_per_worker=0.5"],
        )
    )
    assert elastic.elasticity_enabled and (elastic.min_workers, elastic.max_workers) == (1, 2)
    assert elastic.elastic_resize_monitor_interval_s == 2.0
    assert elastic.resources_per_worker == {"CPU": 0.5}
    for n in (0, 2):
        fixed = scaling_config(
            load_config("experiments/synthetic.yaml", [f"train.num_workers={n}"])
        )
        assert not fixed.elasticity_enabled and fixed.num_workers == n


# -------------------------------------------------------------------------------------- RNG streams


def test_ranks_absent_from_the_checkpoint_get_streams_of_their_own():
    """A run that grew: a rank in the checkpoint continues its saved streams; every rank absent from
    it gets fresh ones (global and sampling), different from each other, from the saved ones, from
    the run's initial ones and from those of other resume points (later resizes)."""
    from raycontrast.train._state import get_rng_state, seed_everything
    from raycontrast.train.loop import Trainer, _stream_seed

    def draws(rank: int, states: list, start: int) -> tuple[tuple[float, ...], ...]:
        trainer = SimpleNamespace(
            rank=rank,
            start=start,
            cfg=SimpleNamespace(train=SimpleNamespace(seed=0)),
            generator=torch.Generator().manual_seed(99),
        )
        Trainer._restore_rng(trainer, states)
        return tuple(torch.rand(4).tolist()), tuple(
            torch.rand(4, generator=trainer.generator).tolist()
        )

    saved_generator = torch.Generator().manual_seed(12345)
    torch.manual_seed(54321)
    saved = [get_rng_state(saved_generator)]
    expected = (
        tuple(torch.rand(4).tolist()),
        tuple(torch.rand(4, generator=saved_generator).tolist()),
    )
    assert draws(0, saved, 6) == expected  # the saved streams, continued
    seed_everything(0)  # the global stream every rank starts the run with
    global_streams = [tuple(torch.rand(4).tolist()), expected[0]]
    sampling_streams = [  # each rank's sampling stream at the start of the run
        tuple(torch.rand(4, generator=torch.Generator().manual_seed(_stream_seed(0, r))).tolist())
        for r in range(4)
    ]
    sampling_streams.append(expected[1])
    for rank in (1, 2, 3):
        for start in (5, 6, 7):
            fresh_global, fresh_sampling = draws(rank, saved, start)
            global_streams.append(fresh_global)
            sampling_streams.append(fresh_sampling)
    assert len(set(global_streams)) == len(global_streams) == 2 + 9
    assert len(set(sampling_streams)) == len(sampling_streams) == 5 + 9
    assert draws(2, saved, 6) == draws(2, saved, 6)  # deterministic


# ------------------------------------------------------------------------- the bank adopts a group

C = 5
SPEC = {"num_classes": C, "dim": 8, "size": 6, "kinds": ("pixel", "region"), "dtype": torch.float32}


def _records(rank: int, step: int, n: int = 7) -> BankRecords:
    g = torch.Generator().manual_seed(1000 * step + rank)
    return BankRecords(
        torch.randint(0, C, (n,), generator=g),
        torch.randint(0, 2, (n,), generator=g),
        torch.randn(n, SPEC["dim"], generator=g),
    )


def _plain_bank(steps: list[tuple[int, int]]) -> MemoryBank:
    """The reference: per step, every rank's records in rank order; ``steps``: (step, world)."""
    bank = MemoryBank(**SPEC)
    for step, world in steps:
        bank.write(BankRecords.cat([_records(r, step) for r in range(world)]))
    return bank


def _group(head, world: int, state, version: int, keep_live: bool = True):
    """A worker group of ``world`` simulated ranks (threads) started at ``version``."""
    from raycontrast.bank.sync import ActorSync

    syncs = [ActorSync(MemoryBank(**SPEC), head, r, timeout_s=60) for r in range(world)]
    for s in syncs:  # rank 0 first: in training a barrier orders its adopt before the others
        s.start(None if state is None else dict(state), version, world, keep_live)
    return syncs


def _steps(syncs, first: int, count: int) -> None:
    with ThreadPoolExecutor(len(syncs)) as pool:
        for step in range(first, first + count):
            list(
                pool.map(lambda r, t=step: syncs[r].exchange(t, _records(r, t)), range(len(syncs)))
            )


def _state(bank: MemoryBank) -> dict:
    return {k: v.clone() if torch.is_tensor(v) else v for k, v in bank.state_dict().items()}


def _authoritative(head) -> MemoryBank:
    import ray

    from raycontrast.bank import assemble_bank
    from raycontrast.bank.actor import NAMESPACE

    names = ray.get(head.describe.remote(), timeout=60)["peers"]
    shards = [head, *(ray.get_actor(n, namespace=NAMESPACE) for n in names)]
    return assemble_bank(SPEC, ray.get([s.state.remote() for s in shards], timeout=60))


@pytest.mark.ray
def test_bank_shards_adopt_each_worker_group_and_keep_the_live_bank(ray_session, tmp_path):
    import ray

    from raycontrast.bank import create_bank_actor
    from raycontrast.bank.actor import NAMESPACE, shard_actor_name, shard_snapshot_uri

    snapshot = str(tmp_path / "snapshot.pt")
    head = create_bank_actor("t-elastic", SPEC, 2, snapshot, shards=2)
    two = _group(head, 2, None, 0)
    _steps(two, 0, 4)
    checkpoint = _state(two[0].replica)  # the checkpoint at iteration 4 ...
    _steps(two, 4, 2)  # ... and two steps the group trains before it loses a worker

    # The group shrinks to one worker resuming at iteration 4: the actors hold version 6 >= 4, so
    # their bank is kept (with its six steps), its write steps shifted by 2 (ages unchanged).
    one = _group(head, 1, checkpoint, 4)
    assert [a["source"] for a in one[0].adopted] == ["live", "live"]
    assert [a["live_version"] for a in one[0].adopted] == [6, 6]
    kept = _plain_bank([(s, 2) for s in range(6)])
    truth = _authoritative(head)
    assert torch.equal(truth.data, kept.data) and torch.equal(truth.count, kept.count)
    shifted = torch.where(kept.written >= 0, (kept.written - 2).clamp(min=0), -1)
    assert torch.equal(truth.written, shifted) and bool((kept.written == 1).any())
    assert one[0].replica.equal(truth)
    described = ray.get(head.describe.remote(), timeout=60)
    assert described["world_size"] == 1 and described["version"] == 4
    for shard in range(2):  # a crash from now on reloads the adopted bank, not the old timeline's
        saved = torch.load(shard_snapshot_uri(snapshot, shard, 2), weights_only=True)
        assert saved["version"] == 4

    # One rank now completes a step alone (a world size of 2 would wait for rank 1 forever).
    _steps(one, 4, 2)
    expected = _plain_bank([*((s, 2) for s in range(6)), (4, 1), (5, 1)])
    assert torch.equal(_authoritative(head).data, expected.data)
    assert one[0].replica.equal(_authoritative(head))

    # Capacity returns: two workers resume from a checkpoint at 6; both shards are kept again.
    checkpoint = _state(one[0].replica)
    two = _group(head, 2, checkpoint, 6)
    assert [a["source"] for a in two[0].adopted] == ["live", "live"]
    _steps(two, 6, 1)
    truth = _authoritative(head)
    assert all(s.replica.equal(truth) for s in two)
    expected.write(BankRecords.cat([_records(r, 6) for r in range(2)]))
    assert torch.equal(truth.data, expected.data)

    # Shard 1 is restarted by Ray: it reloads its snapshot of version 6 (written when the group of
    # two adopted it), older than the checkpoint at 7, so that shard loads its classes from the
    # checkpoint; shard 0 keeps its live queues.
    shard1 = ray.get_actor(shard_actor_name("t-elastic", 1), namespace=NAMESPACE)
    ray.kill(shard1, no_restart=False)
    checkpoint = _state(two[0].replica)
    wait_for(lambda: _restored(shard1) == 6, 60, "shard 1 to restart from its snapshot")
    one = _group(head, 1, checkpoint, 7)
    assert [a["source"] for a in one[0].adopted] == ["live", "checkpoint"]
    assert one[0].replica.equal(_authoritative(head)) and one[0].replica.equal(two[0].replica)

    # keep_live=False restores the checkpoint exactly, whatever the actor holds.
    _steps(one, 7, 2)
    one = _group(head, 1, checkpoint, 7, keep_live=False)
    assert [a["source"] for a in one[0].adopted] == ["checkpoint", "checkpoint"]
    assert _authoritative(head).equal(two[0].replica)


def _restored(handle) -> int | None:
    """The snapshot version a (restarted) shard reloaded, ``None`` while it is down or original."""
    import ray

    try:
        restored = ray.get(handle.describe.remote(), timeout=10)["restored_from"]
    except Exception:  # restarting
        return None
    return restored.get("version") if restored else None


# ------------------------------------------------------------------ a simulated multi-node cluster


def _fast_autoscaling_coordinator(node_id: str):
    """Ray Train's elastic policy learns which nodes exist from Ray Data's AutoscalingCoordinator
    (one detached actor per cluster), which refreshes its view every 20 s. Created here first under
    its name, refreshing every second, it is the one Ray Train finds: a lost or added node is seen in
    about a second instead of up to 20 (the test's duration, not what it checks)."""
    import ray
    from ray.data._internal.cluster_autoscaler import default_autoscaling_coordinator as coordinator
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    class FastTicks(coordinator._AutoscalingCoordinatorActor):
        TICK_INTERVAL_S = 1

    handle = (
        ray.remote(num_cpus=0)(FastTicks)
        .options(
            name="AutoscalingCoordinator",
            namespace="AutoscalingCoordinator",
            lifetime="detached",
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        )
        .remote()
    )
    ray.get(handle.__ray_ready__.remote(), timeout=60)
    return handle


@pytest.fixture
def elastic_cluster(monkeypatch):
    """A head without CPUs and two 1-CPU worker nodes on 127.0.0.1 (see tests/cluster/test_multinode.py
    for why the patches); yields ``(cluster, head, [worker nodes], add_worker)``."""
    import ray
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    release_session_instance()  # ray_session starts it again when next needed
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    # a group start the cluster cannot place any more is retried after 20 s (default 60)
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "20")
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
    monkeypatch.setattr(ray._private.utils, "write_ray_address", lambda *a, **k: None)
    monkeypatch.setattr(ray._common.utils, "reset_ray_address", lambda *a, **k: None)
    temp_dir = f"/tmp/rce{secrets.token_hex(4)}"  # Ray's socket paths must stay short
    cluster = Cluster(shutdown_at_exit=True)

    def add_worker():
        return cluster.add_node(num_cpus=1, temp_dir=temp_dir, object_store_memory=150 * 1024**2)

    try:
        head = cluster.add_node(
            num_cpus=0,
            temp_dir=temp_dir,
            include_dashboard=False,
            object_store_memory=150 * 1024**2,
            dashboard_agent_listen_port=None,
            # a removed node is declared dead after ~1.5 s of failed health checks (default ~15 s)
            _system_config={"health_check_period_ms": 500, "health_check_failure_threshold": 3},
        )
        workers = [add_worker() for _ in range(2)]
        cluster.wait_for_nodes()
        ray.init(
            address=cluster.address,
            log_to_driver=True,
            runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},
        )
        _fast_autoscaling_coordinator(head.node_id)
        yield cluster, head, workers, add_worker
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.own_ray
def test_elastic_run_loses_a_worker_and_a_node_keeps_its_bank_and_grows_back(
    elastic_cluster, tmp_path
):
    """``train.num_workers=[1,2]`` on two 1-CPU nodes. After the first checkpoint one Train worker is
    killed (its node stays: the group restarts with two); after the next checkpoint the node of a Train
    worker is removed (the group restarts with one worker: the bank actor keeps its live bank); once
    that group has checkpointed, a node is added back and the group grows to two again. The run
    finishes with its summary, every iteration logged once."""
    import ray

    from raycontrast.bank import bank_actor_name
    from raycontrast.bank.actor import NAMESPACE
    from raycontrast.models import load_checkpoint
    from raycontrast.train import run_training
    from raycontrast.train._elastic import worker_groups
    from raycontrast.train.launcher import _registered_iteration

    cluster, _head, workers, add_worker = elastic_cluster
    iterations = 24
    cfg = load_config(
        "experiments/synthetic.yaml",
        [
            *TINY,
            "train.num_workers=[1,2]",
            "train.cpus_per_worker=1",
            "train.resize_interval_s=1",
            "train.max_failures=4",
            f"train.iterations={iterations}",
            "bank.mode=actor",
            "name=elastic",
            f"storage_path={tmp_path / 'runs'}",
        ],
    )
    run_dir = tmp_path / "runs" / "elastic"
    result: dict = {}
    errors: list[BaseException] = []

    def fit():
        try:
            result.update(run_training(cfg))
        except BaseException as err:  # surfaced by the main thread
            errors.append(err)

    t0 = time.monotonic()
    thread = threading.Thread(target=fit, daemon=True)
    thread.start()
    timings = {}

    def group_with(world: int, after: int) -> dict | None:
        """The first worker group after the ``after``-th with ``world`` workers that has
        checkpointed past its start (it trained), if any."""
        if errors:
            raise errors[0]
        groups = worker_groups(str(run_dir))
        done = _registered_iteration(str(run_dir)) or 0
        for group in groups[after:]:
            if group["world_size"] == world and done > group["start"]:
                return group
        return None

    # 1. two workers checkpoint, then one Train worker process is killed: the group restarts.
    wait_for(lambda: group_with(2, 0) is not None, 150, "two workers and a checkpoint")
    timings["two_workers_checkpointed"] = time.monotonic() - t0
    rank1 = json.loads((run_dir / "workers" / "rank-1.json").read_text())
    os.kill(rank1["pid"], signal.SIGKILL)
    wait_for(lambda: group_with(2, 1) is not None, 120, "the restarted group to checkpoint")
    timings["restarted_after_kill"] = time.monotonic() - t0

    # 2. the node of a Train worker (not the bank actor's) is removed: the run goes on with one.
    actor = ray.get_actor(bank_actor_name(cfg.name), namespace=NAMESPACE)
    actor_node = ray.get(actor.describe.remote(), timeout=60)["node_id"]
    victim = next(w for w in workers if w.node_id != actor_node)
    n_groups = len(worker_groups(str(run_dir)))
    cluster.remove_node(victim)
    wait_for(lambda: group_with(1, n_groups) is not None, 120, "one worker to checkpoint")
    timings["one_worker_checkpointed"] = time.monotonic() - t0

    # 3. capacity returns: a node is added and the group grows back to two workers.
    n_groups = len(worker_groups(str(run_dir)))
    add_worker()
    wait_for(lambda: group_with(2, n_groups) is not None, 120, "two workers again")
    timings["grew_back"] = time.monotonic() - t0
    thread.join(timeout=180)
    assert not thread.is_alive(), "the run did not finish"
    if errors:
        raise errors[0]
    timings["finished"] = time.monotonic() - t0
    print("elastic timings (s from the start of the run):", timings)

    summary = result
    assert summary["iterations"] == iterations and 0.0 <= summary["mIoU"] <= 1.0
    assert json.loads((run_dir / "summary.json").read_text())["iterations"] == iterations
    groups = summary["worker_groups"]
    worlds = [g["world_size"] for g in groups]
    print("worker groups:", [(g["start"], g["world_size"], g.get("bank")) for g in groups])
    first_one = worlds.index(1)
    assert worlds[:2] == [2, 2] and 2 in worlds[first_one:]  # 2, 2 (kill), 1 (node lost), 2 ...
    assert [g["start"] for g in groups] == sorted(g["start"] for g in groups)
    assert all(g["start"] > 0 for g in groups[1:])  # every restart resumed from a checkpoint
    for group in groups[1:]:
        # the bank actor (on a surviving node) kept its live bank, filled, at every restart
        (bank,) = group["bank"]
        assert bank["source"] == "live" and bank["live_version"] >= group["start"], group
        assert bank["entries"] > 0
    # Every iteration and evaluation logged once, none lost or repeated; the bank checks held.
    assert logged_iterations(run_dir) == list(range(1, iterations + 1))
    assert logged_iterations(run_dir, "val.csv") == list(range(2, iterations + 1, 2))
    assert summary["bank"]["bank_replicas_identical"] and summary["bank"]["bank_matches_actor"]
    state = load_checkpoint(summary["checkpoint"])
    assert state["iteration"] == iterations and len(state["rng"]) == worlds[-1]
    assert int(state["bank"]["count"].sum()) == int(read_rows(run_dir)[-1]["bank_entries"]) > 0
