"""Segmentation models: timm backbones, decode heads, the training-only projection head,
checkpoints and export.

Example:
    >>> from raycontrast.config import ModelConfig
    >>> from raycontrast.models import build_segmentor
    >>> seg = build_segmentor(ModelConfig(backbone="resnet18", head="fcn"), num_classes=19)
    >>> out = seg(torch.randn(2, 3, 64, 64))   # {"logits", "embed"}
    >>> deployed = seg.deploy()                # no projection head; logits at the input size
"""

from __future__ import annotations

from raycontrast.models.backbone import create_backbone
from raycontrast.models.checkpoint import (
    check_compatible,
    load_checkpoint,
    load_segmentor,
    save_checkpoint,
)
from raycontrast.models.errors import CheckpointError, ModelError
from raycontrast.models.export import export_checkpoint, export_model
from raycontrast.models.heads import HEADS, build_head
from raycontrast.models.projection import ProjectionHead
from raycontrast.models.segmentor import DeployedSegmentor, Segmentor, build_segmentor

__all__ = [
    "HEADS",
    "CheckpointError",
    "DeployedSegmentor",
    "ModelError",
    "ProjectionHead",
    "Segmentor",
    "build_head",
    "build_segmentor",
    "check_compatible",
    "create_backbone",
    "export_checkpoint",
    "export_model",
    "load_checkpoint",
    "load_segmentor",
    "save_checkpoint",
]
