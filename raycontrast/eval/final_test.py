"""The held-out test split, evaluated once at the end of a run with its last weights.

A study that selects nothing on ``test`` still needs the test set's own sampling error beside the seed
interval: :func:`per_image_confusion` keeps one confusion matrix per test image (a few kB each), so a
bootstrap over test images (:func:`raycontrast.tune._stats.bootstrap_paired_miou`) can recompute mIoU
from resampled, summed counts. ``test`` is never evaluated during training and never scores a
checkpoint: training evaluates ``data.val_split`` only.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from raycontrast import storage
from raycontrast.config import EvalConfig
from raycontrast.eval.evaluate import evaluate
from raycontrast.eval.metrics import SegMetrics, metrics_from_confusion

__all__ = ["TEST_JSON", "TEST_NPZ", "per_image_confusion", "read_per_image", "write_final_test"]

TEST_JSON = "test.json"
TEST_NPZ = "test_per_image.npz"


def per_image_confusion(
    model_fn: Callable[[Tensor], Tensor],
    dataset: Any,
    num_classes: int,
    ignore_index: int = 255,
    eval_cfg: EvalConfig | None = None,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, list[str]]:
    """``(N, K, K)`` int64, the confusion matrix (rows truth, columns prediction) of each image, and
    the images' ids.

    Each image goes through :func:`~raycontrast.eval.evaluate.evaluate` on its own, so the counts are
    exactly those of a whole-split evaluation; their sum over images is its confusion matrix.
    """
    out = np.zeros((len(dataset), num_classes, num_classes), dtype=np.int64)
    ids = []
    for i in range(len(dataset)):
        item = dataset[i]
        seg: SegMetrics = evaluate(model_fn, [item], num_classes, ignore_index, eval_cfg, device)
        out[i] = seg.confusion.numpy()
        ids.append(str(item.get("id", i)) if isinstance(item, dict) else str(i))
    return out, ids


def write_final_test(
    run_dir: str,
    confusion: np.ndarray,
    sample_ids: list[str],
    class_names: list[str],
    iteration: int,
    split: str,
) -> dict[str, Any]:
    """``<run_dir>/test.json`` (metrics of the summed counts) and ``test_per_image.npz``."""
    metrics = metrics_from_confusion(torch.as_tensor(confusion.sum(0)))
    record = {
        "split": split,
        "iteration": iteration,
        "weights": "last",
        "num_images": int(confusion.shape[0]),
        **{k: float(metrics[k]) for k in ("mIoU", "mAcc", "aAcc", "fwIoU")},
        "per_class_IoU": dict(zip(class_names, metrics["IoU"])),
    }
    buf = io.BytesIO()
    # uint32 counts: an image has far fewer than 2**32 pixels
    np.savez_compressed(
        buf, confusion=confusion.astype(np.uint32), ids=np.asarray(sample_ids), classes=class_names
    )
    storage.write_bytes(storage.join(run_dir, TEST_NPZ), buf.getvalue())
    storage.write_bytes(storage.join(run_dir, TEST_JSON), json.dumps(record, indent=2).encode())
    return record


def read_per_image(run_dir: str) -> np.ndarray | None:
    """The ``(N, K, K)`` per-image confusion counts a run saved, or ``None`` when it has none."""
    path = storage.join(run_dir, TEST_NPZ)
    if not storage.exists(path):
        return None
    with np.load(io.BytesIO(storage.read_bytes(path))) as data:
        return data["confusion"].astype(np.int64)
