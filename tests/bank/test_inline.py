"""The by-value bank actor (the scaling benchmark's baseline) with simulated ranks (threads)."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from raycontrast.bank._inline import InlineActorSync as ActorSync
from raycontrast.bank._inline import create_inline_bank_actor
from raycontrast.bank._wire import unpack_state
from raycontrast.contrast import BankRecords, MemoryBank
from tests.bank.restart import kill_and_wait_restart

pytestmark = pytest.mark.ray

SPEC = {"num_classes": 4, "dim": 8, "size": 6, "kinds": ("pixel", "region"), "dtype": torch.float16}


def records_for(rank: int, step: int, n: int = 5) -> BankRecords:
    g = torch.Generator().manual_seed(1000 * step + rank)
    vec = torch.randn(n, 8, generator=g).to(torch.float16)
    vec[:, 0] = rank  # trace the writer
    return BankRecords(
        torch.randint(0, 4, (n,), generator=g), torch.randint(0, 2, (n,), generator=g), vec
    )


def actor_bank(actor) -> MemoryBank:
    bank = MemoryBank(**SPEC)
    bank.load_state_dict(unpack_state(ray_get(actor.state.remote())["state"]))
    return bank


def ray_get(ref):
    import ray

    return ray.get(ref, timeout=60)


def run_steps(syncs, steps, start=0):
    with ThreadPoolExecutor(len(syncs)) as pool:
        for step in range(start, start + steps):
            list(
                pool.map(lambda s, t=step: s[1].exchange(t, records_for(s[0], t)), enumerate(syncs))
            )


def start_all(syncs, state=None, version=0):
    """Start rank 0 first: in training a barrier orders rank 0's actor reset before the others."""
    for s in syncs:
        s.start(
            None
            if state is None
            else {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()},
            version,
        )


def make_syncs(actor, world=2, overlap=False, spec=SPEC):
    syncs = [
        ActorSync(MemoryBank(**spec), actor, r, overlap=overlap, timeout_s=60) for r in range(world)
    ]
    start_all(syncs)
    return syncs


@pytest.mark.parametrize("overlap", [True])
def test_replicas_equal_the_actor_and_hold_every_rank(ray_session, overlap):
    actor = create_inline_bank_actor(f"t-inline-replicas-{overlap}", SPEC, world_size=2)
    syncs = make_syncs(actor, overlap=overlap)
    run_steps(syncs, 7)
    if overlap:  # the replica is one step behind until flushed
        assert syncs[0].version == 6
        for s in syncs:
            s.flush()
    truth = actor_bank(actor)
    assert all(s.replica.equal(truth) and s.version == 7 for s in syncs)
    writers = set(truth.features()[0][:, 0].float().tolist())
    assert writers == {0.0, 1.0}
    # the actor applied records in rank order per step: same as writing them locally in that order
    local = MemoryBank(**SPEC)
    for step in range(7):
        local.write(BankRecords.cat([records_for(r, step) for r in range(2)]))
    assert local.equal(truth)


def test_restarted_actor_reloads_its_snapshot_and_replicas_resync(ray_session, tmp_path):

    snap = str(tmp_path / "bank" / "snapshot.pt")
    actor = create_inline_bank_actor("t-inline-restart", SPEC, world_size=2, snapshot_uri=snap)
    syncs = make_syncs(actor)
    run_steps(syncs, 3)
    ray_get(actor.snapshot.remote())
    run_steps(syncs, 2, start=3)
    kill_and_wait_restart(actor)
    run_steps(syncs, 2, start=5)
    info = ray_get(actor.describe.remote())
    assert info["restored_from"]["version"] == 3
    truth = actor_bank(actor)
    assert all(s.replica.equal(truth) for s in syncs)
    assert [s.full_syncs for s in syncs] == [1, 1]
    assert not info["recovering"]  # back to per-step rank-ordered writes
    # the restored bank holds the snapshot (steps 0-2), not steps 3-4, and the last step of both ranks
    at_snapshot = MemoryBank(**SPEC)
    for step in range(3):
        at_snapshot.write(BankRecords.cat([records_for(r, step) for r in range(2)]))
    last = BankRecords.cat([records_for(r, 6) for r in range(2)])
    held = {tuple(v.tolist()) for v in truth.features()[0].float()}
    assert {tuple(v.tolist()) for v in last.vec.float()} <= held
    lost = BankRecords.cat([records_for(r, 4) for r in range(2)])
    assert not {tuple(v.tolist()) for v in lost.vec.float()} & held
    assert at_snapshot.writes == 3
