"""Decode heads and their factory :func:`build_head`."""

from __future__ import annotations

from torch import nn

from raycontrast.models.errors import ModelError
from raycontrast.models.heads.aspp import DeepLabV3Head
from raycontrast.models.heads.fcn import FCNHead
from raycontrast.models.heads.fpn import FPNHead

__all__ = ["HEADS", "DeepLabV3Head", "FCNHead", "FPNHead", "build_head"]

HEADS: dict[str, type[nn.Module]] = {"fcn": FCNHead, "deeplabv3": DeepLabV3Head, "fpn": FPNHead}
"""Decode heads by ``model.head`` name; each builds from a backbone's levels with ``from_levels``."""


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
    if name not in HEADS:
        raise ModelError(f"model.head={name!r} is not one of: {', '.join(HEADS)}")
    return HEADS[name].from_levels(
        in_channels, reductions, channels, num_classes, dropout=dropout, head_input=head_input
    )
