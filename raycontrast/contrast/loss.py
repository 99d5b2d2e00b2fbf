"""Pixel-contrast InfoNCE losses (docs/concepts/spec.md), computed per class block without ``N x M`` masks.

For an anchor ``i`` with label ``c`` and similarities ``s_ij = z_i . q_j / tau``, each positive ``j``
(same class) has its own denominator: itself plus every negative ``k`` (other classes)::

    ell_ij = s_ij - log(exp(s_ij) + sum_k exp(s_ik)) = -softplus(LN_i - s_ij),
    LN_i   = logsumexp_{k negative} s_ik,
    loss_i = -(tau / tau_base) * mean_{j positive} ell_ij,

and the loss is the mean of ``loss_i`` over anchors with at least one positive.

Memory entries are grouped by class ("blocks": contiguous row ranges of one class in a ``store``
tensor), so ``LN_i`` is a log-sum-exp over per-class block log-sum-exps and positives of anchor ``i`` are
exactly the blocks of its class. The kernel streams the store in chunks, keeping only ``(N, C)`` block
statistics and, when the anchors need a gradient, the ``(N, C, D)`` softmax-weighted block means, so the
anchor gradient is produced during the forward pass and no ``N x M`` similarity matrix is ever kept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from raycontrast.contrast import _chunking
from raycontrast.contrast.selection import (
    MemorySampling,
    MemorySelection,
    as_sampling,
    gather_similarity,
    select_memory_entries,
)

__all__ = [
    "Block",
    "class_blocks",
    "inbatch_contrast_loss",
    "memory_contrast_loss",
    "memory_contrast_loss_blocks",
]

Block = tuple[int, int, int]
"""``(class, start, stop)``: rows ``start:stop`` of a store all have label ``class``."""


def _compute_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


_MATMUL_DTYPES = {"float32": None, "bfloat16": torch.bfloat16}


def _matmul_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """``contrast.compute_dtype`` as the dtype of the similarity matmuls' operands (``None``: the
    kernel's own float32 / float64)."""
    if name is None or isinstance(name, torch.dtype):
        return None if name in (None, torch.float32, torch.float64) else name
    if name not in _MATMUL_DTYPES:
        raise ValueError(f"compute_dtype must be float32 or bfloat16, got {name!r}")
    return _MATMUL_DTYPES[name]


def _mm(a: Tensor, b: Tensor, mm_dtype: torch.dtype | None) -> Tensor:
    """``a @ b`` with operands in ``mm_dtype`` (``None``: as given), the product back in ``a``'s
    dtype. The GEMM accumulates in float32; on CUDA the product is written in float32 too, on CPU
    torch rounds it to bfloat16 on output (no mixed-output CPU GEMM), then it is widened."""
    if mm_dtype is None:
        return a @ b
    out = a.dtype
    a, b = a.to(mm_dtype), b.to(mm_dtype)
    if a.is_cuda:
        return torch.mm(a, b, out_dtype=out)
    return (a @ b).to(out)


_EXP_BOUND = 50.0
"""Largest similarity magnitude for which ``exp(s)`` is summed without subtracting a row maximum:
``exp(+-50)`` and a chunk's sum of them stay well inside float32/bfloat16's range (``exp(+-88)``)."""


def _sims(a: Tensor, b: Tensor, mm_dtype: torch.dtype | None) -> Tensor:
    """``a @ b`` for the log-sum-exp pass: as :func:`_mm`, except that on CPU with bfloat16 operands
    the product stays in bfloat16 (the GEMM accumulated it in float32 and rounded it on output), so
    the elementwise work that follows reads and writes half the bytes."""
    if mm_dtype is None or a.is_cuda:
        return _mm(a, b, mm_dtype)
    return a.to(mm_dtype) @ b.to(mm_dtype)


def _bounded(row_norms: Tensor, x: Tensor) -> bool:
    """Whether every similarity of rows with these norms against ``x``'s rows is within
    :data:`_EXP_BOUND` (Cauchy-Schwarz), so their ``exp`` needs no maximum subtracted."""
    x_max = torch.linalg.vector_norm(x, dim=1, dtype=torch.float32).amax()
    return bool(row_norms.amax() * x_max <= _EXP_BOUND)


def zero_with_graph(*tensors: Tensor) -> Tensor:
    """A scalar 0 that is connected to the graph of every given tensor (so DDP sees all parameters)."""
    out = None
    for t in tensors:
        if t is not None and t.requires_grad:
            term = t.sum() * 0.0
            out = term if out is None else out + term
    if out is None:
        ref = next((t for t in tensors if t is not None), None)
        return torch.zeros((), dtype=torch.float32, device=ref.device if ref is not None else None)
    return out.float() if out.dtype not in (torch.float32, torch.float64) else out


def class_blocks(sorted_labels: Tensor, offset: int = 0) -> list[Block]:
    """Runs of equal labels in a sorted label vector as ``(class, start, stop)``."""
    if sorted_labels.numel() == 0:
        return []
    classes, counts = torch.unique_consecutive(sorted_labels, return_counts=True)
    stops = torch.cumsum(counts, 0).tolist()
    starts = [0, *stops[:-1]]
    return [(c, offset + a, offset + b) for c, a, b in zip(classes.tolist(), starts, stops)]


def _chunks(start: int, stop: int, rows: int):
    step = _chunking.chunk_step(rows)
    for a in range(start, stop, step):
        yield a, min(a + step, stop)


class _BlockInfoNCE(torch.autograd.Function):
    """InfoNCE of class-sorted anchors against class blocks of a store (sampling="all").

    ``exclude_self``: the store *is* the anchor tensor (in-batch loss); an anchor is not its own positive.
    """

    @staticmethod
    def forward(ctx, anchors, store, a_blocks, m_blocks, inv_tau, weight, exclude_self, mm_dtype):
        cdtype = _compute_dtype(anchors)
        z = anchors.detach().to(cdtype)
        n, d = z.shape
        need_gz, need_gs = ctx.needs_input_grad[0], ctx.needs_input_grad[1]

        zs = z * inv_tau  # similarities come out of the matmul already scaled
        zs_mm = zs if mm_dtype is None else zs.to(mm_dtype)  # cast once, not per chunk
        mem_classes = sorted({c for c, _, _ in m_blocks})
        col = {c: j for j, c in enumerate(mem_classes)}
        # Pass 1: per-class block log-sum-exp L[i, c] (and softmax-weighted block means W[i, c]).
        # bfloat16 on CPU: the similarities stay bfloat16 and, when they are bounded (unit vectors
        # over tau >= 1/50), exp needs no row maximum: one elementwise pass, sums in float32.
        low_precision = mm_dtype is not None and not z.is_cuda
        row_norms = torch.linalg.vector_norm(zs, dim=1) if low_precision else None
        no_shift = z.new_zeros(n)
        lse = z.new_full((n, len(mem_classes)), -math.inf)
        wmean = z.new_zeros((n, len(mem_classes), d)) if need_gz else None
        for c, s0, s1 in m_blocks:
            j = col[c]
            for a, b in _chunks(s0, s1, n):
                x = store[a:b].detach()
                x = x.to(cdtype) if mm_dtype is None else x.to(mm_dtype)
                s = _sims(zs_mm, x.T, mm_dtype)
                if low_precision and _bounded(row_norms, x):
                    m = no_shift
                    s.exp_()
                else:
                    s = s.to(cdtype)
                    m = s.amax(1)
                    s.sub_(m[:, None]).exp_()
                chunk_lse = m + s.sum(1, dtype=cdtype).log()
                old = lse[:, j]
                new = torch.logaddexp(old, chunk_lse)
                if wmean is not None:
                    w = wmean[:, j]  # a view: updated in place
                    w.mul_(torch.exp(old - new)[:, None])
                    w.add_(_mm(s, x, mm_dtype).mul_(torch.exp(m - new)[:, None]))
                lse[:, j] = new

        # Log-sum-exp over negatives: every block column except the anchor's own class.
        own_col = torch.full((n,), -1, dtype=torch.long, device=z.device)
        for c, r0, r1 in a_blocks:
            if c in col:
                own_col[r0:r1] = col[c]
        neg_mask = torch.ones_like(lse, dtype=torch.bool)
        has_own = own_col >= 0
        neg_mask[has_own.nonzero().squeeze(1), own_col[has_own]] = False
        neg_mask &= torch.isfinite(lse)
        log_neg = torch.logsumexp(lse.masked_fill(~neg_mask, -math.inf), 1)
        has_neg = neg_mask.any(1)

        # Pass 2: positives are the anchor's own class blocks only.
        pos_sum = z.new_zeros(n)
        sig_sum = z.new_zeros(n)
        n_pos = z.new_zeros(n)
        wpos = z.new_zeros((n, d)) if need_gz else None
        blocks_of = {}
        for blk in m_blocks:
            blocks_of.setdefault(blk[0], []).append(blk)
        for c, r0, r1 in a_blocks:
            zc = zs_mm[r0:r1]
            ln = log_neg[r0:r1, None]
            for _, s0, s1 in blocks_of.get(c, ()):
                for a, b in _chunks(s0, s1, r1 - r0):
                    x = store[a:b].detach()
                    x = x.to(cdtype) if mm_dtype is None else x.to(mm_dtype)
                    t = ln - _mm(zc, x.T, mm_dtype).to(cdtype)
                    sp, sg = F.softplus(t), torch.sigmoid(t)
                    count = torch.full((r1 - r0,), b - a, dtype=z.dtype, device=z.device)
                    if exclude_self:
                        rows, cols = _self_pairs(r0, r1, a, b, z.device)
                        sp[rows, cols] = 0
                        sg[rows, cols] = 0
                        count[rows] -= 1
                    pos_sum[r0:r1] += sp.sum(1)
                    sig_sum[r0:r1] += sg.sum(1)
                    n_pos[r0:r1] += count
                    if wpos is not None:
                        wpos[r0:r1] += _mm(sg, x, mm_dtype)

        valid = n_pos > 0
        n_valid = int(valid.sum())
        coef = torch.where(valid, weight / (max(n_valid, 1) * n_pos.clamp(min=1)), 0.0)
        loss = (coef * pos_sum).sum()

        grad_z = None
        if need_gz:
            neg_w = torch.where(neg_mask, torch.exp(lse - log_neg[:, None]), 0.0)
            neg_w = torch.where(has_neg[:, None], neg_w, 0.0)
            wneg = torch.einsum("nc,ncd->nd", neg_w, wmean)
            grad_z = ((coef * sig_sum)[:, None] * wneg - coef[:, None] * wpos) * inv_tau
        ctx.save_for_backward(anchors, store, log_neg, coef, sig_sum, has_neg)
        ctx.grad_z = grad_z
        ctx.meta = (a_blocks, m_blocks, inv_tau, exclude_self, need_gs, mm_dtype)
        return loss

    @staticmethod
    @once_differentiable  # the gradient is precomputed in forward: a second derivative must raise
    def backward(ctx, grad_out):
        anchors, store, log_neg, coef, sig_sum, has_neg = ctx.saved_tensors
        a_blocks, m_blocks, inv_tau, exclude_self, need_gs, mm_dtype = ctx.meta
        grad_anchors = grad_store = None
        if ctx.grad_z is not None:
            grad_anchors = (ctx.grad_z * grad_out).to(anchors.dtype)
        if need_gs:
            grad_store = _store_gradient(
                anchors,
                store,
                a_blocks,
                m_blocks,
                inv_tau,
                exclude_self,
                log_neg,
                coef,
                sig_sum,
                has_neg,
                mm_dtype,
            )
            grad_store = (grad_store * grad_out).to(store.dtype)
        return grad_anchors, grad_store, None, None, None, None, None, None


def _self_pairs(r0: int, r1: int, a: int, b: int, device) -> tuple[Tensor, Tensor]:
    """(row, col) positions of anchor == entry inside the chunk rows r0:r1 x entries a:b."""
    d = torch.arange(max(a, r0), min(b, r1), device=device)
    return d - r0, d - a


def _store_gradient(
    anchors,
    store,
    a_blocks,
    m_blocks,
    inv_tau,
    exclude_self,
    log_neg,
    coef,
    sig_sum,
    has_neg,
    mm_dtype=None,
):
    """d loss / d store, recomputing similarities chunk by chunk (only when the store needs a grad)."""
    cdtype = _compute_dtype(anchors)
    z = anchors.detach().to(cdtype)
    n = z.shape[0]
    g = (coef * sig_sum)[:, None]
    ln = log_neg[:, None]
    rows_of = {c: (r0, r1) for c, r0, r1 in a_blocks}
    grad = torch.zeros(store.shape, dtype=cdtype, device=store.device)
    for c, s0, s1 in m_blocks:
        r0, r1 = rows_of.get(c, (0, 0))
        for a, b in _chunks(s0, s1, n):
            s = _mm(z, store[a:b].detach().to(cdtype).T, mm_dtype) * inv_tau
            gs = torch.where(has_neg[:, None], g * torch.exp(s - ln), 0.0)
            if r1 > r0:
                gs[r0:r1] = -coef[r0:r1, None] * torch.sigmoid(ln[r0:r1] - s[r0:r1])
                if exclude_self:
                    rows, cols = _self_pairs(r0, r1, a, b, z.device)
                    gs[r0 + rows, cols] = 0
            grad[a:b] = _mm(gs.T, z, mm_dtype) * inv_tau
    return grad


def _check_inputs(anchors: Tensor, anchor_labels: Tensor, name: str = "anchors") -> None:
    if anchors.dim() != 2:
        raise ValueError(f"{name} must be (N, D), got shape {tuple(anchors.shape)}")
    if anchor_labels.shape != anchors.shape[:1]:
        raise ValueError(
            f"{name} labels must be ({anchors.shape[0]},), got shape {tuple(anchor_labels.shape)}"
        )


def inbatch_contrast_loss(
    feats: Tensor,
    labels: Tensor,
    tau: float = 0.1,
    tau_base: float = 0.07,
    compute_dtype: str | torch.dtype | None = None,
) -> Tensor:
    """In-batch pixel-to-pixel contrast: every anchor against every other anchor (docs/concepts/spec.md).

    Args:
        feats: ``(N, D)`` anchor embeddings (L2-normalised in practice).
        labels: ``(N,)`` integer class labels.
        tau: temperature.
        tau_base: base temperature; the loss is scaled by ``tau / tau_base``.
        compute_dtype: ``bfloat16``: the similarity matmuls take bfloat16 operands (float32
            accumulation, log-sum-exp and softplus in float32); ``float32``/``None``: full precision.

    Returns:
        A scalar; exactly 0 (with a graph) when no anchor has a positive.

    Example:
        >>> z = torch.nn.functional.normalize(torch.randn(8, 16), dim=1).requires_grad_()
        >>> inbatch_contrast_loss(z, torch.tensor([0, 0, 1, 1, 2, 2, 2, 0])).backward()
    """
    _check_inputs(feats, labels, "feats")
    if feats.shape[0] < 2:
        return zero_with_graph(feats)
    order = torch.argsort(labels, stable=True)
    z = feats[order]
    blocks = class_blocks(labels[order])
    return _BlockInfoNCE.apply(
        z, z, blocks, blocks, 1.0 / tau, tau / tau_base, True, _matmul_dtype(compute_dtype)
    )


def memory_contrast_loss(
    anchors: Tensor,
    anchor_labels: Tensor,
    memory: Tensor,
    memory_labels: Tensor,
    tau: float = 0.1,
    tau_base: float = 0.07,
    sampling: MemorySampling | str = "all",
    generator: torch.Generator | None = None,
    compute_dtype: str | torch.dtype | None = None,
) -> Tensor:
    """Anchors against memory entries (pixel and/or region), one InfoNCE (docs/concepts/spec.md).

    Args:
        anchors: ``(N, D)`` anchor embeddings.
        anchor_labels: ``(N,)`` anchor classes.
        memory: ``(M, D)`` memory entries (any float dtype; computed in float32, or float64).
            Entries sorted by label are used in place; otherwise a sorted copy is made.
        memory_labels: ``(M,)`` entry classes.
        tau: temperature.
        tau_base: base temperature (the loss is scaled by ``tau / tau_base``).
        sampling: a :class:`~raycontrast.contrast.selection.MemorySampling` or a mode name
            (``all`` | ``hardest`` | ``semi_hard`` | ``mixed``, default parameters).
        generator: random source for ``semi_hard`` / ``mixed``.
        compute_dtype: the similarity matmuls' operand dtype with ``sampling="all"`` (see
            :func:`inbatch_contrast_loss`); the other samplings compute in float32.

    Returns:
        A scalar; exactly 0 (with a graph) for empty memory, no anchors, or no anchor with a positive.
    """
    _check_inputs(anchors, anchor_labels)
    _check_inputs(memory, memory_labels, "memory")
    if memory.shape[1] != anchors.shape[1]:
        raise ValueError(f"anchors have D={anchors.shape[1]} but memory has D={memory.shape[1]}")
    if anchors.shape[0] == 0 or memory.shape[0] == 0:
        return zero_with_graph(anchors, memory)
    if memory_labels.numel() > 1 and bool((memory_labels[1:] < memory_labels[:-1]).any()):
        order = torch.argsort(memory_labels, stable=True)
        memory, memory_labels = memory[order], memory_labels[order]
    return memory_contrast_loss_blocks(
        anchors,
        anchor_labels,
        memory,
        class_blocks(memory_labels),
        tau=tau,
        tau_base=tau_base,
        sampling=sampling,
        generator=generator,
        compute_dtype=compute_dtype,
    )


def memory_contrast_loss_blocks(
    anchors: Tensor,
    anchor_labels: Tensor,
    store: Tensor,
    blocks: Sequence[Block],
    tau: float = 0.1,
    tau_base: float = 0.07,
    sampling: MemorySampling | str = "all",
    generator: torch.Generator | None = None,
    compute_dtype: str | torch.dtype | None = None,
) -> Tensor:
    """:func:`memory_contrast_loss` on a store described by class blocks (what the bank hands out).

    ``store`` rows outside ``blocks`` (empty bank slots) are never read.
    """
    sampling = as_sampling(sampling)
    _check_inputs(anchors, anchor_labels)
    blocks = [b for b in blocks if b[2] > b[1]]
    if anchors.shape[0] == 0 or not blocks:
        return zero_with_graph(anchors, store)
    if sampling.mode == "all":
        order = torch.argsort(anchor_labels, stable=True)
        z = anchors[order]
        a_blocks = class_blocks(anchor_labels[order])
        return _BlockInfoNCE.apply(
            z,
            store,
            a_blocks,
            list(blocks),
            1.0 / tau,
            tau / tau_base,
            False,
            _matmul_dtype(compute_dtype),
        )
    selection = select_memory_entries(
        anchors, anchor_labels, store, blocks, sampling, generator=generator
    )
    return selected_contrast_loss(anchors, store, selection, tau=tau, tau_base=tau_base)


def selected_contrast_loss(
    anchors: Tensor,
    store: Tensor,
    selection: MemorySelection,
    tau: float = 0.1,
    tau_base: float = 0.07,
) -> Tensor:
    """The docs/concepts/spec.md formula restricted to each anchor's selected positives and negatives."""
    s = gather_similarity(anchors, store, selection.index, 1.0 / tau)
    pos, neg = selection.positive, selection.negative
    has_neg = neg.any(1, keepdim=True)
    neg_logits = torch.where(neg, s, -math.inf)
    log_neg = torch.logsumexp(torch.where(has_neg, neg_logits, 0.0), 1, keepdim=True)
    log_neg = torch.where(has_neg, log_neg, -math.inf)
    terms = torch.where(pos, F.softplus(log_neg - s), 0.0)
    n_pos = pos.sum(1)
    valid = n_pos > 0
    if not bool(valid.any()):
        return zero_with_graph(anchors, store)
    per_anchor = terms.sum(1)[valid] / n_pos[valid]
    return (tau / tau_base) * per_anchor.mean()
