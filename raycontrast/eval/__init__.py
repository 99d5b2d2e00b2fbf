"""Evaluation: streaming metrics, test-time inference (whole / slide / multi-scale + flip), the
evaluation loop and ``raycontrast eval``; ``raycontrast predict`` (predict.py), pictures of
predictions (visualize.py) and ``raycontrast report`` / run comparison (compare.py).

Example:
    >>> from raycontrast.eval import SegMetrics, evaluate, format_table
    >>> metrics = evaluate(seg.predict, val_set, num_classes=19, ignore_index=255, eval_cfg=cfg.eval)
    >>> print(format_table(metrics.compute(), class_names))
"""

from __future__ import annotations

from raycontrast.eval.compare import compare_runs, load_run
from raycontrast.eval.evaluate import evaluate, iter_batches
from raycontrast.eval.inference import MODES, infer, slide_windows
from raycontrast.eval.metrics import SegMetrics, metrics_from_confusion
from raycontrast.eval.predict import load_predictor, predict
from raycontrast.eval.report import format_summary, format_table
from raycontrast.eval.run import default_output, resolve_eval_config, run_eval
from raycontrast.eval.visualize import (
    pick_val_samples,
    sample_grid,
    write_confusion,
    write_val_samples,
)

__all__ = [
    "MODES",
    "SegMetrics",
    "compare_runs",
    "default_output",
    "evaluate",
    "format_summary",
    "format_table",
    "infer",
    "iter_batches",
    "load_predictor",
    "load_run",
    "metrics_from_confusion",
    "pick_val_samples",
    "predict",
    "resolve_eval_config",
    "run_eval",
    "sample_grid",
    "slide_windows",
    "write_confusion",
    "write_val_samples",
]
