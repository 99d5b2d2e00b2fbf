"""Evaluate a model over a dataset or a data loader."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raycontrast._progress import progress
from raycontrast.config import EvalConfig
from raycontrast.eval.inference import infer_with
from raycontrast.eval.metrics import SegMetrics

__all__ = ["evaluate", "iter_batches"]


def _tensor(x: Any) -> Tensor:
    if isinstance(x, Tensor):
        return x
    return torch.as_tensor(np.asarray(x))


def _batch(item: Any) -> tuple[Tensor, Tensor]:
    """(images (B,3,H,W), labels (B,H,W)) from one item or batch."""
    if isinstance(item, Mapping):
        if "image" not in item or "label" not in item:
            raise KeyError(f"evaluate: items need 'image' and 'label' keys, got {sorted(item)}")
        image, label = _tensor(item["image"]), _tensor(item["label"])
    elif isinstance(item, (tuple, list)) and len(item) == 2 and not isinstance(item[0], Mapping):
        image, label = _tensor(item[0]), _tensor(item[1])
    else:
        raise TypeError(
            "evaluate: expected items like {'image': (3,H,W) or (B,3,H,W), 'label': (H,W) or "
            f"(B,H,W)}}, got {type(item).__name__}"
        )
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if label.dim() == 2:
        label = label.unsqueeze(0)
    if label.dim() == 4 and label.shape[1] == 1:
        label = label[:, 0]
    if image.dim() != 4 or label.dim() != 3 or image.shape[0] != label.shape[0]:
        raise ValueError(
            f"evaluate: image shape {tuple(image.shape)} and label shape {tuple(label.shape)} do not "
            "form a batch ((B,3,H,W) with (B,H,W))"
        )
    return image, label


def iter_batches(data: Any) -> Iterator[tuple[Tensor, Tensor]]:
    """``(images, labels)`` batches of a map-style dataset, an iterable or a DataLoader.

    An element may be one item dict, a collated batch dict, or a list of item dicts (a DataLoader
    with a list collate, for images of different sizes).
    """
    if hasattr(data, "__getitem__") and hasattr(data, "__len__") and not hasattr(data, "__iter__"):
        elements: Iterable[Any] = (data[i] for i in range(len(data)))
    else:
        elements = data
    for element in elements:
        if isinstance(element, (list, tuple)) and element and isinstance(element[0], Mapping):
            for item in element:
                yield _batch(item)
        else:
            yield _batch(element)


def _owner(model_fn: Callable[..., Any]) -> nn.Module | None:
    if isinstance(model_fn, nn.Module):
        return model_fn
    owner = getattr(model_fn, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


def evaluate(
    model_fn: Callable[[Tensor], Tensor],
    dataset_or_loader: Any,
    num_classes: int,
    ignore_index: int = 255,
    eval_cfg: EvalConfig | None = None,
    device: str | torch.device = "cpu",
    max_images: int | None = None,
    show_progress: bool | None = False,
) -> SegMetrics:
    """Run :func:`~raycontrast.eval.inference.infer` over a dataset and accumulate the metrics.

    The caller's share of the data is evaluated; in distributed training each worker calls this on
    its shard and then sums the confusion matrices (``metrics.all_reduce()``).

    Args:
        model_fn: maps images ``(b, 3, h, w)`` to logits at the same size (``seg.predict``, a
            deployed model...). When it is a module or a module's bound method, that module is put
            in eval mode for the loop and its previous mode restored afterwards.
        dataset_or_loader: map-style dataset, iterable or DataLoader yielding
            ``{"image": (3,H,W) or (B,3,H,W), "label": (H,W) or (B,H,W), ...}`` (or lists of such
            items). Logits are resized to the label's size when the two differ.
        num_classes: K.
        ignore_index: label value ignored by the metrics.
        eval_cfg: inference settings (mode, crop_size, stride, scales, flip, max_images);
            ``mode=slide`` needs ``crop_size`` here (``run_eval`` fills in ``data.crop_size``).
        device: where images are moved before inference.
        max_images: stop after this many images (default: ``eval_cfg.max_images``, else all).
        show_progress: a progress bar (``None``: only on a terminal, see
            :mod:`raycontrast._progress`); off by default (training workers evaluate silently).

    Returns:
        The accumulated :class:`~raycontrast.eval.metrics.SegMetrics`.

    Example:
        >>> metrics = evaluate(seg.predict, val_set, 19, 255, EvalConfig(mode="whole"))
        >>> metrics.compute()["mIoU"]
    """
    cfg = eval_cfg or EvalConfig()
    if cfg.mode == "slide" and cfg.crop_size is None:
        raise ValueError(
            "eval.mode=slide needs a crop size: set eval.crop_size, or pass "
            "raycontrast.eval.resolve_eval_config(experiment_cfg), which defaults it to data.crop_size"
        )
    limit = max_images if max_images is not None else cfg.max_images
    metrics = SegMetrics(num_classes, ignore_index)
    module = _owner(model_fn)
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    seen = 0
    total = len(dataset_or_loader) if hasattr(dataset_or_loader, "__len__") else None
    if total is not None and limit is not None:
        total = min(total, limit)
    bar = progress(
        total=total,
        desc="eval",
        unit="img",
        enabled=show_progress,
    )
    try:
        with torch.inference_mode():
            for images, labels in iter_batches(dataset_or_loader):
                if limit is not None and seen >= limit:
                    break
                if limit is not None and seen + images.shape[0] > limit:
                    images, labels = images[: limit - seen], labels[: limit - seen]
                images = images.to(device=device, dtype=torch.float32)
                logits = infer_with(model_fn, images, num_classes, cfg)
                if tuple(logits.shape[-2:]) != tuple(labels.shape[-2:]):
                    logits = F.interpolate(
                        logits, size=labels.shape[-2:], mode="bilinear", align_corners=False
                    )
                metrics.update(logits.argmax(1).cpu(), labels.cpu())
                seen += images.shape[0]
                metrics.num_images = seen
                bar.update(images.shape[0])
    finally:
        bar.close()
        if module is not None and was_training:
            module.train()
    return metrics
