import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from raycontrast.contrast import KINDS, BankRecords, MemoryBank, select_records
from raycontrast.contrast import memory as memory_mod


def _records(spec, dim, start_id):
    """Records whose vector's first coordinate is a unique id, so queue contents can be traced."""
    cls = torch.tensor([c for c, _ in spec], dtype=torch.long)
    kind = torch.tensor([k for _, k in spec], dtype=torch.long)
    vec = torch.zeros(len(spec), dim)
    vec[:, 0] = torch.arange(start_id, start_id + len(spec), dtype=torch.float32)
    return BankRecords(cls, kind, vec)


writes = st.lists(
    st.lists(st.tuples(st.integers(0, 2), st.integers(0, 1)), max_size=12), min_size=1, max_size=8
)


@settings(max_examples=80, deadline=None)
@given(writes, st.integers(1, 5))
def test_fifo_keeps_exactly_the_newest_entries_in_order(batches, size):
    bank = MemoryBank(num_classes=3, dim=2, size=size)
    history = {(k, c): [] for k in range(2) for c in range(3)}
    next_id = 0
    for spec in batches:
        rec = _records(spec, 2, next_id)
        for (c, k), ident in zip(spec, rec.vec[:, 0].tolist()):
            history[(k, c)].append(ident)
        next_id += len(spec)
        bank.write(rec)
    for (k, c), ids in history.items():
        expected = ids[-size:] if ids else []
        assert bank.entries(KINDS[k], c)[:, 0].tolist() == expected
        assert int(bank.count[k, c]) == min(len(ids), size)
    feats, _labels = bank.features()
    assert len(feats) == sum(min(len(v), size) for v in history.values())


def test_replicas_applying_the_same_records_are_bit_identical():
    g = torch.Generator().manual_seed(0)
    a = MemoryBank(4, 8, 7, dtype="bfloat16")
    b = MemoryBank(4, 8, 7, dtype="bfloat16")
    for _ in range(6):
        n = int(torch.randint(0, 20, (1,), generator=g))
        rec = BankRecords(
            torch.randint(0, 4, (n,), generator=g),
            torch.randint(0, 2, (n,), generator=g),
            torch.randn(n, 8, generator=g).to(torch.bfloat16),
        )
        a.write(rec)
        b.write(rec)
    assert a.equal(b)
    c = MemoryBank(4, 8, 7, dtype="bfloat16")
    c.load_state_dict(a.state_dict())
    assert c.equal(a) and c.writes == a.writes


def test_state_dict_of_another_shape_is_a_clear_error():
    with pytest.raises(ValueError, match="does not match"):
        MemoryBank(3, 4, 5).load_state_dict(MemoryBank(4, 4, 5).state_dict())


def test_reset_empties_and_memory_only_returns_filled_slots():
    bank = MemoryBank(3, 2, 4)
    bank.write(_records([(0, 0), (2, 1), (2, 1)], 2, 1))
    store, blocks = bank.memory()
    assert sorted((c, b - a) for c, a, b in blocks) == [(0, 1), (2, 2)]
    assert store.data_ptr() == bank.data.data_ptr()  # a view, not a copy
    _, region_only = bank.memory(["region"])
    assert [(c, b - a) for c, a, b in region_only] == [(2, 2)]
    bank.reset()
    assert bank.memory()[1] == [] and len(bank) == 0


def _scene():
    """Two images, 3 classes + ignore; embeddings encode their pixel position."""
    labels = torch.tensor(
        [
            [[0, 0, 1, 1], [0, 0, 1, 255], [2, 2, 2, 255]],
            [[1, 1, 1, 1], [1, 1, 255, 255], [0, 255, 255, 255]],
        ]
    )
    embed = F.normalize(torch.randn(2, 5, 3, 4, generator=torch.Generator().manual_seed(1)), dim=1)
    return embed, labels


@pytest.mark.parametrize("freq", [1, 2, 10])
def test_pixel_records_come_only_from_their_class(freq):
    embed, labels = _scene()
    rec = select_records(embed, labels, num_classes=3, pixel_update_freq=freq, kinds=["pixel"])
    flat = embed.permute(0, 2, 3, 1).reshape(-1, 5)
    flat_labels = labels.reshape(-1)
    expected = 0
    for b in range(2):
        for c in range(3):
            expected += min(int((labels[b] == c).sum()), freq)
    assert len(rec) == expected
    assert bool((rec.kind == 0).all())
    for cls, vec in zip(rec.cls.tolist(), rec.vec):
        match = (flat - vec).abs().sum(1) < 1e-6
        assert match.any() and set(flat_labels[match].tolist()) == {cls}
    assert 255 not in rec.cls.tolist()


@pytest.mark.parametrize("one_hot_max", [0, 32])  # scatter_add path and one-hot matmul path
def test_region_record_is_the_normalised_class_mean_and_class_zero_counts(monkeypatch, one_hot_max):
    monkeypatch.setattr(memory_mod, "_ONE_HOT_MAX_CLASSES", one_hot_max)
    embed, labels = _scene()
    rec = select_records(embed, labels, num_classes=3, kinds=["region"])
    assert rec.cls.tolist() == [0, 1, 2, 0, 1]  # (image, class) order; ignore never enters
    for i, (b, c) in enumerate([(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]):
        mask = labels[b] == c
        mean = embed[b][:, mask].mean(1)
        torch.testing.assert_close(rec.vec[i], F.normalize(mean, dim=0))


def test_labels_outside_the_class_range_are_rejected():
    embed, labels = _scene()
    labels[0, 0, 0] = 7
    with pytest.raises(ValueError, match=r"\[7\] are outside 0..2"):
        select_records(embed, labels, num_classes=3)


def test_a_batch_of_only_ignore_pixels_enqueues_nothing():
    embed, labels = _scene()
    rec = select_records(embed, torch.full_like(labels, 255), num_classes=3)
    assert len(rec) == 0
    bank = MemoryBank(3, 5, 4)
    bank.write(rec)
    assert len(bank) == 0


def test_write_is_deterministic_when_one_write_overflows_a_queue():
    bank = MemoryBank(1, 2, 3)
    bank.write(_records([(0, 0)] * 8, 2, 0))
    assert bank.entries("pixel", 0)[:, 0].tolist() == [5.0, 6.0, 7.0]
    assert int(bank.ptr[0, 0]) == 8 % 3


def test_write_drops_and_counts_non_finite_records():
    gen = torch.Generator().manual_seed(0)
    vec = torch.nn.functional.normalize(torch.randn(12, 4, generator=gen), dim=1)
    cls = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
    kind = torch.tensor([0] * 6 + [1] * 6)
    vec[3, 1] = float("nan")
    vec[8, 0] = float("inf")
    vec[10] = float("-inf")
    records = BankRecords(cls, kind, vec)
    finite = torch.tensor([i not in (3, 8, 10) for i in range(12)])
    a, b, ref = (MemoryBank(3, 4, 2) for _ in range(3))
    assert a.write(records) == 3 and a.dropped == 3
    b.write(records)
    ref.write(BankRecords(cls[finite], kind[finite], vec[finite]))
    assert a.equal(b) and a.equal(ref)  # same records in, same drops: replicas stay identical
    assert bool(torch.isfinite(a.data).all()) and len(a) == len(ref)
    assert ref.dropped == 0
    # an all-bad write changes nothing but the counters
    before = a.digest()
    bad = BankRecords(cls[:2], kind[:2], torch.full((2, 4), float("nan")))
    assert a.write(bad) == 2 and a.dropped == 5 and a.digest() == before
    # the count survives a checkpoint
    restored = MemoryBank(3, 4, 2)
    restored.load_state_dict(a.state_dict())
    assert restored.dropped == 5 and restored.equal(a)


def _reference_choice(group, n_groups, k, seed):
    """Plain loop: the same keys, each group's k smallest, by group then key."""
    u = torch.rand(group.numel(), generator=torch.Generator().manual_seed(seed))
    out = []
    for g in range(n_groups):
        items = [i for i in range(group.numel()) if int(group[i]) == g]
        out += sorted(items, key=lambda i: float(u[i]))[:k]
    return out


@pytest.mark.parametrize("forced_fallback", [False, True])
def test_choose_pixels_is_each_groups_k_smallest_keys(monkeypatch, forced_fallback):
    if forced_fallback:  # thresholds so low that about half the batches take the second pass
        monkeypatch.setattr(memory_mod, "_SLACK_SIGMAS", 0.0)
        monkeypatch.setattr(memory_mod, "_SLACK_EXTRA", 0.0)
    g = torch.Generator().manual_seed(0)
    for seed in range(30):
        n_groups = 4
        group = torch.randint(0, n_groups + 1, (int(torch.randint(1, 120, (1,), generator=g)),))
        counts = torch.bincount(group, minlength=n_groups + 1)[:n_groups]
        for k in (1, 3, 10):
            got = memory_mod.choose_pixels(
                group, counts, k, torch.Generator().manual_seed(seed)
            ).tolist()
            assert got == _reference_choice(group, n_groups, k, seed)


@pytest.mark.parametrize("size", [20, 200])
def test_choose_pixels_draws_uniform_subsets_in_uniform_order(size):
    # size 20 keeps every item (threshold (3 + 6 sqrt(3) + 8) / 20 > 1); size 200 keeps ~21 of
    # them, so the subset comes through the threshold filter
    group = torch.tensor([0] * size + [1] * 3 + [2] * 5)  # group 2 is the skip slot
    counts = torch.tensor([size, 3])
    trials, chosen, first = 3000, torch.zeros(size + 3), torch.zeros(size)
    for seed in range(trials):
        got = memory_mod.choose_pixels(group, counts, 3, torch.Generator().manual_seed(seed))
        assert len(got) == 6 and set(got[3:].tolist()) == {size, size + 1, size + 2}
        chosen[got] += 1
        first[got[0]] += 1
    p, q = chosen[:size] / trials, 3 / size  # each item of the large group: binomial(3000, q)
    assert (p - q).abs().max() < 5 * math.sqrt(q * (1 - q) / trials), p
    f = 1 / size  # any item may come first
    assert (first / trials - f).abs().max() < 5 * math.sqrt(f * (1 - f) / trials), first
