"""Real Ray Train workers (gloo) sharing the bank: the object-store data plane (one actor, two
shards), the collective data plane (two shards) and all_gather build the authoritative bank; a worker dies and the group restarts from a checkpoint."""

import os
import signal
import tempfile
import time

import pytest
import torch

from raycontrast.bank import assemble_bank, create_bank_actor, make_bank_sync
from raycontrast.bank._wire import pack_state
from raycontrast.bank.actor import NAMESPACE
from raycontrast.contrast import BankRecords, MemoryBank

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SPEC = {
    "num_classes": 5,
    "dim": 6,
    "size": 9,
    "kinds": ("pixel", "region"),
    "dtype": torch.bfloat16,
}
STEPS = 8


def _records(rank, step):
    g = torch.Generator().manual_seed(97 * step + rank)
    n = 3 + rank + step % 3  # ranks write different amounts
    vec = torch.randn(n, 6, generator=g)
    vec[:, 0] = 10 * rank + 1  # trace the writer
    return BankRecords(
        torch.randint(0, 5, (n,), generator=g),
        torch.randint(0, 2, (n,), generator=g),
        vec.bfloat16(),
    )


def _expected(steps) -> MemoryBank:
    bank = MemoryBank(**SPEC)
    for step in steps:
        bank.write(BankRecords.cat([_records(r, step) for r in range(2)]))
    return bank


def _authoritative(head) -> MemoryBank:
    import ray

    names = ray.get(head.describe.remote())["peers"]
    shards = [head, *(ray.get_actor(n, namespace=NAMESPACE) for n in names)]
    return assemble_bank(SPEC, ray.get([s.state.remote() for s in shards]))


def _trainer(fn, name, config, tmp_path, max_failures=0):
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    return TorchTrainer(
        fn,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        run_config=RunConfig(
            name=name,
            storage_path=str(tmp_path),
            failure_config=FailureConfig(max_failures=max_failures),
        ),
        torch_config=TorchConfig(backend="gloo", timeout_s=120),
    )


def _worker(config):
    import ray
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    syncs = {
        name: make_bank_sync(
            "actor",
            MemoryBank(**SPEC),
            rank=rank,
            actor=ray.get_actor(actor, namespace=NAMESPACE),
            timeout_s=60,
            data_plane="collective" if name == "collective" else "object_store",
            max_in_flight=2,
        )
        for name, actor in config["actors"].items()
    }
    syncs["allgather"] = make_bank_sync("allgather", MemoryBank(**SPEC), rank=rank)
    for sync in syncs.values():
        sync.start(None, 0)
    for step in range(STEPS):
        for sync in syncs.values():
            sync.exchange(step, _records(rank, step))
    for sync in syncs.values():
        sync.flush()
    return {name: pack_state(s.replica) for name, s in syncs.items()}


def test_replicas_equal_the_actors_and_allgather_builds_the_same_bank(ray_session, tmp_path):
    from raycontrast.bank._wire import unpack_state

    heads = {
        "one_actor": create_bank_actor("t-dist-1", SPEC, 2, None),
        "two_shards": create_bank_actor("t-dist-2", SPEC, 2, None, shards=2),
        "collective": create_bank_actor("t-dist-c", SPEC, 2, None, shards=2),
    }
    config = {
        "actors": {
            "one_actor": "raycontrast-bank:t-dist-1",
            "two_shards": "raycontrast-bank:t-dist-2",
            "collective": "raycontrast-bank:t-dist-c",
        }
    }
    rank0 = _trainer(_worker, "t-dist", config, tmp_path).fit().return_value
    expected = _expected(range(STEPS))
    for name in ("one_actor", "two_shards", "collective", "allgather"):
        bank = MemoryBank(**SPEC)
        bank.load_state_dict(unpack_state(rank0[name]))
        assert bank.equal(expected), name
    for name, head in heads.items():
        assert _authoritative(head).equal(expected), name
    assert set(expected.features()[0][:, 0].float().tolist()) == {1.0, 11.0}


def _restarting_worker(config):
    import ray
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    head = ray.get_actor(config["actor"], namespace=NAMESPACE)
    sync = make_bank_sync("actor", MemoryBank(**SPEC), rank=rank, actor=head, timeout_s=60)
    state, start = None, 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            saved = torch.load(os.path.join(d, "bank.pt"), weights_only=True)
        state, start = saved["bank"], saved["step"]
    sync.start(state, start)
    for step in range(start, STEPS):
        marker = os.path.join(config["dir"], "killed")
        if step == 5 and rank == 1 and not os.path.exists(marker):
            open(marker, "w").close()
            time.sleep(2)  # Train's controller registers the step-3 checkpoint when it polls
            os.kill(os.getpid(), signal.SIGKILL)  # mid-run: rank 0 is waiting in step 5
        sync.exchange(step, _records(rank, step))
        if (step + 1) % 3 == 0:
            sync.flush()
            if rank == 0:
                with tempfile.TemporaryDirectory() as d:
                    torch.save(
                        {"bank": sync.replica.state_dict(), "step": step + 1},
                        os.path.join(d, "bank.pt"),
                    )
                    ray.train.report(
                        {"step": step + 1}, checkpoint=ray.train.Checkpoint.from_directory(d)
                    )
            else:
                ray.train.report({"step": step + 1}, checkpoint=None)
    sync.flush()
    return {"bank": pack_state(sync.replica), "start": start, "full_syncs": sync.full_syncs}


def test_a_worker_dies_and_the_group_restarts_from_the_checkpoint(ray_session, tmp_path):
    from raycontrast.bank._wire import unpack_state

    head = create_bank_actor("t-dist-restart", SPEC, 2, None, shards=2)
    config = {"actor": "raycontrast-bank:t-dist-restart", "dir": str(tmp_path)}
    out = _trainer(_restarting_worker, "t-dist-restart", config, tmp_path, 1).fit().return_value
    assert out["start"] == 3 and out["full_syncs"] == 0  # resumed at the checkpoint, deltas only
    bank = MemoryBank(**SPEC)
    bank.load_state_dict(unpack_state(out["bank"]))
    expected = _expected(range(STEPS))  # the checkpoint's steps 0-2, then 3-7 replayed once
    assert bank.equal(expected)
    assert _authoritative(head).equal(expected)
