import math

import pytest
import torch
import torch.nn.functional as F

from raycontrast.config import ContrastConfig
from raycontrast.contrast import BankRecords, MemoryBank, PixelContrastLoss, select_records
from raycontrast.contrast.health import (
    CLASS_METRICS,
    LOSS_STATS,
    bank_health,
    memory_loss_stats,
    pca_2d,
    sample_bank,
)


def _records(cls, kind, vec):
    return BankRecords(torch.tensor(cls), torch.tensor(kind), vec)


def _crafted_bank(size=4, seed=0):
    """3 classes, both kinds; class 2 never written; pixel/class 0 overflows (FIFO wrap-around).

    Returns the bank and, per (kind, class), the write number of every surviving entry (oldest first).
    """
    g = torch.Generator().manual_seed(seed)
    bank = MemoryBank(num_classes=3, dim=5, size=size)
    history = {(k, c): [] for k in range(2) for c in range(3)}
    plan = [
        ([0, 0, 1], [0, 0, 0]),
        ([0, 1, 1, 0], [0, 1, 0, 1]),
        ([], []),  # a step that enqueued nothing still counts as a write
        ([0, 0, 0], [0, 0, 0]),
        ([1], [1]),
    ]
    for w, (cls, kind) in enumerate(plan, start=1):
        vec = F.normalize(torch.randn(len(cls), 5, generator=g), dim=1)
        bank.write(_records(cls, kind, vec) if cls else BankRecords.empty(5))
        for c, k in zip(cls, kind):
            history[(k, c)].append(w)
    return bank, {q: h[-size:] for q, h in history.items()}


def _plain_geometry(bank, kind):
    """Centroid cosines from a plain loop over every filled entry (float64)."""
    entries = {c: bank.entries(kind, c).double() for c in range(bank.num_classes)}
    centre = {c: (e.mean(0) / e.mean(0).norm()) for c, e in entries.items() if len(e)}
    spread, nearest = {}, {}
    for c, e in entries.items():
        if not len(e):
            spread[c] = nearest[c] = math.nan
            continue
        spread[c] = sum(float(x @ centre[c] / x.norm()) for x in e) / len(e)
        others = [float(centre[c] @ centre[o]) for o in centre if o != c]
        nearest[c] = max(others) if others else math.nan
    return spread, nearest


def _same(a, b, tol=1e-5):
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=tol)


def test_bank_stamps_the_write_of_every_slot():
    bank, history = _crafted_bank()
    assert bank.writes == 5
    for (k, c), writes in history.items():
        n = len(writes)
        slots = (torch.arange(n) + (int(bank.ptr[k, c]) if n == bank.size else 0)) % bank.size
        assert bank.written[k, c, slots].tolist() == writes  # oldest first, like entries()
    bank.reset()
    assert bool((bank.written == -1).all())


def test_write_steps_travel_with_the_state_and_the_digest():
    bank, _ = _crafted_bank()
    copy = MemoryBank(3, 5, 4)
    copy.load_state_dict(bank.state_dict())
    assert copy.equal(bank) and copy.digest() == bank.digest()
    from raycontrast.bank._wire import pack_state, unpack_state

    packed = pack_state(bank)
    for value in packed.values():  # as arrays arrive from the object store: read-only
        if hasattr(value, "setflags"):
            value.setflags(write=False)
    wired = MemoryBank(3, 5, 4)
    wired.load_state_dict(unpack_state(packed))
    assert wired.equal(bank)
    # same vectors, written at other steps: other ages, so another digest
    shifted = MemoryBank(3, 5, 4)
    shifted.load_state_dict(bank.state_dict())
    shifted.written[shifted.written >= 0] -= 1
    assert torch.equal(shifted.data, bank.data) and shifted.digest() != bank.digest()


def test_a_state_saved_without_write_steps_loads_with_unknown_ages():
    bank, _ = _crafted_bank()
    old = {k: v for k, v in bank.state_dict().items() if k != "written"}
    loaded = MemoryBank(3, 5, 4)
    loaded.load_state_dict(old)
    health = bank_health(loaded)
    assert math.isnan(health["bank/pixel/age_mean"]) and math.isnan(health["bank/pixel/age_max/0"])
    assert health["bank/pixel/fill/0"] == 1.0  # everything else still measured
    loaded.write(_records([0], [0], F.normalize(torch.ones(1, 5), dim=1)))
    health = bank_health(loaded)
    assert health["bank/pixel/age_max/0"] == 0.0 and health["bank/pixel/age_mean/0"] == 0.0
    assert math.isnan(health["bank/pixel/age_mean/1"])


def test_health_values_match_plain_computations_on_a_crafted_bank():
    bank, history = _crafted_bank()
    names = ["road", "car", "sky"]
    loss_stats = {"bank/loss/positive_share": 0.5}
    health = bank_health(bank, names, max_entries=10_000, loss_stats=loss_stats)
    for k, kind in enumerate(("pixel", "region")):
        spread, nearest = _plain_geometry(bank, kind)
        for c, name in enumerate(names):
            writes = history[(k, c)]
            ages = [bank.writes - w for w in writes]
            assert health[f"bank/{kind}/fill/{name}"] == len(writes) / bank.size
            assert _same(
                health[f"bank/{kind}/age_mean/{name}"], sum(ages) / len(ages) if ages else math.nan
            )
            assert _same(health[f"bank/{kind}/age_max/{name}"], max(ages) if ages else math.nan)
            assert _same(health[f"bank/{kind}/spread/{name}"], spread[c])
            assert _same(health[f"bank/{kind}/nearest/{name}"], nearest[c])
        all_ages = [bank.writes - w for c in range(3) for w in history[(k, c)]]
        assert health[f"bank/{kind}/fill"] == len(all_ages) / (3 * bank.size)
        assert _same(health[f"bank/{kind}/age_mean"], sum(all_ages) / len(all_ages))
        assert health[f"bank/{kind}/age_max"] == max(all_ages)
        filled = [spread[c] for c in range(3) if history[(k, c)]]
        assert _same(health[f"bank/{kind}/spread"], sum(filled) / len(filled))
        assert _same(health[f"bank/{kind}/nearest"], max(v for v in nearest.values() if v == v))
    assert health["bank/loss/positive_share"] == 0.5
    assert math.isnan(health["bank/loss/positive_cos"])


def test_health_keys_are_the_same_for_an_empty_and_a_full_bank():
    empty = bank_health(MemoryBank(3, 5, 4), ["a", "b", "c"])
    full = bank_health(_crafted_bank()[0], ["a", "b", "c"])
    assert list(empty) == list(full)
    expected = {
        f"bank/{k}/{m}/{n}" for k in ("pixel", "region") for m in CLASS_METRICS for n in "abc"
    }
    expected |= {f"bank/{k}/{m}" for k in ("pixel", "region") for m in CLASS_METRICS}
    expected |= {f"bank/loss/{s}" for s in LOSS_STATS}
    assert set(full) == expected
    assert empty["bank/pixel/fill"] == 0.0 and math.isnan(empty["bank/pixel/spread/a"])
    with pytest.raises(ValueError, match="class_names has 2 names"):
        bank_health(MemoryBank(3, 5, 4), ["a", "b"])


def test_collapsed_and_separated_banks_read_as_such():
    # every class on one point: spread 1 and centroids identical (nearest 1) -- a collapse
    bank = MemoryBank(2, 4, 8, kinds=("pixel",))
    same = F.normalize(torch.ones(16, 4), dim=1)
    bank.write(_records([0] * 8 + [1] * 8, [0] * 16, same))
    health = bank_health(bank)
    assert health["bank/pixel/spread"] == pytest.approx(1.0)
    assert health["bank/pixel/nearest"] == pytest.approx(1.0)
    # orthogonal classes: centroids at cosine 0
    vec = torch.zeros(16, 4)
    vec[:8, 0], vec[8:, 1] = 1.0, 1.0
    bank.write(_records([0] * 8 + [1] * 8, [0] * 16, vec))
    assert bank_health(bank)["bank/pixel/nearest"] == pytest.approx(0.0)


def test_sample_is_deterministic_class_balanced_and_only_filled():
    g = torch.Generator().manual_seed(1)
    bank = MemoryBank(4, 6, 50, kinds=("pixel",))
    cls = torch.tensor([0] * 50 + [1] * 7 + [3] * 30)
    vec = torch.zeros(len(cls), 6)
    vec[:, 0] = 1.0 + torch.rand(len(cls), generator=g)  # never the zero of an unfilled slot
    bank.write(BankRecords(cls, torch.zeros_like(cls), vec))
    a, b = sample_bank(bank, max_entries=80, seed=3), sample_bank(bank, max_entries=80, seed=3)
    assert torch.equal(a.vec, b.vec) and torch.equal(a.cls, b.cls)
    assert torch.bincount(a.cls, minlength=4).tolist() == [20, 7, 0, 20]  # 80 // 4 per class
    assert bool((a.vec[:, 0] >= 1.0).all()) and bool((a.age == 0).all())
    c = sample_bank(bank, max_entries=80, seed=4)
    assert not torch.equal(a.vec, c.vec)
    rows = {tuple(v.tolist()) for v in vec}
    assert all(tuple(v.tolist()) in rows for v in a.vec)


def _plain_loss_stats(z, y, store, labels):
    """Per anchor: mean cosine to same-class entries, max cosine to other-class entries."""
    pos, neg = [], []
    for zi, yi in zip(z.double(), y.tolist()):
        s = store.double() @ zi
        if (labels == yi).any():
            pos.append(float(s[labels == yi].mean()))
        if (labels != yi).any():
            neg.append(float(s[labels != yi].max()))
    return sum(pos) / len(pos), sum(neg) / len(neg)


def test_memory_loss_stats_match_a_plain_computation():
    g = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(30, 8, generator=g), dim=1)
    y = torch.randint(0, 4, (30,), generator=g)  # class 3 has nothing in memory
    labels = torch.tensor([0] * 5 + [1] * 6 + [2] * 4)
    store = F.normalize(torch.randn(15, 8, generator=g), dim=1)
    blocks = [(0, 0, 5), (1, 5, 11), (2, 11, 15)]
    stats = memory_loss_stats(z, y, store, blocks, max_anchors=1000)
    pos, neg = _plain_loss_stats(z, y, store, labels)
    assert stats["bank/loss/positive_share"] == pytest.approx(float((y != 3).double().mean()))
    assert stats["bank/loss/positive_cos"] == pytest.approx(pos, abs=1e-6)
    assert stats["bank/loss/hardest_negative_cos"] == pytest.approx(neg, abs=1e-6)
    # a subset of evenly spaced anchors for the similarities; the share still counts every anchor
    few = memory_loss_stats(z, y, store, blocks, max_anchors=4)
    pick = [0, 10, 19, 29]
    pos, neg = _plain_loss_stats(z[pick], y[pick], store, labels)
    assert few["bank/loss/positive_cos"] == pytest.approx(pos, abs=1e-6)
    assert few["bank/loss/hardest_negative_cos"] == pytest.approx(neg, abs=1e-6)
    assert few["bank/loss/positive_share"] == stats["bank/loss/positive_share"]
    empty = memory_loss_stats(z, y, store, [], max_anchors=4)
    assert empty["bank/loss/positive_share"] == 0.0 and math.isnan(empty["bank/loss/positive_cos"])


def test_loss_stats_are_only_computed_when_asked_and_change_nothing():
    cfg = ContrastConfig(warmup_iters=0, max_views=4, max_samples=64, memory="both", memory_size=16)
    crit = PixelContrastLoss(cfg)
    g = torch.Generator().manual_seed(0)
    embed = F.normalize(torch.randn(2, 8, 8, 8, generator=g), dim=1)
    labels = torch.randint(0, 3, (2, 8, 8), generator=g)
    logits = torch.randn(2, 3, 8, 8, generator=g)
    bank = MemoryBank(3, 8, 16, kinds=crit.kinds)
    bank.write(select_records(embed, labels, 3, kinds=crit.kinds))
    outs, states = [], []
    for stats in (False, True):
        gen = torch.Generator().manual_seed(5)
        outs.append(crit(embed, labels, logits, 0, bank=bank, generator=gen, stats=stats))
        states.append(gen.get_state())
    plain, asked = outs
    assert plain.stats == {}
    assert torch.equal(plain.loss, asked.loss) and torch.equal(states[0], states[1])
    assert set(asked.stats) == {f"bank/loss/{s}" for s in LOSS_STATS}
    assert asked.stats["bank/loss/positive_share"] == 1.0  # every class of the batch is in memory
    assert -1.0 <= asked.stats["bank/loss/hardest_negative_cos"] <= 1.0


def test_pca_2d_projects_on_the_two_widest_directions():
    g = torch.Generator().manual_seed(0)
    coords = torch.randn(200, 2, generator=g) * torch.tensor([5.0, 2.0])
    basis = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))[0][:, :2]
    x = coords.double() @ basis.T + 0.01 * torch.randn(200, 6, generator=g, dtype=torch.float64)
    xy = pca_2d(x.float())
    centred = x - x.mean(0)
    cov = centred.T @ centred
    _, eigvec = torch.linalg.eigh(cov)  # ascending
    for axis in range(2):
        ref = centred @ eigvec[:, -1 - axis]
        got = xy[:, axis].double()
        assert torch.allclose(got.abs(), ref.abs(), atol=1e-3)
    assert torch.equal(pca_2d(x.float()), xy)  # deterministic
    assert pca_2d(torch.ones(1, 6)).shape == (1, 2)
