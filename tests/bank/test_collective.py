"""The collective data plane with the actor as authority, ranks simulated by threads (ThreadGroup)."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from raycontrast.bank import create_bank_actor
from raycontrast.bank.actor import NAMESPACE, shard_actor_name
from raycontrast.bank.collective import CollectiveSync
from raycontrast.bank.groups import ThreadGroup
from raycontrast.contrast import MemoryBank
from tests.bank.restart import kill_and_wait_restart
from tests.bank.test_actor import SPEC, plain_bank, ray_get, records_for, whole_bank

pytestmark = pytest.mark.ray


def make_syncs(head, world=2, state=None, version=0, max_in_flight=8):
    group = ThreadGroup(world)
    syncs = [
        CollectiveSync(
            MemoryBank(**SPEC),
            head,
            r,
            timeout_s=60,
            max_in_flight=max_in_flight,
            group=group.rank_view(r),
        )
        for r in range(world)
    ]
    # rank 0 first: in training a barrier orders rank 0's adopt before the others read the actors
    for s in syncs:
        s.start(None if state is None else dict(state), version)
    return syncs


def on_all(syncs, fn):
    """Run ``fn(rank, sync)`` on every rank at once (the collectives need every rank)."""
    with ThreadPoolExecutor(len(syncs)) as pool:
        return list(pool.map(lambda a: fn(*a), enumerate(syncs)))


def run_steps(syncs, steps, start=0):
    def ranks(rank, sync):
        for step in range(start, start + steps):
            sync.exchange(step, records_for(rank, step))

    on_all(syncs, ranks)


def flush(syncs):
    on_all(syncs, lambda r, s: s.flush())


@pytest.mark.parametrize("shards", [1, 2])
def test_replicas_and_the_authority_hold_the_same_bank(ray_session, shards):
    head = create_bank_actor(f"t-coll-{shards}", SPEC, 2, None, shards=shards)
    syncs = make_syncs(head, max_in_flight=2)
    run_steps(syncs, 7)
    expected = plain_bank(range(7))
    assert all(s.replica.equal(expected) and s.version == 7 for s in syncs)  # before any flush
    flush(syncs)
    truth = whole_bank(head)
    assert truth.equal(expected), ray_get(head.describe.remote())
    assert syncs[0].actor_digest()["digest"] == syncs[1].replica.digest() == expected.digest()
    t = syncs[0].traffic()
    assert t["data_plane"] == "collective" and t["resyncs"] == 0
    # bounded: the limit (2 steps of S calls) plus one step's calls
    assert t["max_in_flight_seen"] <= 2 * shards + shards
    assert t["actor_bytes_sent_per_step"] > 0
    stats = ray_get(head.describe.remote())["stats"]
    assert stats["contributions"] == 14 and stats["stale_contributions"] == 0


@pytest.mark.parametrize("shards", [1, 2])
def test_actor_restart_is_resynced_from_the_replicas(ray_session, tmp_path, shards):
    """Kill a shard mid-run: it reloads an older snapshot; the workers notice (stale answers),
    load their replica into it, and the authority again equals the replicas, every step kept."""
    import ray

    name = f"t-coll-restart-{shards}"
    head = create_bank_actor(name, SPEC, 2, str(tmp_path / "snapshot.pt"), shards=shards)
    syncs = make_syncs(head)
    run_steps(syncs, 3)
    flush(syncs)
    assert syncs[0].snapshot()
    run_steps(syncs, 2, start=3)
    victim = shards - 1
    kill_and_wait_restart(ray.get_actor(shard_actor_name(name, victim), NAMESPACE))
    run_steps(syncs, 3, start=5)
    flush(syncs)
    expected = plain_bank(range(8))
    assert all(s.replica.equal(expected) for s in syncs)
    assert whole_bank(head).equal(expected)  # nothing lost: the replicas had every step
    assert syncs[1].actor_digest()["digest"] == expected.digest()
    assert all(s.resyncs == 1 for s in syncs)
    info = ray_get(ray.get_actor(shard_actor_name(name, victim), NAMESPACE).describe.remote())
    assert info["restored_from"]["version"] == 3 and info["stats"]["stale_contributions"] > 0


def test_worker_group_restart_drops_the_old_groups_calls(ray_session):
    head = create_bank_actor("t-coll-resume", SPEC, 2, None, shards=2)
    syncs = make_syncs(head)
    run_steps(syncs, 4)
    flush(syncs)
    saved = {
        k: v.clone() if torch.is_tensor(v) else v for k, v in syncs[0].replica.state_dict().items()
    }
    run_steps(syncs, 3, start=4)  # progress that a crash loses (calls possibly still in flight)
    fresh = make_syncs(head, state=saved, version=4)
    run_steps(fresh, 2, start=4)
    flush(fresh)
    expected = plain_bank(range(6))
    assert all(s.replica.equal(expected) and s.resyncs == 0 for s in fresh)
    assert whole_bank(head).equal(expected)


def test_bad_in_flight_bound_is_refused(ray_session):
    head = create_bank_actor("t-coll-bad", SPEC, 2, None)
    with pytest.raises(ValueError, match="max_in_flight"):
        CollectiveSync(MemoryBank(**SPEC), head, 0, max_in_flight=0)


def test_the_hand_off_to_the_actor_is_off_the_critical_path(ray_session, monkeypatch):
    """``exchange`` returns while the hand-off (pack, put, calls) is still blocked on the sender
    thread; ``flush`` waits for it, and the authority then equals the replicas."""
    import threading

    from raycontrast.bank import collective

    release = threading.Event()
    real_pack = collective.pack_records

    def slow_pack(records):
        assert release.wait(60)
        return real_pack(records)

    monkeypatch.setattr(collective, "pack_records", slow_pack)
    head = create_bank_actor("t-coll-async", SPEC, 2, None)
    syncs = make_syncs(head)
    run_steps(syncs, 3)  # would hang here if the hand-off were on the training thread
    assert all(s.version == 3 and len(s._sending) == 3 for s in syncs)
    assert ray_get(head.describe.remote())["stats"]["contributions"] == 0
    release.set()
    flush(syncs)
    assert whole_bank(head).equal(plain_bank(range(3)))
    assert all(not s._sending and not s._in_flight for s in syncs)


def test_a_failed_hand_off_raises_on_the_training_thread(ray_session, monkeypatch):
    from raycontrast.bank import collective

    def broken_pack(records):
        raise RuntimeError("object store full")

    head = create_bank_actor("t-coll-fail", SPEC, 2, None)
    syncs = make_syncs(head)
    monkeypatch.setattr(collective, "pack_records", broken_pack)
    run_steps(syncs, 1)
    with pytest.raises(RuntimeError, match="object store full"):
        flush(syncs)
