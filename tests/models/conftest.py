"""Shared helpers of the model tests: tiny configs and an experiment config for checkpoints."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from raycontrast.config import ExperimentConfig, ModelConfig

# Small timm backbones and an output stride each supports (HRNet cannot be dilated).
BACKBONES = {
    "resnet18": dict(output_stride=8, out_indices=[1, 2, 3, 4]),
    "hrnet_w18_small": dict(output_stride=None, out_indices=[1, 2, 3, 4]),
    "convnext_atto": dict(output_stride=16, out_indices=None),
    "mobilenetv3_small_100": dict(output_stride=16, out_indices=[1, 2, 3, 4]),
}


def tiny_model(backbone: str = "resnet18", **overrides) -> ModelConfig:
    """A fast ModelConfig (no pretrained weights, small head)."""
    base = dict(
        backbone=backbone,
        pretrained=False,
        head="fcn",
        head_channels=16,
        dropout=0.1,
        proj_dim=8,
        **BACKBONES.get(backbone, {}),
    )
    base.update(overrides)
    return ModelConfig(**base)


def tiny_experiment(**model_overrides) -> ExperimentConfig:
    """An ExperimentConfig around :func:`tiny_model` with a 32x32 training crop."""
    cfg = ExperimentConfig()
    cfg.model = tiny_model(**model_overrides)
    cfg.data = dataclasses.replace(cfg.data, crop_size=[32, 32])
    return cfg


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny convolutions run faster and far steadier on one thread on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
