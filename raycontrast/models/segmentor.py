"""The segmentor: backbone + decode head (+ auxiliary head) + training-only projection head."""

from __future__ import annotations

import copy

import torch.nn.functional as F
from torch import Tensor, nn

from raycontrast.config import ModelConfig
from raycontrast.models._pretrained import load_pretrained_backbone
from raycontrast.models.backbone import create_backbone, feature_channels, feature_reductions
from raycontrast.models.errors import ModelError
from raycontrast.models.heads import FCNHead, build_head
from raycontrast.models.heads._common import resize
from raycontrast.models.projection import ProjectionHead

__all__ = ["DeployedSegmentor", "Segmentor", "build_segmentor", "deploy_model", "unwrap_model"]


def input_multiple(backbone: nn.Module) -> int:
    """The size multiple a backbone's input needs: timm's HRNet fuses branches with fixed-factor
    upsampling, so sizes that are not multiples of its coarsest stride (32) fail (e.g. ADE20K's
    520 crop, or a 512x683 image); every other backbone takes any size (1)."""
    if "HighResolution" in type(backbone).__name__:
        return max(feature_reductions(backbone))
    return 1


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """``x`` zero-padded at the bottom/right to a multiple of ``multiple`` (unchanged if it is one)."""
    h, w = x.shape[-2], x.shape[-1]
    ph, pw = (multiple - h % multiple) % multiple, (multiple - w % multiple) % multiple
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, [0, pw, 0, ph])


def crop_features(feats: list[Tensor], h: int, w: int, reductions: list[int]) -> list[Tensor]:
    """Each level cropped to ``ceil(size / reduction)`` of an ``h x w`` input: the features of the
    unpadded image (a no-op when nothing was padded)."""
    out: list[Tensor] = []
    for i, f in enumerate(feats):
        r = reductions[i]
        out.append(f[:, :, : (h + r - 1) // r, : (w + r - 1) // r])
    return out


class DeployedSegmentor(nn.Module):
    """Inference model: backbone and decode head only, logits upsampled to the input size.

    Has no projection or auxiliary parameters; scriptable / traceable and exportable with
    ``torch.export.export``. Create it with :meth:`Segmentor.deploy`.

    Args:
        backbone: the timm ``features_only`` backbone.
        decode_head: the decode head.
    """

    def __init__(self, backbone: nn.Module, decode_head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head
        self.multiple = input_multiple(backbone)
        self.reductions = feature_reductions(backbone)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, K, H, W)`` for images ``(B, 3, H, W)``."""
        feats = self.backbone(pad_to_multiple(x, self.multiple))
        logits = self.decode_head(crop_features(feats, x.shape[-2], x.shape[-1], self.reductions))
        return resize(logits, [x.shape[-2], x.shape[-1]])


class Segmentor(nn.Module):
    """A timm backbone, a decode head, an optional auxiliary FCN head and a projection head.

    Build one with :func:`build_segmentor`. ``forward(x)`` returns a dict:

    * ``"logits"``: ``(B, K, h, w)`` at the decode head's resolution (the last level for ``fcn`` /
      ``deeplabv3``, the finest level for ``fpn`` and for ``head_input=concat``), not upsampled;
    * ``"aux"``: ``(B, K, h2, w2)`` auxiliary logits on the second-to-last level (only with an aux head);
    * ``"embed"``: ``(B, D, h', w')`` unit-norm projection output (only while the projection head
      exists): the last level for ``proj_input=last``, the finest level for ``concat``.

    Args:
        backbone: timm ``features_only`` model.
        decode_head: head mapping the feature list to logits.
        num_classes: K.
        aux_head: optional auxiliary head.
        proj_head: optional projection head.
        cfg: the model config it was built from (kept for reference).
    """

    def __init__(
        self,
        backbone: nn.Module,
        decode_head: nn.Module,
        num_classes: int,
        aux_head: nn.Module | None = None,
        proj_head: nn.Module | None = None,
        cfg: ModelConfig | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head
        self.aux_head = aux_head
        self.proj_head = proj_head
        self.num_classes = num_classes
        self.cfg = cfg
        self.channels = feature_channels(backbone)
        self.reductions = feature_reductions(backbone)
        self.multiple = input_multiple(backbone)

    @property
    def has_projection(self) -> bool:
        """Whether the projection head (and so ``"embed"``) exists."""
        return self.proj_head is not None

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Run the model; see the class docstring for the returned keys."""
        feats = self.backbone(pad_to_multiple(x, self.multiple))
        feats = crop_features(feats, x.shape[-2], x.shape[-1], self.reductions)
        out = {"logits": self.decode_head(feats)}
        if self.aux_head is not None:
            out["aux"] = self.aux_head(feats)
        if self.proj_head is not None:
            out["embed"] = self.proj_head(feats)
        return out

    def predict(self, x: Tensor) -> Tensor:
        """Logits upsampled (bilinear, ``align_corners=False``) to the input size ``(B, K, H, W)``.

        Skips the auxiliary and projection heads. Call ``eval()`` first for inference.
        """
        feats = self.backbone(pad_to_multiple(x, self.multiple))
        logits = self.decode_head(crop_features(feats, x.shape[-2], x.shape[-1], self.reductions))
        return resize(logits, [x.shape[-2], x.shape[-1]])

    def deploy(self) -> DeployedSegmentor:
        """A copy without projection and auxiliary heads, in eval mode, returning upsampled logits.

        ``seg.deploy()(x)`` equals ``seg.eval().predict(x)``. This segmentor is left unchanged.

        Example:
            >>> deployed = seg.deploy()
            >>> scripted = torch.jit.script(deployed)
        """
        model = DeployedSegmentor(copy.deepcopy(self.backbone), copy.deepcopy(self.decode_head))
        return model.eval()


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside DDP (``.module``) / ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def deploy_model(seg: Segmentor | nn.Module) -> DeployedSegmentor:
    """:meth:`Segmentor.deploy` that also unwraps DDP (``.module``) and ``torch.compile`` wrappers."""
    inner = unwrap_model(seg)
    if not isinstance(inner, Segmentor):
        raise TypeError(f"deploy_model expects a Segmentor, got {type(inner).__name__}")
    return inner.deploy()


def build_segmentor(cfg: ModelConfig, num_classes: int, projection: bool = True) -> Segmentor:
    """Build a :class:`Segmentor` from the model config.

    Args:
        cfg: the ``model`` section (backbone, pretrained, output_stride, out_indices, head,
            head_input, head_channels, dropout, aux_head, proj_dim, proj_input).
        num_classes: number of classes K.
        projection: create the projection head (``False`` for inference-only models).

    Returns:
        The segmentor, in training mode.

    Raises:
        ModelError: unknown backbone, unsupported ``output_stride``, an auxiliary head with a single
            feature level, or weights that cannot be loaded.

    Example:
        >>> cfg = ModelConfig(backbone="resnet18", head="fcn", output_stride=8, proj_dim=64)
        >>> seg = build_segmentor(cfg, num_classes=19)
        >>> out = seg(torch.randn(2, 3, 64, 64))
        >>> out["logits"].shape, out["embed"].shape
        (torch.Size([2, 19, 8, 8]), torch.Size([2, 64, 8, 8]))
    """
    if num_classes < 1:
        raise ModelError(f"num_classes must be >= 1, got {num_classes}")
    pretrained = cfg.pretrained
    if isinstance(pretrained, str) and pretrained.strip().lower() in ("", "false", "none", "null"):
        pretrained = False
    backbone = create_backbone(cfg, pretrained=pretrained is True)
    if isinstance(pretrained, str):
        load_pretrained_backbone(backbone, pretrained, cfg.backbone)
    channels = feature_channels(backbone)
    reductions = feature_reductions(backbone)
    decode = build_head(
        cfg.head,
        channels,
        reductions,
        cfg.head_channels,
        num_classes,
        cfg.dropout,
        head_input=cfg.head_input,
    )
    aux = None
    if cfg.aux_head:
        if len(channels) < 2:
            raise ModelError(
                f"model.aux_head=true needs at least two feature levels, but backbone "
                f"{cfg.backbone!r} with out_indices={cfg.out_indices} gives {len(channels)}"
            )
        aux = FCNHead(
            channels[-2],
            cfg.head_channels,
            num_classes,
            num_convs=1,
            dropout=cfg.dropout,
            in_index=-2,
        )
    proj = ProjectionHead(channels, cfg.proj_dim, cfg.proj_input) if projection else None
    return Segmentor(backbone, decode, num_classes, aux_head=aux, proj_head=proj, cfg=cfg)
