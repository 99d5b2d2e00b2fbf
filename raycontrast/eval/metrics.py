"""Streaming segmentation metrics from a confusion matrix."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["SegMetrics", "metrics_from_confusion"]


def _as_tensor(x: Any, what: str) -> Tensor:
    if not isinstance(x, Tensor):
        x = torch.from_numpy(np.ascontiguousarray(np.asarray(x)))
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"SegMetrics.update: {what} must hold integer class indices, got {x.dtype}")
    return x.long()


def _nanmean(values: Tensor) -> float:
    ok = ~torch.isnan(values)
    return float(values[ok].mean()) if bool(ok.any()) else math.nan


def metrics_from_confusion(confusion: Tensor) -> dict[str, Any]:
    """Metrics of a ``(K, K)`` confusion matrix (rows = ground truth, columns = prediction).

    See :meth:`SegMetrics.compute` for the keys and conventions.
    """
    conf = confusion.detach().to("cpu", torch.float64)
    tp = conf.diag()
    gt = conf.sum(1)
    pred = conf.sum(0)
    total = float(conf.sum())
    union = gt + pred - tp
    nan = torch.full_like(tp, math.nan)
    iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
    acc = torch.where(gt > 0, tp / gt.clamp(min=1), nan)
    if total > 0:
        freq = gt / total
        fw = float((freq[gt > 0] * iou[gt > 0]).sum())
        a_acc = float(tp.sum()) / total
    else:
        fw = a_acc = math.nan
    return {
        "mIoU": _nanmean(iou),
        "mAcc": _nanmean(acc),
        "aAcc": a_acc,
        "fwIoU": fw,
        "IoU": [None if math.isnan(v) else v for v in iou.tolist()],
        "Acc": [None if math.isnan(v) else v for v in acc.tolist()],
        "num_pixels": int(total),
        "present": [bool(v) for v in (union > 0).tolist()],
    }


class SegMetrics:
    """Streaming confusion matrix of semantic segmentation and the metrics derived from it.

    Scale: every metric is a fraction in [0, 1] (tables print them in %).

    Conventions:

    * Pixels whose label is ``ignore_index`` are skipped; any other label outside ``0..K-1`` (or a
      prediction outside it) is an error.
    * ``IoU[c] = TP / (TP + FP + FN)``. A class with no ground-truth pixel and no predicted pixel
      has an undefined IoU: it is ``None`` in the per-class list and **excluded from mIoU**. A
      class predicted but absent from the ground truth has IoU 0 and counts in mIoU.
    * ``Acc[c] = TP / (TP + FN)`` (per-class recall) is ``None`` and excluded from mAcc for classes
      without ground-truth pixels.
    * ``aAcc`` is the pixel accuracy, ``fwIoU`` the IoU weighted by ground-truth frequency.

    Distributed use: ``confusion`` is a plain ``(K, K)`` int64 tensor (rows = ground truth), so
    workers can sum it with ``torch.distributed.all_reduce`` (see :meth:`all_reduce`).

    Args:
        num_classes: K.
        ignore_index: label value excluded from the counts.

    Example:
        >>> m = SegMetrics(num_classes=3)
        >>> m.update(pred=logits.argmax(1), target=labels)
        >>> m.compute()["mIoU"]
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self.num_images = 0  # informational; counted by evaluate(), added by merge()

    def reset(self) -> None:
        """Zero the confusion matrix (and the image count)."""
        self.confusion = torch.zeros_like(self.confusion, device="cpu")
        self.num_images = 0

    def update(self, pred: Tensor | np.ndarray, target: Tensor | np.ndarray) -> None:
        """Add a batch: ``pred`` (class indices) and ``target`` of the same shape (any batch shape).

        Torch tensors (any device), numpy arrays or nested lists of integers are accepted.

        Raises:
            TypeError: floating-point or boolean inputs (pass class indices, e.g. ``argmax(1)``).
            ValueError: shapes differ, or a label/prediction lies outside ``0..K-1`` (labels equal to
                ``ignore_index`` excepted).
        """
        p = _as_tensor(pred, "pred")
        t = _as_tensor(target, "target")
        if p.shape != t.shape:
            raise ValueError(
                f"SegMetrics.update: pred shape {tuple(p.shape)} != target shape {tuple(t.shape)}"
            )
        p = p.reshape(-1).to(t.device)
        t = t.reshape(-1)
        keep = t != self.ignore_index
        p, t = p[keep], t[keep]
        k = self.num_classes
        if t.numel():
            bad_t = (t < 0) | (t >= k)
            if bool(bad_t.any()):
                values = torch.unique(t[bad_t])[:10].tolist()
                raise ValueError(
                    f"SegMetrics.update: labels {values} are outside 0..{k - 1} and not the ignore "
                    f"index {self.ignore_index}"
                )
            bad_p = (p < 0) | (p >= k)
            if bool(bad_p.any()):
                values = torch.unique(p[bad_p])[:10].tolist()
                raise ValueError(f"SegMetrics.update: predictions {values} are outside 0..{k - 1}")
        counts = torch.bincount(t * k + p, minlength=k * k).reshape(k, k)
        self.confusion = self.confusion.to("cpu") + counts.to("cpu")

    def merge(self, other: SegMetrics) -> SegMetrics:
        """Add another instance's counts into this one (same K and ignore index); returns self."""
        if other.num_classes != self.num_classes or other.ignore_index != self.ignore_index:
            raise ValueError(
                f"cannot merge SegMetrics(K={other.num_classes}, ignore={other.ignore_index}) into "
                f"SegMetrics(K={self.num_classes}, ignore={self.ignore_index})"
            )
        self.confusion = self.confusion + other.confusion.to(self.confusion.device)
        self.num_images += other.num_images
        return self

    def all_reduce(self, group: Any = None) -> SegMetrics:
        """Sum the confusion matrix over the processes of ``torch.distributed`` (in place).

        A no-op when no process group is initialised. With NCCL the matrix travels via the current
        CUDA device. Returns self.
        """
        if not (dist.is_available() and dist.is_initialized()):
            return self
        device = torch.device("cpu")
        if dist.get_backend(group) == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        buf = self.confusion.to(device)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=group)
        self.confusion = buf.cpu()
        return self

    def compute(self) -> dict[str, Any]:
        """Metrics as plain Python values (JSON-serialisable).

        Returns:
            ``mIoU``, ``mAcc``, ``aAcc``, ``fwIoU`` (floats in [0, 1], NaN when nothing was counted),
            ``IoU`` / ``Acc`` (per-class lists, ``None`` for excluded classes, see the class
            docstring), ``num_pixels`` (counted pixels) and ``present`` (per class: appears in the
            ground truth or the predictions).
        """
        return metrics_from_confusion(self.confusion)

    def __repr__(self) -> str:
        return (
            f"SegMetrics(num_classes={self.num_classes}, ignore_index={self.ignore_index}, "
            f"pixels={int(self.confusion.sum())})"
        )
