import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from raycontrast.contrast import MemorySampling, _chunking
from raycontrast.contrast.loss import class_blocks
from raycontrast.contrast.selection import gather_similarity, select_memory_entries


def _setup(seed, n, m, c, d=6):
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    q = F.normalize(torch.randn(m, d, generator=g, dtype=torch.float64), dim=1)
    zl = torch.randint(0, c, (n,), generator=g)
    ql = torch.sort(torch.randint(0, c, (m,), generator=g)).values
    return z, zl, q, ql, class_blocks(ql)


def _chosen(sel, i, kind):
    mask = sel.positive[i] if kind == "pos" else sel.negative[i]
    return sel.index[i][mask].tolist()


cases = st.tuples(
    st.integers(0, 2**31 - 1),
    st.integers(1, 12),
    st.integers(1, 60),
    st.integers(1, 4),
    st.integers(1, 9),
)


@settings(max_examples=50, deadline=None)
@given(cases, st.booleans())
def test_hardest_picks_the_k_most_similar_negatives_and_least_similar_positives(case, tiny_chunks):
    seed, n, m, c, k = case
    z, zl, q, ql, blocks = _setup(seed, n, m, c)
    with pytest.MonkeyPatch.context() as mp:
        if tiny_chunks:
            mp.setattr(_chunking, "CHUNK_ELEMENTS", 4)
            mp.setattr(_chunking, "BUFFER_ELEMENTS", 16)
        sel = select_memory_entries(z, zl, q, blocks, MemorySampling("hardest", k=k))
    s = z @ q.T
    for i in range(n):
        negs = [j for j in range(m) if ql[j] != zl[i]]
        poss = [j for j in range(m) if ql[j] == zl[i]]
        want_neg = sorted(negs, key=lambda j: -float(s[i, j]))[:k]
        want_pos = sorted(poss, key=lambda j: float(s[i, j]))[:k]
        assert sorted(_chosen(sel, i, "neg")) == sorted(want_neg)
        assert sorted(_chosen(sel, i, "pos")) == sorted(want_pos)


@settings(max_examples=50, deadline=None)
@given(cases, st.sampled_from([0.1, 0.3, 1.0]), st.booleans())
def test_semi_hard_draws_k_from_the_top_fraction(case, top_fraction, tiny_chunks):
    seed, n, m, c, k = case
    z, zl, q, ql, blocks = _setup(seed, n, m, c)
    with pytest.MonkeyPatch.context() as mp:
        if tiny_chunks:
            mp.setattr(_chunking, "CHUNK_ELEMENTS", 4)
            mp.setattr(_chunking, "BUFFER_ELEMENTS", 16)
        sel = select_memory_entries(
            z,
            zl,
            q,
            blocks,
            MemorySampling("semi_hard", k=k, top_fraction=top_fraction),
            generator=torch.Generator().manual_seed(seed),
        )
    s = z @ q.T
    for i in range(n):
        negs = [j for j in range(m) if ql[j] != zl[i]]
        poss = [j for j in range(m) if ql[j] == zl[i]]
        pool_neg = sorted(negs, key=lambda j: -float(s[i, j]))[
            : math.ceil(top_fraction * len(negs))
        ]
        pool_pos = sorted(poss, key=lambda j: float(s[i, j]))[: math.ceil(top_fraction * len(poss))]
        got_neg, got_pos = _chosen(sel, i, "neg"), _chosen(sel, i, "pos")
        assert len(set(got_neg)) == len(got_neg) == min(k, len(pool_neg))
        assert len(set(got_pos)) == len(got_pos) == min(k, len(pool_pos))
        assert set(got_neg) <= set(pool_neg) and set(got_pos) <= set(pool_pos)


@settings(max_examples=50, deadline=None)
@given(cases, st.sampled_from([0.0, 0.5, 1.0]))
def test_mixed_is_hardest_negatives_plus_random_entries(case, hard_fraction):
    seed, n, m, c, k = case
    z, zl, q, ql, blocks = _setup(seed, n, m, c)
    sel = select_memory_entries(
        z,
        zl,
        q,
        blocks,
        MemorySampling("mixed", k=k, hard_fraction=hard_fraction),
        generator=torch.Generator().manual_seed(seed),
    )
    k_hard = round(hard_fraction * k)
    s = z @ q.T
    for i in range(n):
        negs = [j for j in range(m) if ql[j] != zl[i]]
        hard = sorted(negs, key=lambda j: -float(s[i, j]))[:k_hard]
        chosen = _chosen(sel, i, "neg") + _chosen(sel, i, "pos")
        expected = len(hard) + min(k - k_hard, m - len(hard))
        assert len(set(chosen)) == len(chosen) == expected
        assert set(hard) <= set(_chosen(sel, i, "neg"))
        assert all(ql[j] == zl[i] for j in _chosen(sel, i, "pos"))
        assert all(ql[j] != zl[i] for j in _chosen(sel, i, "neg"))


def test_semi_hard_and_mixed_are_random_but_reproducible():
    z, zl, q, _ql, blocks = _setup(0, 8, 400, 3)

    def run(seed):
        return select_memory_entries(
            z,
            zl,
            q,
            blocks,
            MemorySampling("mixed", k=20),
            generator=torch.Generator().manual_seed(seed),
        ).index

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_gather_similarity_matches_dense_and_its_gradients():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(9, 5, dtype=torch.float64, generator=g).requires_grad_()
    q = torch.randn(30, 5, dtype=torch.float64, generator=g).requires_grad_()
    idx = torch.randint(0, 30, (9, 7), generator=g)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_chunking, "GATHER_ELEMENTS", 40)  # several row steps
        ours = gather_similarity(z, q, idx, 2.0)
    ref = torch.einsum("nd,nkd->nk", z, q[idx]) * 2.0
    torch.testing.assert_close(ours, ref)
    w = torch.randn(9, 7, dtype=torch.float64, generator=g)
    g1 = torch.autograd.grad((ours * w).sum(), (z, q))
    g2 = torch.autograd.grad((ref * w).sum(), (z, q))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)
