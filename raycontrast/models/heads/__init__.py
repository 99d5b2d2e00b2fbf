"""Decode heads and their factory :func:`build_head`."""

from __future__ import annotations

from torch import nn

from raycontrast.models.errors import ModelError
from raycontrast.models.heads.aspp import ASPP, DeepLabV3Head, aspp_rates
from raycontrast.models.heads.common import ConvBNReLU, concat_levels, resize
from raycontrast.models.heads.fcn import FCNHead
from raycontrast.models.heads.fpn import FPNHead

__all__ = [
    "ASPP",
    "HEADS",
    "ConvBNReLU",
    "DeepLabV3Head",
    "FCNHead",
    "FPNHead",
    "aspp_rates",
    "build_head",
    "concat_levels",
    "resize",
]

HEADS = ("fcn", "deeplabv3", "fpn")


def build_head(
    name: str,
    in_channels: list[int],
    reductions: list[int],
    channels: int,
    num_classes: int,
    dropout: float = 0.1,
    head_input: str = "last",
) -> nn.Module:
    """Create a decode head reading a backbone's feature list.

    Args:
        name: ``fcn`` or ``deeplabv3`` (on the last level, or on all levels concatenated) or
            ``fpn`` (all levels).
        in_channels: channels of each feature level.
        reductions: stride of each feature level.
        channels: channels inside the head.
        num_classes: output classes K.
        dropout: Dropout2d probability before the classifier.
        head_input: ``last`` or ``concat`` (all levels upsampled to the finest and concatenated,
            the HRNetV2 head); fcn and deeplabv3 only.

    Example:
        >>> head = build_head("deeplabv3", [64, 128, 256, 512], [4, 8, 8, 8], 256, 19)
    """
    if head_input not in ("last", "concat"):
        raise ModelError(f"model.head_input={head_input!r} is not one of: last, concat")
    concat = head_input == "concat"
    c_in = sum(in_channels) if concat else in_channels[-1]
    stride = reductions[0] if concat else reductions[-1]
    if name == "fcn":
        return FCNHead(c_in, channels, num_classes, num_convs=2, dropout=dropout, concat=concat)
    if name == "deeplabv3":
        return DeepLabV3Head(c_in, channels, num_classes, stride, dropout, concat=concat)
    if name == "fpn":
        return FPNHead(in_channels, channels, num_classes, dropout)
    raise ModelError(f"model.head={name!r} is not one of: {', '.join(HEADS)}")
