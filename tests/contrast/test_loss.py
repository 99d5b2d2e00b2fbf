import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from raycontrast.contrast import (
    MemorySampling,
    _chunking,
    inbatch_contrast_loss,
    memory_contrast_loss,
)
from raycontrast.contrast import loss as loss_mod
from raycontrast.contrast import selection as selection_mod
from raycontrast.contrast.loss import class_blocks, memory_contrast_loss_blocks
from tests.contrast.reference import dense_contrast_loss


def _data(seed, n, m, c, d, normalise=True):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    q = torch.randn(m, d, generator=g, dtype=torch.float64)
    if normalise:
        z, q = F.normalize(z, dim=1), F.normalize(q, dim=1)
    zl = torch.randint(0, c, (n,), generator=g)
    ql = torch.randint(0, c, (m,), generator=g)
    return z.requires_grad_(), zl, q.requires_grad_(), ql


def _grads(value, *inputs):
    """Gradients, an input the value does not depend on counting as a zero gradient."""
    grads = torch.autograd.grad(value, inputs, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]


def _assert_close(a, b, tol=1e-10):
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)


shapes = st.tuples(
    st.integers(0, 2**31 - 1),  # seed
    st.integers(0, 24),  # anchors
    st.integers(0, 40),  # memory entries
    st.integers(1, 5),  # classes
    st.integers(1, 6),  # dim
)


@settings(max_examples=60, deadline=None)
@given(shapes, st.sampled_from([0.05, 0.1, 0.5]), st.booleans())
def test_memory_loss_matches_dense_reference(shape, tau, small_chunks):
    seed, n, m, c, d = shape
    z, zl, q, ql = _data(seed, n, m, c, d)
    with pytest.MonkeyPatch.context() as mp:
        if small_chunks:  # force several chunks per class block and the online log-sum-exp merge
            mp.setattr(_chunking, "CHUNK_ELEMENTS", 5)
        ours = memory_contrast_loss(z, zl, q, ql, tau=tau, tau_base=0.07)
        ref = dense_contrast_loss(z, zl, q, ql, tau=tau, tau_base=0.07)
        _assert_close(ours.detach(), ref.detach())
        if n and m:
            for g_ours, g_ref in zip(_grads(ours, z, q), _grads(ref, z, q)):
                _assert_close(g_ours, g_ref)


@settings(max_examples=60, deadline=None)
@given(shapes, st.booleans())
def test_inbatch_loss_matches_dense_reference(shape, small_chunks):
    seed, n, _, c, d = shape
    z, zl, _, _ = _data(seed, n, 0, c, d)
    with pytest.MonkeyPatch.context() as mp:
        if small_chunks:
            mp.setattr(_chunking, "CHUNK_ELEMENTS", 3)
        ours = inbatch_contrast_loss(z, zl)
        ref = dense_contrast_loss(z, zl, z, zl, exclude_self=True)
        _assert_close(ours.detach(), ref.detach())
        if n > 1:
            (g_ours,), (g_ref,) = _grads(ours, z), _grads(ref, z)
            _assert_close(g_ours, g_ref)


def test_unnormalised_inputs_stay_exact():
    z, zl, q, ql = _data(3, 16, 50, 4, 8, normalise=False)
    ours = memory_contrast_loss(z * 2, zl, q * 2, ql, tau=0.5)
    ref = dense_contrast_loss(z * 2, zl, q * 2, ql, tau=0.5)
    _assert_close(ours.detach(), ref.detach(), tol=1e-8)


def test_large_logits_stay_finite_where_the_dense_form_overflows():
    z, zl, q, ql = _data(3, 16, 50, 4, 8, normalise=False)
    z, q = z.detach() * 5, q.detach() * 5
    assert not torch.isfinite(dense_contrast_loss(z, zl, q, ql, tau=0.05))
    ours = memory_contrast_loss(z, zl, q, ql, tau=0.05)
    # the same formula written with log-sum-exp over the materialised similarity matrix
    s = z @ q.T / 0.05
    same = zl[:, None] == ql[None, :]
    log_neg = torch.logsumexp(s.masked_fill(same, -math.inf), 1, keepdim=True)
    terms = F.softplus(log_neg - s) * same
    valid = same.sum(1) > 0
    ref = (0.05 / 0.07) * (terms.sum(1)[valid] / same.sum(1)[valid]).mean()
    _assert_close(ours, ref, tol=1e-9)


def test_float32_close_to_float64_reference():
    z, zl, q, ql = _data(1, 64, 500, 7, 16)
    ours = memory_contrast_loss(z.float(), zl, q.float(), ql)
    ref = dense_contrast_loss(z, zl, q, ql)
    assert ours.dtype == torch.float32
    assert abs(float(ours.detach()) - float(ref.detach())) < 1e-4


@pytest.mark.parametrize("store_dtype", [torch.float16, torch.bfloat16])
def test_low_precision_store_computes_in_float32(store_dtype):
    z, zl, q, ql = _data(2, 32, 200, 5, 16)
    q_low = q.detach().to(store_dtype)
    ours = memory_contrast_loss(z.float(), zl, q_low, ql)
    ref = dense_contrast_loss(z.detach(), zl, q_low.double(), ql)
    assert ours.dtype == torch.float32
    assert abs(float(ours.detach()) - float(ref.detach())) < 1e-4


def test_sorted_blocks_are_used_in_place_and_unsorted_memory_is_equivalent():
    z, zl, q, ql = _data(5, 20, 60, 4, 6)
    order = torch.argsort(ql, stable=True)
    a = memory_contrast_loss(z, zl, q, ql)
    b = memory_contrast_loss_blocks(z, zl, q.detach()[order], class_blocks(ql[order]))
    _assert_close(a.detach(), b.detach())


def test_blocks_skip_unfilled_rows():
    z, zl, q, ql = _data(6, 10, 30, 3, 4)
    order = torch.argsort(ql, stable=True)
    qs, ls = q.detach()[order], ql[order]
    garbage = torch.full((7, 4), float("nan"), dtype=torch.float64)
    store = torch.cat([garbage, qs, garbage])
    ours = memory_contrast_loss_blocks(z, zl, store, class_blocks(ls, offset=7))
    ref = dense_contrast_loss(z, zl, qs, ls)
    _assert_close(ours.detach(), ref.detach())


@pytest.mark.parametrize("fn", ["memory", "inbatch"])
def test_degenerate_inputs_give_exact_zero_with_graph(fn):
    d = 4
    cases = [
        (torch.zeros(0, d), torch.zeros(0, dtype=torch.long)),
        (torch.randn(1, d), torch.tensor([0])),
        (torch.randn(5, d), torch.tensor([0, 1, 2, 3, 4])),  # no positives at all
    ]
    for z, zl in cases:
        z = z.requires_grad_()
        if fn == "memory":
            out = memory_contrast_loss(z, zl, torch.zeros(0, d), torch.zeros(0, dtype=torch.long))
        else:
            out = inbatch_contrast_loss(z, zl)
        assert out.item() == 0.0
        assert out.requires_grad
        out.backward()
        assert z.grad is not None and torch.equal(z.grad, torch.zeros_like(z))


def test_one_class_has_no_negatives_and_is_finite():
    z = F.normalize(torch.randn(6, 3, dtype=torch.float64), dim=1).requires_grad_()
    labels = torch.zeros(6, dtype=torch.long)
    for out in (
        inbatch_contrast_loss(z, labels),
        memory_contrast_loss(z, labels, z.detach().clone(), labels),
    ):
        assert out.item() == 0.0  # ell = s - log(exp(s)) = 0 for every positive
        (g,) = torch.autograd.grad(out, z)
        assert torch.isfinite(g).all()


def test_class_zero_is_a_real_class():
    z = F.normalize(torch.randn(4, 3, dtype=torch.float64), dim=1).requires_grad_()
    zl = torch.tensor([0, 0, 1, 1])
    out = memory_contrast_loss(z, zl, z.detach(), zl)
    assert out.item() > 0
    ref = dense_contrast_loss(z, zl, z.detach(), zl)
    _assert_close(out.detach(), ref.detach())


def test_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="labels"):
        inbatch_contrast_loss(torch.randn(3, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="D=4"):
        memory_contrast_loss(
            torch.randn(3, 4), torch.zeros(3, dtype=torch.long), torch.randn(5, 3), torch.zeros(5)
        )
    with pytest.raises(ValueError, match="sampling"):
        memory_contrast_loss(
            torch.randn(3, 4),
            torch.zeros(3, dtype=torch.long),
            torch.randn(5, 4),
            torch.zeros(5, dtype=torch.long),
            sampling="random",
        )


def _selection_masks(sel, n, m):
    pos = torch.zeros(n, m, dtype=torch.bool)
    neg = torch.zeros(n, m, dtype=torch.bool)
    rows = torch.arange(n)[:, None].expand_as(sel.index)
    pos[rows[sel.positive], sel.index[sel.positive]] = True
    neg[rows[sel.negative], sel.index[sel.negative]] = True
    return pos, neg


@settings(max_examples=40, deadline=None)
@given(shapes, st.sampled_from(["hardest", "semi_hard", "mixed"]), st.integers(1, 8))
def test_sampled_loss_matches_dense_reference_on_its_selection(shape, sampling, k):
    seed, n, m, c, d = shape
    z, zl, q, ql = _data(seed, n, m, c, d)
    order = torch.argsort(ql, stable=True)
    qs, ls = q.detach()[order].requires_grad_(), ql[order]
    blocks = class_blocks(ls)
    gen = torch.Generator().manual_seed(seed)
    if not (n and m):
        out = memory_contrast_loss_blocks(
            z, zl, qs, blocks, sampling=MemorySampling(sampling, k=k), generator=gen
        )
        assert out.item() == 0.0
        return
    sel = selection_mod.select_memory_entries(
        z, zl, qs, blocks, MemorySampling(sampling, k=k, top_fraction=0.3), generator=gen
    )
    ours = loss_mod.selected_contrast_loss(z, qs, sel)
    pos, neg = _selection_masks(sel, n, m)
    ref = dense_contrast_loss(z, zl, qs, ls, pos_mask=pos, neg_mask=neg)
    _assert_close(ours.detach(), ref.detach(), tol=1e-8)
    for g_ours, g_ref in zip(_grads(ours, z, qs), _grads(ref, z, qs)):
        _assert_close(g_ours, g_ref, tol=1e-8)


def test_no_nan_for_extreme_temperature():
    z, zl, q, ql = _data(9, 30, 80, 3, 8)
    for tau in (1e-3, 10.0):
        out = memory_contrast_loss(z.float(), zl, q.float(), ql, tau=tau)
        (g,) = torch.autograd.grad(out, z)
        assert math.isfinite(out.item()) and torch.isfinite(g).all()


def test_double_backward_raises_instead_of_returning_zeros():
    z, zl, q, ql = _data(1, 6, 20, 3, 4)
    out = memory_contrast_loss(z, zl, q, ql)
    # a grad_output that needs a gradient makes autograd build a graph through backward
    w = torch.ones((), dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(out, z, grad_outputs=w, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        (g**2).sum().backward()  # e.g. a gradient penalty: must not silently give no z gradient


# bf16 kernel: operands rounded to bfloat16 (8 significant bits) and, on CPU, each similarity rounded
# to bfloat16 on output; accumulation and log-sum-exp in float32. At tau=0.1 a similarity is at most
# 10, so each is off by up to ~0.04, independently: the loss (a mean over many pairs) stays within
# 1e-3 relative of the float64 reference (2.5e-5 measured here), the gradients within 3e-2 of their
# largest entry (0.8% / 1.3% measured).
BF16_LOSS_RTOL = 1e-3
BF16_GRAD_TOL = 3e-2


def _record_bounded(monkeypatch) -> list[bool]:
    """What every call of the kernel's bound check answered (True: exp without a row maximum)."""
    calls: list[bool] = []
    real = loss_mod._bounded
    monkeypatch.setattr(loss_mod, "_bounded", lambda *a: calls.append(real(*a)) or calls[-1])
    return calls


@pytest.mark.parametrize("inbatch", [False, True])
def test_bf16_kernel_matches_float64_reference_with_gradients(inbatch, monkeypatch):
    z, zl, q, ql = _data(7, 96, 160, 4, 32)
    bounded = _record_bounded(monkeypatch)
    if inbatch:
        ref = dense_contrast_loss(z, zl, z, zl, exclude_self=True)
        ref_grads = _grads(ref, z)
        z32 = z.detach().float().requires_grad_()
        out = inbatch_contrast_loss(z32, zl, compute_dtype="bfloat16")
        grads = _grads(out, z32)
    else:
        ref = dense_contrast_loss(z, zl, q, ql)
        ref_grads = _grads(ref, z, q)
        z32, q32 = (t.detach().float().requires_grad_() for t in (z, q))
        out = memory_contrast_loss(z32, zl, q32, ql, compute_dtype="bfloat16")
        grads = _grads(out, z32, q32)
    assert out.dtype == torch.float32
    assert bounded and all(bounded)  # unit vectors at tau=0.1: the unshifted exp was tested
    assert abs(out.item() - ref.item()) <= BF16_LOSS_RTOL * abs(ref.item())
    for g, r in zip(grads, ref_grads):
        assert (g.double() - r).abs().max() <= BF16_GRAD_TOL * r.abs().max()
    if not inbatch:  # a different computation from float32's, which is closer still
        exact = memory_contrast_loss(z.detach().float(), zl, q.detach().float(), ql)
        assert exact.item() != out.item()
        assert abs(exact.item() - ref.item()) < abs(out.item() - ref.item())


def test_bf16_kernel_unbounded_similarities_take_the_max_shifted_path(monkeypatch):
    """Vectors of norm 6 at tau=0.1 give similarities up to 360: exp without a row maximum would
    overflow, so the kernel must fall back to the shifted path (and still match float64)."""
    z, zl, q, ql = _data(3, 64, 96, 3, 16)
    z, q = (t.detach() * 6.0 for t in (z, q))
    ref = dense_contrast_loss(z, zl, q, ql)
    calls = _record_bounded(monkeypatch)
    out = memory_contrast_loss(z.float(), zl, q.float(), ql, compute_dtype="bfloat16")
    assert calls and not any(calls)  # every chunk was out of bounds
    assert math.isfinite(out.item())
    assert abs(out.item() - ref.item()) <= 2e-2 * abs(ref.item())  # logits of 360 in bf16: +-1


def test_bf16_kernel_just_inside_the_exp_bound_stays_exact_enough(monkeypatch):
    """At tau = 1/45 unit vectors give similarities up to 45, just inside the bound of 50: the
    unshifted exp (up to e^45 per term, float32 sums) must neither overflow nor drift."""
    tau = 1 / 45
    z, zl, q, ql = _data(5, 64, 96, 3, 16)
    z, q = z.detach(), q.detach()
    q[:8] = z[:8]  # some pairs at the bound itself (similarity exactly 1/tau)
    ref = dense_contrast_loss(z, zl, q, ql, tau=tau, tau_base=tau)
    calls = _record_bounded(monkeypatch)
    out = memory_contrast_loss(
        z.float(), zl, q.float(), ql, tau=tau, tau_base=tau, compute_dtype="bfloat16"
    )
    assert calls and all(calls)
    assert math.isfinite(out.item())
    assert abs(out.item() - ref.item()) <= 2e-2 * abs(ref.item())  # logits of 45 in bf16: +-0.1


def test_bf16_kernel_rejects_unknown_dtype():
    z, zl, q, ql = _data(1, 4, 6, 2, 3)
    with pytest.raises(ValueError, match="compute_dtype"):
        memory_contrast_loss(z.detach().float(), zl, q.detach().float(), ql, compute_dtype="fp8")
