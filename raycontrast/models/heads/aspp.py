"""DeepLabV3 head: atrous spatial pyramid pooling (with image pooling) on the last level."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from raycontrast.models.heads._common import ConvBNReLU, concat_levels, levels_read, resize

__all__ = ["ASPP", "DeepLabV3Head", "aspp_rates"]


def aspp_rates(stride: int) -> tuple[int, int, int]:
    """Atrous rates for features at ``stride``: (6, 12, 18) at 16, (12, 24, 36) at 8, (3, 6, 9) at 32."""
    return tuple(max(1, round(r * 16 / stride)) for r in (6, 12, 18))  # type: ignore[return-value]


class _ImagePool(nn.Module):
    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = ConvBNReLU(in_channels, channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return resize(self.conv(self.pool(x)), [x.shape[-2], x.shape[-1]])


class ASPP(nn.Module):
    """1x1 branch, three dilated 3x3 branches, an image-pooling branch; concat and 1x1 fuse.

    Args:
        in_channels: input channels.
        channels: channels of every branch and of the output.
        rates: dilation of the three 3x3 branches.
        dropout: Dropout2d after the fuse convolution.
    """

    def __init__(
        self, in_channels: int, channels: int, rates: tuple[int, ...], dropout: float = 0.1
    ):
        super().__init__()
        branches: list[nn.Module] = [ConvBNReLU(in_channels, channels, kernel_size=1)]
        branches += [ConvBNReLU(in_channels, channels, 3, dilation=r) for r in rates]
        branches.append(_ImagePool(in_channels, channels))
        self.branches = nn.ModuleList(branches)
        self.fuse = ConvBNReLU(channels * len(branches), channels, kernel_size=1)
        self.dropout = nn.Dropout2d(dropout)

    def forward(self, x: Tensor) -> Tensor:
        outs = [branch(x) for branch in self.branches]
        return self.dropout(self.fuse(torch.cat(outs, dim=1)))


class DeepLabV3Head(nn.Module):
    """DeepLabV3: ASPP -> conv3x3-BN-ReLU -> dropout -> conv1x1 classifier, on the last level.

    Note: the image-pooling branch has a BatchNorm on a 1x1 map, so training needs more than one
    image per worker (as in DeepLabV3).

    Args:
        in_channels: channels of the last backbone level.
        channels: channels inside the head (``model.head_channels``).
        num_classes: output classes K.
        stride: the stride of the map it reads; the atrous rates follow :func:`aspp_rates`.
        dropout: Dropout2d probability before the classifier.
        concat: read all levels upsampled to the finest and concatenated instead of the last one
            (``in_channels`` is then their sum, ``stride`` the finest level's).

    Example:
        >>> head = DeepLabV3Head(512, 256, num_classes=19, stride=8)
        >>> head([torch.zeros(2, 512, 8, 8)]).shape
        torch.Size([2, 19, 8, 8])
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        stride: int,
        dropout: float = 0.1,
        concat: bool = False,
    ):
        super().__init__()
        self.concat = concat
        self.rates = aspp_rates(stride)
        self.aspp = ASPP(in_channels, channels, self.rates, dropout=0.0)
        self.conv = ConvBNReLU(channels, channels)
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
    ) -> DeepLabV3Head:
        """The head on a backbone's levels (channels and stride of each): the constructor contract
        every head shares (see :func:`~raycontrast.models.heads.build_head`)."""
        c_in, stride, concat = levels_read(in_channels, reductions, head_input)
        return cls(c_in, channels, num_classes, stride, dropout, concat=concat)

    def forward(self, feats: list[Tensor]) -> Tensor:
        """Logits ``(B, K, h, w)`` at the last (or, with concat, the finest) level's resolution."""
        x = concat_levels(feats) if self.concat else feats[-1]
        return self.classifier(self.dropout(self.conv(self.aspp(x))))
