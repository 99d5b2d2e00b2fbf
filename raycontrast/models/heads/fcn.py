"""FCN head: ``(conv3x3-BN-ReLU) x n -> dropout -> conv1x1`` classifier on one feature level."""

from __future__ import annotations

from torch import Tensor, nn

from raycontrast.models.heads._common import ConvBNReLU, concat_levels, levels_read

__all__ = ["FCNHead"]


class FCNHead(nn.Module):
    """Fully convolutional head on a single backbone level.

    Args:
        in_channels: channels of the level it reads.
        channels: channels of the hidden convolutions.
        num_classes: output classes K.
        num_convs: number of conv3x3-BN-ReLU blocks (2 for the main head, 1 for the auxiliary head).
        dropout: Dropout2d probability before the classifier.
        in_index: which level of the backbone's feature list it reads (-1 last, -2 second-to-last).
        concat: read all levels upsampled to the finest and concatenated instead (HRNetV2 head;
            ``in_channels`` is then their sum and ``in_index`` is unused).

    Example:
        >>> head = FCNHead(512, 256, num_classes=19)
        >>> head([torch.zeros(2, 512, 8, 8)]).shape
        torch.Size([2, 19, 8, 8])
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        num_convs: int = 2,
        dropout: float = 0.1,
        in_index: int = -1,
        concat: bool = False,
    ):
        super().__init__()
        self.in_index = in_index
        self.concat = concat
        blocks = [
            ConvBNReLU(in_channels if i == 0 else channels, channels) for i in range(num_convs)
        ]
        self.convs = nn.Sequential(*blocks)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels if num_convs else in_channels, num_classes, 1)

    @classmethod
    def from_levels(
        cls,
        in_channels: list[int],
        reductions: list[int],
        channels: int,
        num_classes: int,
        dropout: float = 0.1,
        head_input: str = "last",
    ) -> FCNHead:
        """The head on a backbone's levels (channels and stride of each): the constructor contract
        every head shares (see :func:`~raycontrast.models.heads.build_head`)."""
        c_in, _, concat = levels_read(in_channels, reductions, head_input)
        return cls(c_in, channels, num_classes, num_convs=2, dropout=dropout, concat=concat)

    def forward(self, feats: list[Tensor]) -> Tensor:
        """Logits ``(B, K, h, w)`` at the resolution of the level it reads (the finest if concat)."""
        x = concat_levels(feats) if self.concat else feats[self.in_index]
        return self.classifier(self.dropout(self.convs(x)))
