"""Plain dense float64 references of docs/concepts/spec.md's formulas, written for the tests (materialised masks)."""

from __future__ import annotations

import torch
from torch import Tensor


def dense_contrast_loss(
    z: Tensor,
    z_labels: Tensor,
    q: Tensor,
    q_labels: Tensor,
    tau: float = 0.1,
    tau_base: float = 0.07,
    exclude_self: bool = False,
    pos_mask: Tensor | None = None,
    neg_mask: Tensor | None = None,
) -> Tensor:
    """docs/concepts/spec.md: per positive, ``ell = S_ij - log(exp(S_ij) + sum_k N_ik exp(S_ik))``; mean over positives,
    then over anchors with a positive. ``pos_mask``/``neg_mask`` override the label-derived masks."""
    if z.shape[0] == 0 or q.shape[0] == 0:
        return z.sum() * 0
    s = z @ q.T / tau
    s = s - s.max(1, keepdim=True).values.detach()
    same = (z_labels[:, None] == q_labels[None, :]).to(z.dtype)
    pos = same if pos_mask is None else pos_mask.to(z.dtype)
    neg = 1 - same if neg_mask is None else neg_mask.to(z.dtype)
    if exclude_self:
        pos = pos * (1 - torch.eye(len(z), dtype=z.dtype))
    neg_sum = (s.exp() * neg).sum(1, keepdim=True)
    ell = s - torch.log(s.exp() + neg_sum)
    n_pos = pos.sum(1)
    valid = n_pos > 0
    if not bool(valid.any()):
        return z.sum() * 0
    per_anchor = -(tau / tau_base) * (pos * ell).sum(1)[valid] / n_pos[valid]
    return per_anchor.mean()
