"""``raycontrast eval CONFIG CHECKPOINT``: evaluate a checkpoint on the validation split."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from raycontrast.config import ConfigError, EvalConfig, ExperimentConfig, config_to_dict
from raycontrast.eval.evaluate import evaluate
from raycontrast.eval.report import format_table

__all__ = ["default_output", "resolve_eval_config", "run_eval"]


def resolve_eval_config(cfg: ExperimentConfig) -> EvalConfig:
    """``cfg.eval`` with the sliding-window crop defaulting to ``data.crop_size`` (mode ``slide``)."""
    ev = cfg.eval
    if ev.mode == "slide" and ev.crop_size is None:
        ev = dataclasses.replace(ev, crop_size=list(cfg.data.crop_size))
    return ev


def default_output(checkpoint: str | Path, split: str) -> Path:
    """``<checkpoint dir>/eval_<split>.json``."""
    path = Path(checkpoint).expanduser()
    directory = path if path.is_dir() else path.parent
    return directory / f"eval_{split}.json"


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def run_eval(cfg: ExperimentConfig, checkpoint: str, out: str | None = None) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on ``cfg.data.val_split`` with ``cfg.eval``; print and save the results.

    The model is rebuilt from the checkpoint's own config; its architecture and class count must
    match ``cfg`` and the dataset (else :class:`~raycontrast.models.CheckpointError`). Runs on the GPU
    when one is available. Prints a per-class table (IoU / Acc in %) and the summary, and writes JSON
    (metrics as fractions in [0, 1], ``null`` for excluded classes) to ``out`` (default
    ``<checkpoint dir>/eval_<split>.json``).

    Args:
        cfg: experiment config (data and eval sections are used; model must match the checkpoint).
        checkpoint: checkpoint directory or ``state.pt``.
        out: JSON output path.

    Returns:
        The dict written as JSON: ``checkpoint``, ``dataset``, ``split``, ``num_images``,
        ``class_names``, ``eval`` (settings used), ``metrics`` (see ``SegMetrics.compute``), ``output``.

    Example:
        >>> cfg = load_config("experiments/synthetic.yaml", ["eval.mode=slide"])
        >>> result = run_eval(cfg, "runs/synthetic/checkpoint_000400")
        >>> result["metrics"]["mIoU"]
    """
    from raycontrast.data import build_dataset, dataset_info
    from raycontrast.models import load_segmentor

    split = cfg.data.val_split
    path = Path(out).expanduser() if out else default_output(checkpoint, split)
    if path.is_dir():  # checked before the (long) evaluation, not after it
        raise ConfigError(
            f"--out {path} is a directory; pass the JSON file to write, e.g. --out "
            f"{path / f'eval_{split}.json'}"
        )
    from raycontrast.models.checkpoint import checkpoint_file
    from raycontrast.outputs import check_output

    inputs = {k: v for k, v in cfg.input_paths().items() if k.startswith("data.")}
    check_output(path, {**inputs, "the checkpoint": checkpoint_file(checkpoint)})
    info = dataset_info(cfg.data)
    class_names = list(info.class_names)
    num_classes = int(info.num_classes)
    seg, ckpt_cfg = load_segmentor(checkpoint, expect=cfg, num_classes=num_classes)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    seg.to(device)
    dataset = build_dataset(cfg.data, split, train=False)
    workers = cfg.data.loader_workers
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers)
    eval_cfg = resolve_eval_config(cfg)
    metrics = evaluate(
        seg.predict,
        loader,
        num_classes,
        ignore_index=cfg.data.ignore_index,
        eval_cfg=eval_cfg,
        device=device,
        show_progress=None,
    )
    results = metrics.compute()
    title = (
        f"{cfg.data.dataset} / {split}: {metrics.num_images} images, mode={eval_cfg.mode}"
        f"{', flip' if eval_cfg.flip else ''}"
        f"{', scales=' + str(eval_cfg.scales) if eval_cfg.scales != [1.0] else ''}"
    )
    print(title)
    print(format_table(results, class_names))
    from raycontrast.eval.agreement import explain
    from raycontrast.models import load_checkpoint

    agreement = explain(load_checkpoint(checkpoint), ckpt_cfg, cfg, results["mIoU"])
    print(f"raycontrast: {agreement}")
    record = {
        "checkpoint": str(checkpoint),
        "experiment": ckpt_cfg.name,
        "dataset": cfg.data.dataset,
        "split": split,
        "num_images": metrics.num_images,
        "class_names": class_names,
        "eval": config_to_dict(eval_cfg),
        "metrics": _json_safe(results),
        "agreement": agreement,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    record["output"] = str(path)
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"raycontrast: wrote {path}")
    return record
