"""``PixelContrastLoss``: the training-time pixel contrast of docs/concepts/spec.md in one module."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from raycontrast.config import MEMORY_KINDS, ContrastConfig
from raycontrast.contrast.health import memory_loss_stats
from raycontrast.contrast.loss import (
    inbatch_contrast_loss,
    memory_contrast_loss_blocks,
    zero_with_graph,
)
from raycontrast.contrast.memory import MemoryBank
from raycontrast.contrast.sampling import resize_labels, resize_predictions, sample_anchors
from raycontrast.contrast.selection import MemorySampling

__all__ = ["ContrastOutput", "PixelContrastLoss", "memory_kinds"]


def memory_kinds(cfg: ContrastConfig) -> tuple[str, ...]:
    """Bank queues the config uses: ``()`` for ``memory: none``."""
    return MEMORY_KINDS[cfg.memory]


@dataclass
class ContrastOutput:
    """The contrast loss (unweighted) and what the training step needs next.

    ``terms`` holds detached per-term values for logging; ``labels_small`` the labels at the embedding
    resolution, for enqueueing into the bank after the step; ``stats`` what the memory loss saw
    (``bank/loss/*`` floats, see :func:`~raycontrast.contrast.health.memory_loss_stats`), only when
    asked for and the memory term ran.
    """

    loss: Tensor
    labels_small: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)
    num_anchors: int = 0
    stats: dict[str, float] = field(default_factory=dict)


class PixelContrastLoss(nn.Module):
    """Resize labels, sample anchors, add the in-batch and memory terms, gate by warm-up.

    Args:
        cfg: the ``contrast`` section of the experiment config.
        ignore_index: label excluded everywhere.

    Example:
        >>> crit = PixelContrastLoss(ContrastConfig(warmup_iters=0))
        >>> out = crit(embed, labels, logits, iteration=10, bank=bank)
        >>> (ce + 0.1 * out.loss).backward()
    """

    def __init__(self, cfg: ContrastConfig, ignore_index: int = 255):
        super().__init__()
        self.cfg = cfg
        self.ignore_index = ignore_index
        self.kinds = memory_kinds(cfg)
        self.sampling = MemorySampling.from_config(cfg)

    def forward(
        self,
        embed: Tensor,
        labels: Tensor,
        logits: Tensor,
        iteration: int,
        bank: MemoryBank | None = None,
        generator: torch.Generator | None = None,
        stats: bool = False,
    ) -> ContrastOutput:
        """Args:
        embed: ``(B, D, h, w)`` L2-normalised projection output.
        labels: ``(B, H, W)`` ground truth at any resolution (resized with nearest).
        logits: ``(B, K, h', w')`` segmentation logits (their argmax is the prediction).
        iteration: the current iteration (warm-up gating).
        bank: the memory bank whose filled entries are contrasted (required when memory is on).
        generator: random source for anchor and memory sampling.
        stats: also measure what the memory term sees (costs one extra pass of up to 256 anchors over
            the memory; draws no random numbers, so training is the same with or without it).
        """
        cfg = self.cfg
        size = tuple(embed.shape[-2:])
        labels_small = resize_labels(labels, size, cfg.label_resize)
        if iteration < cfg.warmup_iters:
            return ContrastOutput(zero_with_graph(embed), labels_small)
        with torch.no_grad():
            preds = resize_predictions(logits.detach(), size)
        anchors, anchor_labels = sample_anchors(
            embed,
            labels_small,
            preds,
            max_samples=cfg.max_samples,
            max_views=cfg.max_views,
            ignore_index=self.ignore_index,
            generator=generator,
        )
        z = anchors.reshape(-1, embed.shape[1])
        zl = anchor_labels.repeat_interleave(anchors.shape[1]) if anchors.numel() else anchor_labels
        loss = zero_with_graph(embed)
        terms: dict[str, Tensor] = {}
        seen: dict[str, float] = {}
        if cfg.inbatch:
            term = inbatch_contrast_loss(
                z.float(), zl, tau=cfg.tau, tau_base=cfg.tau_base, compute_dtype=cfg.compute_dtype
            )
            terms["inbatch"] = term.detach()
            loss = loss + term
        if self.kinds:
            if bank is None:
                raise ValueError(f"contrast.memory={cfg.memory!r} needs a memory bank")
            store, blocks = bank.memory(self.kinds)
            term = memory_contrast_loss_blocks(
                z.float(),
                zl,
                store,
                blocks,
                tau=cfg.tau,
                tau_base=cfg.tau_base,
                sampling=self.sampling,
                generator=generator,
                compute_dtype=cfg.compute_dtype,
            )
            terms["memory"] = term.detach()
            loss = loss + term
            if stats:
                seen = memory_loss_stats(z, zl, store, blocks)
        return ContrastOutput(loss, labels_small, terms, num_anchors=int(z.shape[0]), stats=seen)
