"""Human-readable tables of :meth:`SegMetrics.compute` results."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["format_summary", "format_table"]

_SUMMARY = ("mIoU", "mAcc", "aAcc", "fwIoU")


def _pct(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100.0 * float(value):.2f}"


def format_summary(metrics: Mapping[str, Any]) -> str:
    """One line: ``mIoU 71.23  mAcc 80.01  aAcc 94.50  fwIoU 89.10`` (percent)."""
    return "  ".join(f"{k} {_pct(metrics.get(k))}" for k in _SUMMARY if k in metrics)


def format_table(metrics: Mapping[str, Any], class_names: Sequence[str] | None = None) -> str:
    """Per-class IoU / Acc table in percent, followed by the summary line.

    Classes excluded from the means (no ground truth, no prediction) show ``-``.

    Args:
        metrics: the dict of :meth:`~raycontrast.eval.SegMetrics.compute`.
        class_names: one name per class (default: the class indices).

    Example:
        >>> print(format_table(metrics.compute(), ["road", "car"]))
        class   IoU    Acc
        -----  -----  -----
        road   98.00  99.00
        ...
    """
    iou = list(metrics.get("IoU") or [])
    acc = list(metrics.get("Acc") or [])
    k = max(len(iou), len(acc))
    names = [str(n) for n in class_names] if class_names is not None else []
    if len(names) != k:
        names = [*names[:k], *[str(i) for i in range(len(names), k)]]
    rows = [
        (names[i], _pct(iou[i] if i < len(iou) else None), _pct(acc[i] if i < len(acc) else None))
        for i in range(k)
    ]
    w0 = max([len("class"), *(len(r[0]) for r in rows)])
    w1 = max([len("IoU"), *(len(r[1]) for r in rows)])
    w2 = max([len("Acc"), *(len(r[2]) for r in rows)])
    lines = [
        f"{'class':<{w0}}  {'IoU':>{w1}}  {'Acc':>{w2}}",
        f"{'-' * w0}  {'-' * w1}  {'-' * w2}",
    ]
    lines += [f"{n:<{w0}}  {i:>{w1}}  {a:>{w2}}" for n, i, a in rows]
    lines.append(f"{'-' * w0}  {'-' * w1}  {'-' * w2}")
    lines.append(format_summary(metrics))
    return "\n".join(lines)
