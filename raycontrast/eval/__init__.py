"""Evaluation: streaming metrics, test-time inference (whole / slide / multi-scale + flip), the
evaluation loop and ``raycontrast eval`` (:func:`run_eval`), ``raycontrast predict`` (:func:`predict`)
and ``raycontrast report`` / run comparison (:func:`compare_runs`). Pictures and plots are internal.

Example:
    >>> from raycontrast.eval import SegMetrics, evaluate, format_table
    >>> metrics = evaluate(seg.predict, val_set, num_classes=19, ignore_index=255, eval_cfg=cfg.eval)
    >>> print(format_table(metrics.compute(), class_names))
"""

from __future__ import annotations

from raycontrast.eval.compare import compare_runs, load_run
from raycontrast.eval.evaluate import evaluate
from raycontrast.eval.inference import MODES, infer
from raycontrast.eval.metrics import SegMetrics
from raycontrast.eval.predict import load_predictor, predict
from raycontrast.eval.report import format_table
from raycontrast.eval.run import run_eval

__all__ = [
    "MODES",
    "SegMetrics",
    "compare_runs",
    "evaluate",
    "format_table",
    "infer",
    "load_predictor",
    "load_run",
    "predict",
    "run_eval",
]
