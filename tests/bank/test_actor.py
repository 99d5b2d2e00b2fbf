"""The bank actors (object-store data plane, class shards) with simulated ranks (threads)."""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from raycontrast.bank import assemble_bank, create_bank_actor, make_bank_sync
from raycontrast.bank.actor import (
    NAMESPACE,
    object_store_usage,
    shard_actor_name,
    shard_snapshot_uri,
)
from raycontrast.bank.sync import ActorSync
from raycontrast.contrast import BankRecords, MemoryBank
from tests.bank.restart import kill_and_wait_restart

pytestmark = pytest.mark.ray

C = 5
SPEC = {"num_classes": C, "dim": 8, "size": 6, "kinds": ("pixel", "region"), "dtype": torch.float16}


def records_for(rank: int, step: int, n: int = 7, dim: int = 8) -> BankRecords:
    g = torch.Generator().manual_seed(1000 * step + rank)
    vec = torch.randn(n, dim, generator=g).to(torch.float16)
    vec[:, 0] = rank  # trace the writer
    return BankRecords(
        torch.randint(0, C, (n,), generator=g), torch.randint(0, 2, (n,), generator=g), vec
    )


def plain_bank(steps, world=2, spec=SPEC) -> MemoryBank:
    """The reference: one bank written once per step with every rank's records in rank order."""
    bank = MemoryBank(**spec)
    for step in steps:
        bank.write(BankRecords.cat([records_for(r, step) for r in range(world)]))
    return bank


def ray_get(ref):
    import ray

    return ray.get(ref, timeout=60)


def shard_handles(head):
    import ray

    names = ray_get(head.describe.remote())["peers"]
    return [head, *(ray.get_actor(n, namespace=NAMESPACE) for n in names)]


def whole_bank(head, spec=SPEC) -> MemoryBank:
    """The authoritative bank, assembled from every shard's state."""
    return assemble_bank(spec, ray_get([h.state.remote() for h in shard_handles(head)]))


def run_steps(syncs, steps, start=0):
    with ThreadPoolExecutor(len(syncs)) as pool:
        for step in range(start, start + steps):
            list(
                pool.map(lambda s, t=step: s[1].exchange(t, records_for(s[0], t)), enumerate(syncs))
            )


def start_all(syncs, state=None, version=0):
    """Start rank 0 first: in training a barrier orders rank 0's actor reset before the others."""
    for s in syncs:
        s.start(None if state is None else dict(state), version)


def make_syncs(head, world=2, overlap=False, spec=SPEC):
    syncs = [
        ActorSync(MemoryBank(**spec), head, r, overlap=overlap, timeout_s=60) for r in range(world)
    ]
    start_all(syncs)
    return syncs


@pytest.mark.parametrize(("shards", "overlap"), [(1, False), (1, True), (2, False)])
def test_replicas_equal_the_actors_and_one_plain_bank(ray_session, shards, overlap):
    head = create_bank_actor(f"t-plane-{shards}-{overlap}", SPEC, 2, None, shards=shards)
    syncs = make_syncs(head, overlap=overlap)
    assert len(syncs[0].shards) == shards
    run_steps(syncs, 7)
    if overlap:  # the replica is one step behind until flushed
        assert syncs[0].version == 6
        for s in syncs:
            s.flush()
    truth = whole_bank(head)
    assert all(s.replica.equal(truth) and s.version == 7 for s in syncs)
    assert truth.equal(plain_bank(range(7)))
    assert set(truth.features()[0][:, 0].float().tolist()) == {0.0, 1.0}
    assert syncs[0].actor_digest()["digest"] == truth.digest()
    assert all(s.full_syncs == 0 and s.split_writes == 0 for s in syncs)
    # the whole bank's digest (shard 0 assembles it) equals one plain bank's: one actor's
    assert ray_get(head.digest.remote())["digest"] == plain_bank(range(7)).digest()


def test_traffic_is_proportional_to_records_not_bank_size(ray_session):
    traffic = {}
    for size in (6, 600):
        spec = dict(SPEC, size=size)
        head = create_bank_actor(f"t-traffic-{size}", spec, 2, None)
        syncs = make_syncs(head, spec=spec)
        run_steps(syncs, 4)
        traffic[size] = syncs[0].traffic()["bytes_per_step"]
    assert traffic[6] == traffic[600] > 0


@pytest.mark.parametrize("shards", [1, 2])
def test_restarted_actor_reloads_its_snapshot_and_replicas_resync(ray_session, tmp_path, shards):
    """Kill shard 0 (one actor) or shard 1 of 2 mid-run: it reloads its snapshot, each worker
    resyncs that shard's classes in full once, the other shards keep their deltas."""
    import ray

    snap = str(tmp_path / "bank" / "snapshot.pt")
    head = create_bank_actor(f"t-restart-{shards}", SPEC, 2, snap, shards=shards)
    syncs = make_syncs(head)
    run_steps(syncs, 3)
    assert ray_get(head.snapshot.remote()) and all(
        (tmp_path / "bank").joinpath(shard_snapshot_uri("snapshot.pt", s, shards)).exists()
        for s in range(shards)
    )
    run_steps(syncs, 2, start=3)
    victim = 0 if shards == 1 else 1
    kill_and_wait_restart(ray.get_actor(shard_actor_name(f"t-restart-{shards}", victim), NAMESPACE))
    run_steps(syncs, 3, start=5)
    infos = [ray_get(h.describe.remote()) for h in shard_handles(head)]
    assert infos[victim]["restored_from"]["version"] == 3
    assert not any(i["recovering"] for i in infos)  # back to per-step rank-ordered writes
    truth = whole_bank(head)
    assert all(s.replica.equal(truth) for s in syncs)
    assert [s.full_syncs for s in syncs] == [1, 1]  # only the restarted shard, once
    assert syncs[0].actor_digest()["digest"] == truth.digest()
    # the restarted shard's classes lost steps 3-4 (after its snapshot); the others kept them
    lost_classes = set(infos[victim]["classes"])
    held = {tuple(v.tolist()) for v in truth.features()[0].float()}
    for r in range(2):
        rec = records_for(r, 4)
        for c, v in zip(rec.cls.tolist(), rec.vec.float()):
            kept = tuple(v.tolist()) in held
            if c in lost_classes:
                assert not kept
    last = BankRecords.cat([records_for(r, 7) for r in range(2)])
    assert {tuple(v.tolist()) for v in last.vec.float()} <= held
    if shards > 1:  # steps written after the restart were split by shard until answers agreed
        assert all(s.split_writes >= 1 for s in syncs)
        bank_of_others = MemoryBank(**SPEC)
        for step in range(8):
            bank_of_others.write(BankRecords.cat([records_for(r, step) for r in range(2)]))
        others = [c for c in range(C) if c not in lost_classes]
        assert torch.equal(truth.data[:, others], bank_of_others.data[:, others])


def test_worker_group_restart_loads_the_checkpoint_bank_into_every_shard(ray_session):
    head = create_bank_actor("t-resume", SPEC, 2, None, shards=2)
    syncs = make_syncs(head)
    run_steps(syncs, 4)
    saved = {
        k: v.clone() if torch.is_tensor(v) else v for k, v in syncs[0].replica.state_dict().items()
    }
    run_steps(syncs, 3, start=4)  # progress that a crash will lose
    fresh = [ActorSync(MemoryBank(**SPEC), head, r, timeout_s=60) for r in range(2)]
    start_all(fresh, saved, 4)
    run_steps(fresh, 2, start=4)
    truth = whole_bank(head)
    assert all(s.replica.equal(truth) and s.full_syncs == 0 for s in fresh)
    assert truth.equal(plain_bank(range(6)))


def _settled_usage(needed_at_most: int | None = None):
    """Object-store usage once Ray's batched frees have landed: the object count stops falling and,
    when given, pinned bytes are within ``needed_at_most`` (frees are asynchronous; a leak never
    gets there, so waiting cannot hide one)."""
    last = object_store_usage()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = object_store_usage()
        settled = now["objects"] >= last["objects"]
        if settled and (needed_at_most is None or now["needed_bytes"] <= needed_at_most):
            return now
        last = now
    return last


def test_object_references_are_released(ray_session):
    """A long run does not grow the object store: log entries are trimmed, batches freed."""
    spec = dict(SPEC, dim=2048, dtype=torch.float32, size=4)
    head = create_bank_actor("t-release", spec, 2, None, shards=2)
    syncs = make_syncs(head, spec=spec, overlap=True)
    base = _settled_usage()

    def run(start, steps):
        with ThreadPoolExecutor(2) as pool:
            for step in range(start, start + steps):
                list(
                    pool.map(
                        lambda r, t=step: syncs[r].exchange(t, records_for(r, t, n=40, dim=2048)),
                        range(2),
                    )
                )

    run(0, 10)
    early = _settled_usage()
    run(10, 40)
    late = _settled_usage(needed_at_most=early["needed_bytes"] + 2 * 1024**2)
    infos = [ray_get(h.describe.remote()) for h in shard_handles(head)]
    assert all(i["log_entries"] <= 2 for i in infos)
    # a leak would add 40 steps x 2 batches (40 records of dim 2048, 165 KB each in the store): 80
    # objects, 13 MB; what is in flight (and freed but not yet evicted) when measured varies
    assert late["needed_bytes"] <= early["needed_bytes"] + 2 * 1024**2, (early, late)
    assert late["objects"] <= early["objects"] + 40, (early, late)
    for s in syncs:
        s.flush()
    # each shard keeps the last step until the next exchange acknowledges it; a new worker group
    # (load) drops every retained reference
    ray_get([h.load.remote(None, 0) for h in shard_handles(head)])
    syncs.clear()
    end = _settled_usage(needed_at_most=base["needed_bytes"] + 1024**2)
    assert end["needed_bytes"] <= base["needed_bytes"] + 1024**2, (base, end)


def test_bad_shard_counts_and_arguments_are_clear_errors():
    from raycontrast.bank import shard_classes

    assert shard_classes(5, 2, 1) == [1, 3]
    with pytest.raises(ValueError, match=r"bank\.shards must be between 1 and the class count 5"):
        shard_classes(5, 6, 0)
    with pytest.raises(ValueError, match="actor handle"):
        make_bank_sync("actor", MemoryBank(**SPEC))
    with pytest.raises(ValueError, match=r"bank\.mode"):
        make_bank_sync("ring", MemoryBank(**SPEC))
    assert shard_snapshot_uri("s3://b/run/bank/snapshot.pt", 1, 4) == (
        "s3://b/run/bank/snapshot.shard-1-of-4.pt"
    )
    assert shard_snapshot_uri("/x/snapshot.pt", 0, 1) == "/x/snapshot.pt"


def test_shard_parts_assemble_to_the_bank():
    from raycontrast.bank._wire import pack_state, select_classes, take_classes

    bank = plain_bank(range(5))
    parts = [
        {"classes": cls, "state": take_classes(pack_state(bank), cls), "version": 5}
        for cls in ([0, 3], [1, 4], [2])
    ]
    assert assemble_bank(SPEC, parts).equal(bank)
    with pytest.raises(ValueError, match="every class exactly once"):
        assemble_bank(SPEC, parts[:2])
    from raycontrast.bank._wire import pack_records

    packed = pack_records(records_for(0, 0))
    mine = select_classes(packed, [1, 3], C)
    keep = (records_for(0, 0).cls == 1) | (records_for(0, 0).cls == 3)
    assert mine["cls"].tolist() == [{1: 0, 3: 1}[c] for c in records_for(0, 0).cls[keep].tolist()]
    assert (mine["vec"] == packed["vec"][keep.numpy()]).all()
