"""Test-time inference: whole image, sliding window, multi-scale and flip."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from raycontrast.config import EvalConfig

__all__ = ["MODES", "infer", "infer_with", "slide_windows"]

MODES = ("whole", "slide", "multiscale")
"""Test-time inference modes (the choices of ``eval.mode``)."""

ModelFn = Callable[[Tensor], Tensor]


def _pair(value: int | Sequence[int] | None, what: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        value = (value, value)
    if len(value) != 2 or min(value) < 1:
        raise ValueError(f"{what} must be [height, width] with positive values, got {value!r}")
    return int(value[0]), int(value[1])


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _run(model_fn: ModelFn, x: Tensor, num_classes: int) -> Tensor:
    """Call the model and check / fix its output to ``(B, K, h, w)`` at ``x``'s size."""
    out = model_fn(x)
    if isinstance(out, dict):
        out = out["logits"]
    if out.dim() != 4 or out.shape[0] != x.shape[0] or out.shape[1] != num_classes:
        raise ValueError(
            f"model_fn returned shape {tuple(out.shape)} for input {tuple(x.shape)}; expected "
            f"logits (B={x.shape[0]}, K={num_classes}, H, W)"
        )
    return _resize(out.float(), (x.shape[-2], x.shape[-1]))


def slide_windows(
    height: int, width: int, crop: tuple[int, int], stride: tuple[int, int]
) -> list[tuple[int, int, int, int]]:
    """Windows ``(y0, y1, x0, x1)`` covering an image at least as large as ``crop``.

    Windows start every ``stride`` pixels; the last row/column is shifted to end at the border.
    """
    ch, cw = crop
    sh, sw = stride
    rows = max(math.ceil((height - ch) / sh), 0) + 1
    cols = max(math.ceil((width - cw) / sw), 0) + 1
    out = []
    for r in range(rows):
        y0 = min(r * sh, height - ch)
        for c in range(cols):
            x0 = min(c * sw, width - cw)
            out.append((y0, y0 + ch, x0, x0 + cw))
    return out


def _slide(
    model_fn: ModelFn, x: Tensor, num_classes: int, crop: tuple[int, int], stride: tuple[int, int]
) -> Tensor:
    b, _, h, w = x.shape
    ch, cw = crop
    pad_h, pad_w = max(ch - h, 0), max(cw - w, 0)
    if pad_h or pad_w:  # zero padding: the mean colour of normalised images
        x = F.pad(x, (0, pad_w, 0, pad_h))
    hp, wp = x.shape[-2:]
    logits = x.new_zeros(b, num_classes, hp, wp, dtype=torch.float32)
    count = x.new_zeros(1, 1, hp, wp, dtype=torch.float32)
    for y0, y1, x0, x1 in slide_windows(hp, wp, crop, stride):
        logits[:, :, y0:y1, x0:x1] += _run(model_fn, x[:, :, y0:y1, x0:x1], num_classes)
        count[:, :, y0:y1, x0:x1] += 1
    return (logits / count)[:, :, :h, :w]


def infer(
    model_fn: ModelFn,
    images: Tensor,
    num_classes: int,
    mode: str = "whole",
    crop_size: int | Sequence[int] | None = None,
    stride: int | Sequence[int] | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
) -> Tensor:
    """Logits ``(B, K, H, W)`` of ``images`` ``(B, 3, H, W)`` with test-time augmentation.

    For each scale in ``scales`` the images are resized (bilinear), predicted, and the logits resized
    back to ``(H, W)``; with ``flip`` the horizontally flipped images are predicted too (and their
    logits flipped back). The result is the mean of these logits.

    The prediction at one scale is, by ``mode``:

    * ``whole``: one call on the whole image;
    * ``slide``: windows of ``crop_size`` every ``stride`` pixels (default: 2/3 of the crop), the
      overlapping logits averaged with a count map; images smaller than the crop are zero-padded
      (bottom/right) and the padding cropped away afterwards;
    * ``multiscale``: like ``whole``, or like ``slide`` when ``crop_size`` is given; it is the mode
      meant for several ``scales`` (which the other modes honour as well).

    Args:
        model_fn: maps ``(b, 3, h, w)`` to logits at the same size (e.g. ``seg.predict`` or a
            deployed model); a dict output's ``"logits"`` is used, and other sizes are resized.
        images: normalised images ``(B, 3, H, W)``.
        num_classes: K.
        mode: ``whole``, ``slide`` or ``multiscale``.
        crop_size: sliding-window size ``[h, w]`` (or an int); required for ``slide``.
        stride: sliding-window step ``[h, w]`` (or an int).
        scales: resize factors.
        flip: also average the horizontally flipped prediction.

    Example:
        >>> seg.eval()
        >>> with torch.no_grad():
        ...     logits = infer(seg.predict, images, 19, mode="slide", crop_size=(512, 1024))
        >>> pred = logits.argmax(1)
    """
    if mode not in MODES:
        raise ValueError(f"inference mode {mode!r} is not one of: {', '.join(MODES)}")
    if images.dim() != 4:
        raise ValueError(f"infer expects images (B, 3, H, W), got shape {tuple(images.shape)}")
    crop = _pair(crop_size, "crop_size")
    if mode == "slide" and crop is None:
        raise ValueError("mode='slide' needs crop_size (eval.crop_size or data.crop_size)")
    step = _pair(stride, "stride")
    if crop is not None and step is None:
        step = (max(1, crop[0] * 2 // 3), max(1, crop[1] * 2 // 3))
    if not scales or min(scales) <= 0:
        raise ValueError(f"scales must be positive factors, got {list(scales)!r}")
    use_slide = crop is not None and mode in ("slide", "multiscale")
    h, w = images.shape[-2:]
    total: Tensor | None = None
    n = 0
    for scale in scales:
        size = (h, w) if scale == 1.0 else (max(1, round(h * scale)), max(1, round(w * scale)))
        x = _resize(images, size)
        views = [x, x.flip(-1)] if flip else [x]
        for i, view in enumerate(views):
            if use_slide:
                out = _slide(model_fn, view, num_classes, crop, step)  # type: ignore[arg-type]
            else:
                out = _run(model_fn, view, num_classes)
            if i == 1:
                out = out.flip(-1)
            out = _resize(out, (h, w))
            total = out if total is None else total + out
            n += 1
    assert total is not None
    return total / n


def infer_with(model_fn: ModelFn, images: Tensor, num_classes: int, cfg: EvalConfig) -> Tensor:
    """:func:`infer` with the test-time settings (mode, crop, stride, scales, flip) of ``cfg``."""
    return infer(
        model_fn,
        images,
        num_classes,
        mode=cfg.mode,
        crop_size=cfg.crop_size,
        stride=cfg.stride,
        scales=cfg.scales,
        flip=cfg.flip,
    )
