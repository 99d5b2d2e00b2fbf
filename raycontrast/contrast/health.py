"""Bank health: is the memory bank full, fresh and informative, or has it collapsed?

Cheap enough for every evaluation: fill and entry ages read the bank's counters whole; the geometry
(class spread, nearest other class) reads a deterministic, class-balanced sample of a few thousand
entries; the loss-side statistics (share of anchors with a positive in memory, mean positive and
hardest-negative similarity) are computed by :func:`memory_loss_stats` on a subset of one step's
anchors. Everything comes back as a flat dict of floats (``nan`` = nothing to measure), keyed like
``bank/pixel/fill/road``, ready for a CSV row, TensorBoard scalars or JSON.

Example:
    >>> sample = sample_bank(bank, max_entries=4096)
    >>> health = bank_health(bank, class_names, sample=sample, loss_stats=out.stats)
    >>> xy = pca_2d(sample.vec)  # the bank map
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from raycontrast.contrast import _chunking
from raycontrast.contrast.loss import Block
from raycontrast.contrast.memory import KINDS, MemoryBank

__all__ = [
    "CLASS_METRICS",
    "LOSS_STATS",
    "BankSample",
    "bank_health",
    "memory_loss_stats",
    "pca_2d",
    "sample_bank",
]

CLASS_METRICS = ("fill", "age_mean", "age_max", "spread", "nearest")
"""Per (kind, class): filled share of the queue; mean and oldest entry age in bank writes (one per
training step); mean cosine of entries to their class centroid; cosine of the class centroid to the
closest other class centroid."""

LOSS_STATS = ("positive_share", "positive_cos", "hardest_negative_cos")
"""``bank/loss/*``: share of anchors whose class has entries in memory; mean over anchors of the mean
cosine to their positives in memory; mean over anchors of the largest cosine to a negative."""


@dataclass
class BankSample:
    """Sampled entries: ``vec (N, D)`` float32, ``cls (N,)``, ``kind (N,)`` (index into :data:`KINDS`),
    ``age (N,)`` in bank writes (-1 unknown). Ordered by (kind, class)."""

    vec: Tensor
    cls: Tensor
    kind: Tensor
    age: Tensor

    def __len__(self) -> int:
        return int(self.cls.shape[0])


def sample_bank(bank: MemoryBank, max_entries: int = 4096, seed: int = 0) -> BankSample:
    """Up to ``max_entries // num_classes`` filled entries of each (kind, class) queue, chosen without
    replacement by a generator seeded with ``seed`` (the same bank and seed give the same sample)."""
    nk, nc, m = bank.written.shape
    per_class = min(m, max(1, max_entries // nc))
    count = bank.count.cpu()
    keys = torch.rand((nk, nc, m), generator=torch.Generator().manual_seed(seed))
    keys[torch.arange(m) >= count[..., None]] = 2.0  # unfilled slots sort last
    slots = torch.topk(keys, per_class, dim=2, largest=False).indices
    taken = torch.arange(per_class) < count[..., None]
    k, c, i = torch.nonzero(taken, as_tuple=True)
    s = slots[k, c, i]
    dev = bank.device
    kd, cd, sd = k.to(dev), c.to(dev), s.to(dev)
    written = bank.written[kd, cd, sd].cpu()
    kind_ids = torch.tensor([KINDS.index(kind) for kind in bank.kinds])
    return BankSample(
        vec=bank.data[kd, cd, sd].float().cpu(),
        cls=c,
        kind=kind_ids[k],
        age=torch.where(written >= 0, bank.writes - written, -1),
    )


def _nan_mean(values: Tensor, mask: Tensor, dim) -> Tensor:
    n = mask.sum(dim)
    total = torch.where(mask, values, 0).sum(dim)
    return torch.where(n > 0, total / n.clamp(min=1), math.nan)


def _nan_max(values: Tensor, mask: Tensor, dim) -> Tensor:
    top = torch.where(mask, values, -math.inf).amax(dim)
    return torch.where(mask.any(dim) if isinstance(dim, int) else mask.any(), top, math.nan)


def _geometry(vec: Tensor, cls: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Per class: mean cosine of entries to the class centroid, and the cosine of the centroid to the
    closest other class centroid (``nan`` for classes without entries)."""
    x = F.normalize(vec.float(), dim=1)
    n = torch.bincount(cls, minlength=num_classes)
    sums = x.new_zeros((num_classes, x.shape[1])).index_add_(0, cls, x)
    centre = F.normalize(sums, dim=1)
    cos = (x * centre[cls]).sum(1)
    spread = torch.zeros(num_classes).index_add_(0, cls, cos) / n.clamp(min=1)
    spread = torch.where(n > 0, spread, math.nan)
    between = centre @ centre.T
    other = (n[:, None] > 0) & (n[None, :] > 0) & ~torch.eye(num_classes, dtype=torch.bool)
    nearest = torch.where(other, between, -math.inf).amax(1)
    return spread, torch.where(other.any(1), nearest, math.nan)


def bank_health(
    bank: MemoryBank,
    class_names: Sequence[str] | None = None,
    sample: BankSample | None = None,
    loss_stats: dict[str, float] | None = None,
    max_entries: int = 4096,
    seed: int = 0,
) -> dict[str, float]:
    """The bank's health as ``{"bank/<kind>/<metric>/<class>": value}`` plus per-kind summaries
    ``bank/<kind>/<metric>`` (fill: share of all slots; ages over all entries; spread: mean over classes;
    nearest: the closest pair of class centroids) and ``bank/loss/*`` (from ``loss_stats``, ``nan`` when
    not given). Keys are the same at every call for a given bank, so rows line up.

    Args:
        bank: the bank (any device; the sample is moved to the CPU).
        class_names: names used in the keys (default: class indices).
        sample: entries for the geometry (default: :func:`sample_bank` with ``max_entries``, ``seed``).
        loss_stats: :attr:`ContrastOutput.stats` of a step (see :func:`memory_loss_stats`).
    """
    nc = bank.num_classes
    names = [str(c) for c in range(nc)] if class_names is None else [str(n) for n in class_names]
    if len(names) != nc:
        raise ValueError(f"class_names has {len(names)} names, the bank has {nc} classes")
    if sample is None:
        sample = sample_bank(bank, max_entries, seed)
    count = bank.count.cpu()
    written = bank.written.cpu()
    filled = torch.arange(bank.size) < count[..., None]
    known = filled & (written >= 0)
    age = (bank.writes - written).double()
    out: dict[str, float] = {}
    for k, kind in enumerate(bank.kinds):
        mine = sample.kind == KINDS.index(kind)
        spread, nearest = _geometry(sample.vec[mine], sample.cls[mine], nc)
        per_class = {
            "fill": count[k].double() / bank.size,
            "age_mean": _nan_mean(age[k], known[k], 1),
            "age_max": _nan_max(age[k], known[k], 1),
            "spread": spread,
            "nearest": nearest,
        }
        has = count[k] > 0
        out[f"bank/{kind}/fill"] = float(count[k].sum()) / (nc * bank.size)
        out[f"bank/{kind}/age_mean"] = float(_nan_mean(age[k], known[k], (0, 1)))
        out[f"bank/{kind}/age_max"] = float(_nan_max(age[k], known[k], (0, 1)))
        out[f"bank/{kind}/spread"] = float(spread[has].mean()) if has.any() else math.nan
        out[f"bank/{kind}/nearest"] = float(_nan_max(nearest, ~nearest.isnan(), 0))
        for metric in CLASS_METRICS:
            for name, value in zip(names, per_class[metric].tolist()):
                out[f"bank/{kind}/{metric}/{name}"] = float(value)
    stats = loss_stats or {}
    for key in LOSS_STATS:
        out[f"bank/loss/{key}"] = float(stats.get(f"bank/loss/{key}", math.nan))
    return out


def memory_loss_stats(
    anchors: Tensor,
    labels: Tensor,
    store: Tensor,
    blocks: Sequence[Block],
    max_anchors: int = 256,
) -> dict[str, float]:
    """What the memory loss sees, as ``bank/loss/*`` floats (no gradient, no random draws).

    ``positive_share`` is exact over all anchors; the similarities ``z . q`` (cosines: both are unit
    vectors) use up to ``max_anchors`` evenly spaced anchors against every filled entry in ``blocks``.
    """
    n = anchors.shape[0]
    if n == 0:
        return {f"bank/loss/{key}": math.nan for key in LOSS_STATS}
    present = torch.tensor(sorted({c for c, _, _ in blocks}), dtype=labels.dtype)
    has_pos = torch.isin(labels, present.to(labels.device))
    pick = torch.linspace(0, n - 1, min(n, max_anchors)).round().long().to(anchors.device)
    z = anchors.detach()[pick].float()
    y = labels[pick]
    pos_sum = z.new_zeros(len(pick))
    pos_n = z.new_zeros(len(pick))
    neg_max = z.new_full((len(pick),), -math.inf)
    step = _chunking.chunk_step(len(pick))
    with torch.no_grad():
        for c, start, stop in blocks:
            own = y == c
            for a in range(start, stop, step):
                b = min(a + step, stop)
                s = z @ store[a:b].float().T
                pos_sum += torch.where(own, s.sum(1), 0.0)
                pos_n += own * (b - a)
                neg_max = torch.where(own, neg_max, torch.maximum(neg_max, s.amax(1)))
    with_pos = pos_n > 0
    with_neg = torch.isfinite(neg_max)
    return {
        "bank/loss/positive_share": float(has_pos.float().mean()),
        "bank/loss/positive_cos": float((pos_sum[with_pos] / pos_n[with_pos]).mean())
        if with_pos.any()
        else math.nan,
        "bank/loss/hardest_negative_cos": float(neg_max[with_neg].mean())
        if with_neg.any()
        else math.nan,
    }


def pca_2d(vec: Tensor) -> Tensor:
    """The first two principal components of ``vec (N, D)`` as ``(N, 2)`` coordinates (eigenvectors of
    the ``D x D`` covariance; each axis's sign fixed so its largest loading is positive, for stable
    pictures)."""
    x = vec.float() - vec.float().mean(0)
    if x.shape[0] < 2 or x.shape[1] < 2:
        return torch.zeros((x.shape[0], 2))
    _, eigvec = torch.linalg.eigh((x.T @ x).double())  # ascending eigenvalues
    axes = eigvec[:, [-1, -2]].T
    sign = torch.sign(axes.gather(1, axes.abs().argmax(1, keepdim=True)))
    axes = axes * torch.where(sign == 0, 1.0, sign)
    return x @ axes.float().T
