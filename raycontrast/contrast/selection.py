"""Per-anchor sampling of memory entries (docs/concepts/spec.md ``memory_sampling``), streamed over class blocks.

- ``hardest``: the ``k`` most similar negatives and the ``k`` least similar positives.
- ``semi_hard``: the ``top_fraction`` most similar negatives / least similar positives, then ``k`` of
  each drawn uniformly at random from them (all of them when fewer than ``k``).
- ``mixed``: ``round(hard_fraction * k)`` hardest negatives plus ``k`` minus that many entries drawn
  uniformly at random from the rest of the memory (other than those hard negatives); the random entries of
  the anchor's class are its positives, the others negatives.

Selections are index sets into the store; the loss on them is computed by
:func:`raycontrast.contrast.loss.selected_contrast_loss` via :func:`gather_similarity`, whose memory is
bounded by gathering a few anchor rows at a time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from raycontrast.contrast import _chunking

__all__ = [
    "SAMPLING_MODES",
    "MemorySampling",
    "MemorySelection",
    "as_sampling",
    "gather_similarity",
    "select_memory_entries",
]


SAMPLING_MODES = ("all", "hardest", "semi_hard", "mixed")


@dataclass(frozen=True)
class MemorySampling:
    """How each anchor's memory entries are chosen (docs/concepts/spec.md ``memory_sampling``).

    Args:
        mode: ``all`` | ``hardest`` | ``semi_hard`` | ``mixed``.
        k: entries of each kind per anchor (hardest/semi_hard), or in total (mixed).
        top_fraction: semi_hard pool size as a fraction of the candidates.
        hard_fraction: mixed: fraction of ``k`` that are hardest negatives.

    Example:
        >>> memory_contrast_loss(z, zl, q, ql, sampling=MemorySampling("semi_hard", k=512))
    """

    mode: str = "all"
    k: int = 1024
    top_fraction: float = 0.1
    hard_fraction: float = 0.5

    def __post_init__(self):
        if self.mode not in SAMPLING_MODES:
            raise ValueError(f"sampling must be one of {SAMPLING_MODES}, got {self.mode!r}")

    @classmethod
    def from_config(cls, cfg) -> MemorySampling:
        """From the ``contrast`` config section (``memory_sampling``, ``k``, fractions)."""
        return cls(cfg.memory_sampling, cfg.k, cfg.top_fraction, cfg.hard_fraction)


def as_sampling(sampling: MemorySampling | str) -> MemorySampling:
    """``MemorySampling(mode)`` for a mode name; a :class:`MemorySampling` unchanged."""
    return sampling if isinstance(sampling, MemorySampling) else MemorySampling(sampling)


@dataclass
class MemorySelection:
    """Selected entries per anchor: ``index (N, K)`` into the store and which are positives/negatives.

    Padding slots (fewer entries available than requested) are neither positive nor negative.
    """

    index: Tensor
    positive: Tensor
    negative: Tensor


def _chunk_ranges(blocks: Sequence[tuple[int, int, int]], rows: int):
    step = _chunking.chunk_step(rows)
    for c, s0, s1 in blocks:
        for a in range(s0, s1, step):
            yield c, a, min(a + step, s1)


class _TopK:
    """Running top-k (largest values) of a row-wise stream, with global column indices."""

    def __init__(self, rows: int, k: int, device, dtype):
        self.k = k
        self.values = torch.empty((rows, 0), device=device, dtype=dtype)
        self.index = torch.empty((rows, 0), device=device, dtype=torch.long)

    def push(self, values: Tensor, offset: int) -> None:
        held = self.values.shape[1]
        cat = torch.cat([self.values, values], 1)
        top, pos = cat.topk(min(self.k, cat.shape[1]), dim=1)
        new_index = pos - held + offset
        if held:
            old = self.index.gather(1, pos.clamp(max=held - 1))
            new_index = torch.where(pos < held, old, new_index)
        self.values, self.index = top, new_index


def _row_passes(n: int, width: int):
    rows = max(1, _chunking.BUFFER_ELEMENTS // max(width, 1))
    for r in range(0, n, rows):
        yield r, min(r + rows, n)


def _stream_negatives(z, labels, store, blocks, keep, inv_tau):
    """Running top-``keep`` most similar other-class entries per anchor row."""
    top = _TopK(z.shape[0], keep, z.device, z.dtype)
    for c, a, b in _chunk_ranges(blocks, z.shape[0]):
        s = (z @ store[a:b].to(z.dtype).T) * inv_tau
        s[labels == c] = -math.inf
        top.push(s, a)
    return top


def _stream_positives(z, store, blocks, keep, inv_tau):
    """Running top-``keep`` least similar entries of ``blocks`` (one class) per anchor row."""
    top = _TopK(z.shape[0], keep, z.device, z.dtype)
    for _, a, b in _chunk_ranges(blocks, z.shape[0]):
        top.push(-(z @ store[a:b].to(z.dtype).T) * inv_tau, a)
    return top


def _rand(shape: tuple[int, int], generator: torch.Generator | None, device) -> Tensor:
    """Uniform [0, 1) numbers drawn from ``generator`` (on its own device) and moved to ``device``."""
    source = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=source).to(device)


def _random_subset(
    candidates: Tensor, available: Tensor, k: int, generator
) -> tuple[Tensor, Tensor]:
    """Uniformly draw ``min(k, available[i])`` of the first ``available[i]`` candidates of each row."""
    n, width = candidates.shape
    keys = _rand((n, width), generator, candidates.device)
    allowed = torch.arange(width, device=candidates.device)[None, :] < available[:, None]
    keys = keys.masked_fill(~allowed, -1.0)
    chosen_keys, pos = keys.topk(min(k, width), dim=1)
    return candidates.gather(1, pos), chosen_keys >= 0


def select_memory_entries(
    anchors: Tensor,
    anchor_labels: Tensor,
    store: Tensor,
    blocks: Sequence[tuple[int, int, int]],
    sampling: MemorySampling | str,
    tau: float = 1.0,
    generator: torch.Generator | None = None,
) -> MemorySelection:
    """Choose each anchor's memory entries for ``hardest`` / ``semi_hard`` / ``mixed`` sampling.

    Args:
        anchors: ``(N, D)``; anchor_labels: ``(N,)``.
        store: ``(T, D)`` entries; ``blocks``: ``(class, start, stop)`` ranges of valid rows.
        sampling: a :class:`MemorySampling` (or mode name) with mode ``hardest`` | ``semi_hard`` |
            ``mixed``.
        tau: similarity scale (ranking is independent of it).
        generator: random source (semi_hard, mixed).

    Returns:
        A :class:`MemorySelection` with ``index (N, K)``.
    """
    sampling = as_sampling(sampling)
    mode, k = sampling.mode, sampling.k
    top_fraction, hard_fraction = sampling.top_fraction, sampling.hard_fraction
    with torch.no_grad():
        z = anchors.detach().to(torch.float64 if anchors.dtype == torch.float64 else torch.float32)
        labels = anchor_labels
        n, device = z.shape[0], z.device
        inv_tau = 1.0 / tau
        total = sum(b - a for _, a, b in blocks)
        per_class: dict[int, int] = {}
        for c, a, b in blocks:
            per_class[c] = per_class.get(c, 0) + (b - a)
        class_count = torch.tensor(
            [per_class.get(int(c), 0) for c in labels.tolist()], device=device, dtype=torch.long
        )
        n_neg = total - class_count

        if mode in ("hardest", "semi_hard"):
            if mode == "hardest":
                neg_keep = torch.full_like(n_neg, k).clamp(max=total)
                pool = int(min(k, total))
            else:
                neg_keep = torch.ceil(n_neg.double() * top_fraction).long()
                pool = int(neg_keep.max()) if n else 0
            neg_index = torch.zeros((n, min(k, max(pool, 1))), dtype=torch.long, device=device)
            neg_valid = torch.zeros_like(neg_index, dtype=torch.bool)
            for r0, r1 in _row_passes(n, pool + _chunking.CHUNK_ELEMENTS // max(n, 1)):
                top = _stream_negatives(
                    z[r0:r1], labels[r0:r1], store, blocks, max(pool, 1), inv_tau
                )
                avail = torch.minimum(neg_keep[r0:r1], n_neg[r0:r1])
                if mode == "hardest":
                    idx = top.index[:, :k]
                    ok = torch.arange(idx.shape[1], device=device)[None, :] < avail[:, None]
                else:
                    idx, ok = _random_subset(top.index, avail, k, generator)
                neg_index[r0:r1, : idx.shape[1]] = idx
                neg_valid[r0:r1, : idx.shape[1]] = ok
            pos_index, pos_valid = _select_positives(
                z, labels, store, blocks, per_class, mode, k, top_fraction, inv_tau, generator
            )
            index = torch.cat([neg_index, pos_index], 1)
            positive = torch.cat([torch.zeros_like(neg_valid), pos_valid], 1)
            negative = torch.cat([neg_valid, torch.zeros_like(pos_valid)], 1)
            return MemorySelection(index, positive, negative)

        if mode == "mixed":
            k_hard = round(hard_fraction * k)
            k_rand = k - k_hard
            entry_label = torch.full((store.shape[0],), -1, dtype=torch.long, device=device)
            for c, a, b in blocks:
                entry_label[a:b] = c
            parts_index, parts_pos, parts_neg = [], [], []
            hard_index = torch.zeros((n, 0), dtype=torch.long, device=device)
            hard_valid = torch.zeros((n, 0), dtype=torch.bool, device=device)
            if k_hard:
                hard_index = torch.zeros(
                    (n, min(k_hard, max(total, 1))), dtype=torch.long, device=device
                )
                hard_valid = torch.zeros_like(hard_index, dtype=torch.bool)
                for r0, r1 in _row_passes(n, k_hard + _chunking.CHUNK_ELEMENTS // max(n, 1)):
                    top = _stream_negatives(z[r0:r1], labels[r0:r1], store, blocks, k_hard, inv_tau)
                    w = top.index.shape[1]
                    hard_index[r0:r1, :w] = top.index
                    hard_valid[r0:r1, :w] = torch.isfinite(top.values)
                parts_index.append(hard_index)
                parts_pos.append(torch.zeros_like(hard_valid))
                parts_neg.append(hard_valid)
            if k_rand:
                rand_index, rand_valid = _random_entries(
                    n, store, blocks, hard_index, hard_valid, k_rand, generator
                )
                same = entry_label[rand_index] == labels[:, None]
                parts_index.append(rand_index)
                parts_pos.append(rand_valid & same)
                parts_neg.append(rand_valid & ~same)
            return MemorySelection(
                torch.cat(parts_index, 1), torch.cat(parts_pos, 1), torch.cat(parts_neg, 1)
            )
    raise ValueError(f"sampling must be hardest, semi_hard or mixed, got {mode!r}")


def _select_positives(
    z, labels, store, blocks, per_class, sampling, k, top_fraction, inv_tau, generator
):
    """Least similar positives per anchor (hardest: k of them; semi_hard: k drawn from the pool)."""
    n, device = z.shape[0], z.device
    width = k
    pos_index = torch.zeros((n, width), dtype=torch.long, device=device)
    pos_valid = torch.zeros((n, width), dtype=torch.bool, device=device)
    for c in torch.unique(labels).tolist():
        count = per_class.get(c, 0)
        if count == 0:
            continue
        rows = (labels == c).nonzero().squeeze(1)
        own = [blk for blk in blocks if blk[0] == c]
        keep = min(k, count) if sampling == "hardest" else math.ceil(count * top_fraction)
        for r0, r1 in _row_passes(
            rows.numel(), keep + _chunking.CHUNK_ELEMENTS // max(rows.numel(), 1)
        ):
            sub = rows[r0:r1]
            top = _stream_positives(z[sub], store, own, keep, inv_tau)
            if sampling == "hardest":
                idx = top.index
                ok = torch.ones_like(idx, dtype=torch.bool)
            else:
                avail = torch.full((sub.numel(),), keep, device=device, dtype=torch.long)
                idx, ok = _random_subset(top.index, avail, k, generator)
            pos_index[sub, : idx.shape[1]] = idx
            pos_valid[sub, : idx.shape[1]] = ok
    return pos_index, pos_valid


def _random_entries(n, store, blocks, hard_index, hard_valid, k_rand, generator):
    """Per anchor, ``k_rand`` entries uniformly at random among valid entries not already hard-chosen."""
    device = store.device
    top = _TopK(n, k_rand, device, torch.float32)
    for _, a, b in _chunk_ranges(blocks, n):
        keys = _rand((n, b - a), generator, device)
        if hard_index.shape[1]:
            inside = hard_valid & (hard_index >= a) & (hard_index < b)
            rows, slots = inside.nonzero(as_tuple=True)
            keys[rows, hard_index[rows, slots] - a] = -1.0
        top.push(keys, a)
    return top.index, top.values >= 0


class _GatherSimilarity(torch.autograd.Function):
    """``out[i, j] = anchors[i] . store[index[i, j]] * scale`` without an ``(N, K, D)`` tensor."""

    @staticmethod
    def forward(ctx, anchors, store, index, scale):
        cdtype = torch.float64 if anchors.dtype == torch.float64 else torch.float32
        z = anchors.detach().to(cdtype)
        n, kk = index.shape
        d = z.shape[1]
        out = z.new_empty((n, kk))
        step = max(1, _chunking.GATHER_ELEMENTS // max(kk * d, 1))
        for r in range(0, n, step):
            x = store[index[r : r + step]].detach().to(cdtype)
            out[r : r + step] = torch.einsum("nkd,nd->nk", x, z[r : r + step]) * scale
        ctx.save_for_backward(anchors, store, index)
        ctx.scale = scale
        ctx.step = step
        return out

    @staticmethod
    def backward(ctx, grad):
        anchors, store, index = ctx.saved_tensors
        scale, step = ctx.scale, ctx.step
        cdtype = grad.dtype
        z = anchors.detach().to(cdtype)
        grad_a = torch.zeros_like(z) if ctx.needs_input_grad[0] else None
        grad_s = (
            torch.zeros(store.shape, dtype=cdtype, device=store.device)
            if ctx.needs_input_grad[1]
            else None
        )
        for r in range(0, index.shape[0], step):
            g = grad[r : r + step] * scale
            idx = index[r : r + step]
            if grad_a is not None:
                x = store[idx].detach().to(cdtype)
                grad_a[r : r + step] = torch.einsum("nk,nkd->nd", g, x)
            if grad_s is not None:
                contrib = g[:, :, None] * z[r : r + step, None, :]
                grad_s.index_add_(0, idx.reshape(-1), contrib.reshape(-1, z.shape[1]))
        return (
            grad_a.to(anchors.dtype) if grad_a is not None else None,
            grad_s.to(store.dtype) if grad_s is not None else None,
            None,
            None,
        )


def gather_similarity(anchors: Tensor, store: Tensor, index: Tensor, scale: float) -> Tensor:
    """``(N, K)`` scaled dot products of each anchor with its selected store rows (differentiable)."""
    return _GatherSimilarity.apply(anchors, store, index, scale)
