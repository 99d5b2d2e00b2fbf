"""The training-only projection head of pixel contrast."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from raycontrast.models.heads._common import concat_levels

__all__ = ["ProjectionHead"]


class ProjectionHead(nn.Module):
    """``Conv1x1(C, C) -> BN -> ReLU -> Conv1x1(C, D) -> L2-normalise`` along channels.

    It reads the last backbone level (``mode="last"``) or all levels, each bilinearly upsampled to
    the first (finest) level's size and concatenated (``mode="concat"``, HRNet style). It exists
    only for training: :meth:`raycontrast.models.Segmentor.deploy` drops it.

    Args:
        in_channels: channels of each backbone level.
        proj_dim: output dimension D.
        mode: ``"last"`` or ``"concat"``.

    Example:
        >>> proj = ProjectionHead([64, 128], proj_dim=32, mode="concat")
        >>> proj([torch.randn(2, 64, 16, 16), torch.randn(2, 128, 8, 8)]).shape
        torch.Size([2, 32, 16, 16])
    """

    def __init__(self, in_channels: list[int], proj_dim: int, mode: str = "last"):
        super().__init__()
        if mode not in ("last", "concat"):
            raise ValueError(f"proj_input must be 'last' or 'concat', got {mode!r}")
        self.concat = mode == "concat"
        c = sum(in_channels) if self.concat else in_channels[-1]
        self.proj = nn.Sequential(
            nn.Conv2d(c, c, 1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=True),
            nn.Conv2d(c, proj_dim, 1),
        )

    def forward(self, feats: list[Tensor]) -> Tensor:
        """Unit-norm embeddings ``(B, D, h, w)``."""
        x = concat_levels(feats) if self.concat else feats[-1]
        return F.normalize(self.proj(x), p=2.0, dim=1)
