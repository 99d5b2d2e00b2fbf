"""Building blocks shared by the decode heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raycontrast.models.errors import ModelError

__all__ = ["HEAD_INPUTS", "ConvBNReLU", "concat_levels", "levels_read", "resize"]

HEAD_INPUTS = ("last", "concat")
"""What a single-level head reads: the last level, or all levels concatenated (``model.head_input``)."""


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


def levels_read(
    in_channels: list[int], reductions: list[int], head_input: str
) -> tuple[int, int, bool]:
    """``(channels, stride, concat)`` of what a single-level head reads from a backbone's levels:
    the last level, or (``concat``) all levels upsampled to the finest and concatenated."""
    if head_input not in HEAD_INPUTS:
        raise ModelError(f"model.head_input={head_input!r} is not one of: {', '.join(HEAD_INPUTS)}")
    if head_input == "concat":
        return sum(in_channels), reductions[0], True
    return in_channels[-1], reductions[-1], False
