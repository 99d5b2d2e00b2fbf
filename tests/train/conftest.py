"""A tiny synthetic experiment for end-to-end runs (seconds per iteration on 2 CPU cores)."""

from __future__ import annotations

import csv
import time
from pathlib import Path

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


def write_synthetic_folder(
    root, n_train: int = 16, n_val: int = 4, size=(64, 64), corrupt: int = 1
):
    """A ``folder`` dataset (images/<split>, masks/<split>, classes.txt) of synthetic scenes, with
    ``corrupt`` unreadable training images (their masks exist)."""
    from pathlib import Path

    from PIL import Image

    from raycontrast.data import SYNTHETIC_CLASSES, generate_scene

    root = Path(root)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image, label = generate_scene(0, split, i, size)
            Image.fromarray(image).save(root / "images" / split / f"s{i:03d}.png")
            Image.fromarray(label).save(root / "masks" / split / f"s{i:03d}.png")
    for i in range(corrupt):
        (root / "images" / "train" / f"s{i:03d}.png").write_bytes(b"not a png")
    (root / "classes.txt").write_text("\n".join(SYNTHETIC_CLASSES) + "\n")
    return root


def read_rows(run_dir: Path, name: str = "metrics.csv") -> list[dict[str, str]]:
    """Rows of a run's metrics.csv / val.csv."""
    with (Path(run_dir) / name).open() as f:
        return list(csv.DictReader(f))


def logged_iterations(run_dir: Path, name: str = "metrics.csv") -> list[int]:
    return [int(r["iteration"]) for r in read_rows(run_dir, name)]


def wait_for(predicate, timeout: float, what: str) -> None:
    """Poll ``predicate`` until it is true, failing the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")
