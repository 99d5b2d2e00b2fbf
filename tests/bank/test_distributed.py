"""Two real Ray Train workers (gloo) sharing the bank: actor vs all_gather vs the actor's own bank."""

import pytest
import torch

from raycontrast.bank import create_bank_actor, make_bank_sync, pack_state
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
STEPS = 6


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


def _worker(config):
    import ray
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    actor = ray.get_actor(config["actor"], namespace=NAMESPACE)
    syncs = {
        "actor": make_bank_sync("actor", MemoryBank(**SPEC), rank=rank, actor=actor, timeout_s=60),
        "allgather": make_bank_sync("allgather", MemoryBank(**SPEC), rank=rank),
    }
    for sync in syncs.values():
        sync.start(None, 0)
    for step in range(STEPS):
        for sync in syncs.values():
            sync.exchange(step, _records(rank, step))
    for sync in syncs.values():
        sync.flush()
    return {name: pack_state(s.replica) for name, s in syncs.items()}


def test_replicas_equal_the_actor_and_allgather_builds_the_same_bank(ray_session, tmp_path):
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from raycontrast.bank import unpack_state

    actor = create_bank_actor("t-dist", SPEC, world_size=2, snapshot_uri=None)
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"actor": "raycontrast-bank:t-dist"},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        run_config=RunConfig(name="t-dist", storage_path=str(tmp_path)),
        torch_config=TorchConfig(backend="gloo", timeout_s=120),
    )
    rank0 = trainer.fit().return_value
    truth = MemoryBank(**SPEC)
    truth.load_state_dict(unpack_state(ray.get(actor.state.remote())["state"]))
    for name in ("actor", "allgather"):
        bank = MemoryBank(**SPEC)
        bank.load_state_dict(unpack_state(rank0[name]))
        assert bank.equal(truth), name
    writers = set(truth.features()[0][:, 0].float().tolist())
    assert writers == {1.0, 11.0}  # both workers' records are in the bank
    expected = MemoryBank(**SPEC)
    for step in range(STEPS):
        expected.write(BankRecords.cat([_records(r, step) for r in range(2)]))
    assert expected.equal(truth)
