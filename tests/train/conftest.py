"""A tiny synthetic experiment for end-to-end runs (seconds per iteration on 2 CPU cores)."""

from __future__ import annotations

import pytest

from raycontrast.config import load_config

TINY = [
    "model.backbone=resnet18",
    "model.head=fcn",
    "model.head_channels=16",
    "model.proj_dim=16",
    "model.output_stride=8",
    "data.synthetic.image_size=[64,64]",
    "data.synthetic.num_train=32",
    "data.synthetic.num_val=4",
    "data.crop_size=[64,64]",
    "data.loader_workers=0",
    "contrast.max_views=8",
    "contrast.max_samples=128",
    "contrast.memory=both",
    "contrast.memory_size=500",
    "contrast.warmup_iters=2",
    "train.batch_size=4",
    "train.iterations=4",
    "train.eval_every=2",
    "train.log_every=1",
    "train.cpus_per_worker=0.5",
    "train.collective_timeout_s=120",
]


@pytest.fixture
def tiny(tmp_path):
    """``tiny(name, *overrides)`` -> a small synthetic ExperimentConfig stored under tmp_path."""

    def make(name: str, *overrides: str):
        return load_config(
            "experiments/synthetic.yaml",
            [*TINY, f"name={name}", f"storage_path={tmp_path / 'runs'}", *overrides],
        )

    return make
