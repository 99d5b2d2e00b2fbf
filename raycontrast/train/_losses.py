"""The training objective of one step: CE (+ aux) + weight x pixel contrast (docs/concepts/spec.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from raycontrast.config import ExperimentConfig
from raycontrast.contrast import ContrastOutput, MemoryBank, PixelContrastLoss

__all__ = ["StepLosses", "cross_entropy", "step_losses"]


def cross_entropy(logits: Tensor, labels: Tensor, ignore_index: int) -> Tensor:
    """Pixel cross-entropy with logits upsampled (bilinear) to the labels' size.

    The mean runs over labelled pixels; a batch with only ``ignore_index`` gives exactly 0 with a
    graph (``F.cross_entropy``'s mean would be NaN).
    """
    logits = F.interpolate(
        logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False
    )
    total = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum")
    return total / (labels != ignore_index).sum().clamp(min=1)


@dataclass
class StepLosses:
    """The total loss, each (unweighted) term for logging, and the contrast output for enqueueing."""

    total: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)
    contrast: ContrastOutput | None = None


def step_losses(
    cfg: ExperimentConfig,
    out: dict[str, Tensor],
    labels: Tensor,
    iteration: int,
    criterion: PixelContrastLoss | None = None,
    bank: MemoryBank | None = None,
    generator: torch.Generator | None = None,
    stats: bool = False,
) -> StepLosses:
    """``CE(logits) [+ aux_weight * CE(aux)] + loss_weight * contrast`` for the model outputs ``out``.

    The contrast term is zero with a graph during the warm-up (and when nothing can be sampled), so
    the projection head always takes part in the backward pass (DDP needs every parameter used).
    ``stats`` asks the contrast term for what its memory loss saw (bank health, at evaluations).
    """
    ignore = cfg.data.ignore_index
    logits = out["logits"].float()
    ce = cross_entropy(logits, labels, ignore)
    terms = {"ce": ce}
    total = ce
    if "aux" in out:
        aux = cross_entropy(out["aux"], labels, ignore)
        terms["aux"] = aux
        total = total + cfg.train.aux_weight * aux
    contrast = None
    if criterion is not None:
        contrast = criterion(
            out["embed"].float(),
            labels,
            logits,
            iteration,
            bank=bank,
            generator=generator,
            stats=stats,
        )
        loss = contrast.loss
        terms["contrast"] = loss
        terms.update(contrast.terms)
        total = total + cfg.contrast.loss_weight * loss
    return StepLosses(total, terms, contrast)
