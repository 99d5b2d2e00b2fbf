"""Building blocks shared by the decode heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ConvBNReLU", "concat_levels", "resize"]


class ConvBNReLU(nn.Sequential):
    """``Conv2d(bias=False) -> BatchNorm2d -> ReLU`` with "same" padding.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: square kernel size (odd).
        dilation: dilation of the convolution.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1
    ):
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                padding=padding,
                dilation=dilation,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


def resize(x: Tensor, size: list[int]) -> Tensor:
    """Bilinear resize (``align_corners=False``) of ``(B, C, h, w)`` to ``size = [H, W]``."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def concat_levels(feats: list[Tensor]) -> Tensor:
    """All levels bilinearly upsampled to the first (finest) level's size, concatenated on channels."""
    size = [feats[0].shape[-2], feats[0].shape[-1]]
    outs: list[Tensor] = []
    for f in feats:
        outs.append(f if f.shape[-2:] == feats[0].shape[-2:] else resize(f, size))
    return torch.cat(outs, dim=1)
