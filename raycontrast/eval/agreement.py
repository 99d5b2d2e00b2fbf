"""Why ``raycontrast eval`` of a run's checkpoint may not print the run's own mIoU to the last digit.

The run measured mIoU at the checkpoint's iteration and stored it in the checkpoint (``metrics``).
:func:`explain` compares that with a new evaluation and names the cause of a difference: other data
or eval settings than the run's (``config.yaml`` of the run reproduces them), or, with the same
settings, floating point (the run's workers used their own torch thread count; a pixel whose two top
classes are within rounding can flip).
"""

from __future__ import annotations

from typing import Any

from raycontrast.config import ExperimentConfig, config_to_dict

__all__ = ["explain", "setting_differences"]

_DATA_KEYS = ("dataset", "root", "val_split", "source", "parquet_dir", "synthetic", "ignore_index")


def setting_differences(run: ExperimentConfig, now: ExperimentConfig) -> list[str]:
    """``key: run value -> this value`` for the data and eval keys that decide what is measured."""
    out = []
    a, b = config_to_dict(run), config_to_dict(now)
    for key in _DATA_KEYS:
        if a["data"].get(key) != b["data"].get(key):
            out.append(f"data.{key}: {a['data'].get(key)!r} -> {b['data'].get(key)!r}")
    for key in a["eval"]:
        if a["eval"].get(key) != b["eval"].get(key):
            out.append(f"eval.{key}: {a['eval'].get(key)!r} -> {b['eval'].get(key)!r}")
    return out


def explain(
    state: dict[str, Any], run_cfg: ExperimentConfig, cfg: ExperimentConfig, miou: float
) -> str:
    """One line comparing ``miou`` (this evaluation) with the run's own at the checkpoint."""
    run_metrics = state.get("metrics") or {}
    run_miou = run_metrics.get("mIoU")
    iteration = state.get("iteration")
    if not isinstance(run_miou, (int, float)):
        return "the checkpoint holds no mIoU of its run to compare with"
    head = f"the run measured mIoU {100 * run_miou:.2f} at iteration {iteration}; this evaluation {100 * miou:.2f}"
    diffs = setting_differences(run_cfg, cfg)
    if diffs:
        return (
            f"{head}: other settings than the run's ({'; '.join(diffs)}); pass the run's "
            "config.yaml to measure what it measured"
        )
    if round(100 * run_miou, 2) == round(100 * miou, 2):
        return f"{head}: they agree (same data and eval settings)"
    gap = abs(100 * (run_miou - miou))
    why = (
        "floating point: the run's workers evaluated with their own torch thread count "
        f"(train.cpus_per_worker={run_cfg.train.cpus_per_worker}), this process with another, and a "
        "pixel whose two top classes are within rounding can flip"
    )
    if gap > 0.1:
        why = "unexpected with the same data and settings: please report it"
    return f"{head}: same data and eval settings, {gap:.2f} points apart ({why})"
