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
    load_state_dict_strict,
    save_checkpoint,
)
from raycontrast.models.errors import CheckpointError, ModelError
from raycontrast.models.export import export_checkpoint, export_model
from raycontrast.models.heads import DeepLabV3Head, FCNHead, FPNHead, build_head
from raycontrast.models.pretrained import load_pretrained_backbone
from raycontrast.models.projection import ProjectionHead
from raycontrast.models.segmentor import (
    DeployedSegmentor,
    Segmentor,
    build_segmentor,
    deploy_model,
    unwrap_model,
)
from raycontrast.models.sync_bn import convert_sync_batchnorm

__all__ = [
    "CheckpointError",
    "DeepLabV3Head",
    "DeployedSegmentor",
    "FCNHead",
    "FPNHead",
    "ModelError",
    "ProjectionHead",
    "Segmentor",
    "build_head",
    "build_segmentor",
    "check_compatible",
    "convert_sync_batchnorm",
    "create_backbone",
    "deploy_model",
    "export_checkpoint",
    "export_model",
    "load_checkpoint",
    "load_pretrained_backbone",
    "load_segmentor",
    "load_state_dict_strict",
    "save_checkpoint",
    "unwrap_model",
]
