"""Multi-level FPN head (UPerNet-style fusion, without the pyramid pooling module)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from raycontrast.models.heads._common import ConvBNReLU, levels_read, resize

__all__ = ["FPNHead"]


class FPNHead(nn.Module):
    """Lateral 1x1 convs, top-down pathway, 3x3 fuse per level, concat at the finest level, classify.

    Levels are in the backbone's order (finest first); the logits come out at the finest level's
    resolution.

    Args:
        in_channels: channels of each backbone level used.
        channels: channels of every pyramid level (``model.head_channels``).
        num_classes: output classes K.
        dropout: Dropout2d probability before the classifier.

    Example:
        >>> head = FPNHead([64, 128, 256], 64, num_classes=5)
        >>> feats = [torch.zeros(2, c, 32 // 2**i, 32 // 2**i) for i, c in enumerate([64, 128, 256])]
        >>> head(feats).shape
        torch.Size([2, 5, 32, 32])
    """

    def __init__(
        self, in_channels: list[int], channels: int, num_classes: int, dropout: float = 0.1
    ):
        super().__init__()
        self.laterals = nn.ModuleList([ConvBNReLU(c, channels, kernel_size=1) for c in in_channels])
        self.smooth = nn.ModuleList([ConvBNReLU(channels, channels) for _ in in_channels])
        self.fuse = ConvBNReLU(channels * len(in_channels), channels)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    @classmethod
    def from_levels(
        cls,
        in_channels: list[int],
        reductions: list[int],
        channels: int,
        num_classes: int,
        dropout: float = 0.1,
        head_input: str = "last",
    ) -> FPNHead:
        """The head on a backbone's levels (channels and stride of each): the constructor contract
        every head shares (see :func:`~raycontrast.models.heads.build_head`)."""
        levels_read(
            in_channels, reductions, head_input
        )  # all levels, whatever it reads: checked only
        return cls(in_channels, channels, num_classes, dropout)

    def forward(self, feats: list[Tensor]) -> Tensor:
        """Logits ``(B, K, h, w)`` at the finest level's resolution."""
        lat: list[Tensor] = []
        for i, conv in enumerate(self.laterals):
            lat.append(conv(feats[i]))
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + resize(lat[i], [lat[i - 1].shape[-2], lat[i - 1].shape[-1]])
        size = [lat[0].shape[-2], lat[0].shape[-1]]
        outs: list[Tensor] = []
        for i, conv in enumerate(self.smooth):
            outs.append(resize(conv(lat[i]), size))
        return self.classifier(self.dropout(self.fuse(torch.cat(outs, dim=1))))
