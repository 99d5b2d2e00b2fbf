"""Evaluation: streaming metrics, test-time inference (whole / slide / multi-scale + flip), the
evaluation loop and ``raycontrast eval``.

Example:
    >>> from raycontrast.eval import SegMetrics, evaluate, format_table
    >>> metrics = evaluate(seg.predict, val_set, num_classes=19, ignore_index=255, eval_cfg=cfg.eval)
    >>> print(format_table(metrics.compute(), class_names))
"""

from __future__ import annotations

from raycontrast.eval.evaluate import evaluate, iter_batches
from raycontrast.eval.inference import MODES, infer, slide_windows
from raycontrast.eval.metrics import SegMetrics, metrics_from_confusion
from raycontrast.eval.report import format_summary, format_table
from raycontrast.eval.run import default_output, resolve_eval_config, run_eval

__all__ = [
    "MODES",
    "SegMetrics",
    "default_output",
    "evaluate",
    "format_summary",
    "format_table",
    "infer",
    "iter_batches",
    "metrics_from_confusion",
    "resolve_eval_config",
    "run_eval",
    "slide_windows",
]
