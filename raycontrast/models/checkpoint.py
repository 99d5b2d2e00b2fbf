"""Checkpoints: a directory holding ``state.pt``.

``state.pt`` is a dict written with ``torch.save`` and readable with ``torch.load(weights_only=True)``::

    {"format": "raycontrast", "version": 1,
     "config": config_to_dict(experiment_config),    # plain nested dict
     "num_classes": int, "class_names": list[str],
     "model": segmentor.state_dict(),                # projection head included, no "module." prefix
     # training checkpoints only (:func:`training_state` writes them, :func:`restore_training`
     # reads them back):
     "optimizer", "scheduler", "scaler": their state_dicts,
     "iteration": int,                               # iterations done
     "best": {"mIoU", "iteration", "metrics"}, "metrics": the last evaluation,
     "rng": [per-rank RNG states],                   # index = world rank
     "bank": MemoryBank.state_dict() or None}
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from raycontrast.config import ConfigError, ExperimentConfig, config_from_dict, config_to_dict
from raycontrast.models.errors import CheckpointError, describe_load_failure
from raycontrast.models.segmentor import Segmentor, build_segmentor, unwrap_model

__all__ = [
    "ARCH_FIELDS",
    "CHECKPOINT_FILE",
    "FORMAT",
    "VERSION",
    "check_compatible",
    "checkpoint_file",
    "load_checkpoint",
    "load_segmentor",
    "load_state_dict_strict",
    "restore_training",
    "save_checkpoint",
    "training_state",
]

CHECKPOINT_FILE = "state.pt"
FORMAT = "raycontrast"
VERSION = 1
ARCH_FIELDS = (
    "backbone",
    "output_stride",
    "out_indices",
    "head",
    "head_input",
    "head_channels",
    "aux_head",
    "proj_dim",
    "proj_input",
)
"""Model-config fields that change the parameters (``pretrained`` and ``dropout`` do not)."""

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def checkpoint_file(path: str | Path) -> Path:
    """``path/state.pt`` for a directory, ``path`` itself otherwise (a file, with or without suffix)."""
    path = Path(path).expanduser()
    return path / CHECKPOINT_FILE if path.is_dir() else path


def save_checkpoint(path_dir: str | Path, state: Mapping[str, Any]) -> Path:
    """Write ``state`` to ``path_dir/state.pt`` atomically (temporary file, then rename).

    ``format``/``version`` are added when missing; an :class:`ExperimentConfig` under ``config`` is
    turned into a plain dict; ``model`` may be a module (its unwrapped ``state_dict`` is stored).

    Args:
        path_dir: checkpoint directory (created).
        state: the checkpoint dict (see the module docstring).

    Returns:
        The path of the written ``state.pt``.

    Example:
        >>> save_checkpoint(run_dir / "checkpoint_000100", {"config": config_to_dict(cfg),
        ...     "num_classes": 19, "class_names": names, "model": seg.state_dict()})
    """
    data = dict(state)
    data.setdefault("format", FORMAT)
    data.setdefault("version", VERSION)
    if isinstance(data.get("config"), ExperimentConfig):
        data["config"] = config_to_dict(data["config"])
    if isinstance(data.get("model"), nn.Module):
        data["model"] = unwrap_model(data["model"]).state_dict()
    if isinstance(data.get("model"), Mapping):
        data["model"] = _strip_wrappers(data["model"])
    directory = Path(path_dir).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / CHECKPOINT_FILE
    fd, tmp = tempfile.mkstemp(prefix=f".{CHECKPOINT_FILE}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint (its directory or its ``state.pt``) with ``torch.load(weights_only=True)``.

    Raises:
        CheckpointError: the file is missing, unreadable, or not a raycontrast checkpoint.

    Example:
        >>> state = load_checkpoint("runs/synthetic/checkpoint_000400")
        >>> state["num_classes"], state["class_names"][:2]
    """
    file = checkpoint_file(path)
    if not file.is_file():
        if Path(path).expanduser().is_dir():
            where = f"directory {path} has no {CHECKPOINT_FILE}"
        else:
            where = f"{path} does not exist"
        raise CheckpointError(
            f"checkpoint not found: {where}; pass a checkpoint directory of a run "
            f"(<run dir>/checkpoint_*/) or its {CHECKPOINT_FILE}"
        )
    try:
        state = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as err:
        # torch's own message suggests weights_only=False, which would run code from the file
        raise CheckpointError(
            f"cannot read checkpoint {file}: {describe_load_failure(err)}; pass a checkpoint "
            f"directory written by `raycontrast train` or its {CHECKPOINT_FILE}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{file} is not a raycontrast checkpoint (expected a dict with format={FORMAT!r}); "
            "export a trained run's checkpoint directory, or pass backbone weights via "
            "model.pretrained=/path/to/file instead"
        )
    version = state.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(
            f"{file} has checkpoint version {version!r}; this raycontrast reads versions <= {VERSION}"
        )
    missing = [k for k in ("config", "num_classes", "model") if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {file} lacks key(s) {missing}")
    return state


def _strip_wrappers(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out = dict(sd)
    for prefix in _WRAPPER_PREFIXES:
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix) :]: v for k, v in out.items()}
    return out


def _list(keys: list[str], limit: int = 10) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, Tensor], source: str) -> None:
    """``model.load_state_dict`` that reports missing, unexpected and mis-shaped keys by name.

    Raises:
        CheckpointError: any key or shape mismatch (``source`` names the checkpoint).
    """
    sd = _strip_wrappers(state_dict)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [
        f"{k} (checkpoint {tuple(sd[k].shape)}, model {tuple(v.shape)})"
        for k, v in own.items()
        if k in sd and tuple(sd[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_list(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches: {_list(shapes, 6)}")
    if problems:
        raise CheckpointError(f"weights of {source} do not fit the model: " + "; ".join(problems))
    model.load_state_dict(sd, strict=True)


def _arch(cfg: ExperimentConfig, num_classes: int) -> dict[str, Any]:
    arch = {f: getattr(cfg.model, f) for f in ARCH_FIELDS}
    arch["num_classes"] = num_classes
    return arch


def _describe(arch: dict[str, Any], keys: list[str]) -> str:
    parts = []
    for k in keys:
        if k == "num_classes":
            parts.append(f"{arch[k]} classes")
        else:
            parts.append(f"{k} {arch[k]!r}")
    return ", ".join(parts)


def _stored_config(state: Mapping[str, Any], source: str) -> ExperimentConfig:
    try:
        return config_from_dict(ExperimentConfig, state["config"], source=f"checkpoint {source}")
    except ConfigError as err:
        raise CheckpointError(
            f"the config stored in checkpoint {source} is not valid: {err}"
        ) from err


def check_compatible(
    state: Mapping[str, Any],
    expect: ExperimentConfig | None = None,
    num_classes: int | None = None,
    source: str = "checkpoint",
) -> None:
    """Raise :class:`CheckpointError` when a loaded checkpoint's architecture or class count differs
    from ``expect`` / ``num_classes``, naming both (e.g. resuming a run name with another model)."""
    _check_arch(
        _stored_config(state, source),
        int(state["num_classes"]),
        _has_projection(_strip_wrappers(state["model"])),
        expect,
        num_classes,
        source,
    )


def _has_projection(weights: Mapping[str, Any]) -> bool:
    # runs without pixel contrast (contrast.enabled=false) train and save no projection head
    return any(k.startswith("proj_head.") for k in weights)


def _check_arch(
    cfg: ExperimentConfig,
    k_ckpt: int,
    projection: bool,
    expect: ExperimentConfig | None,
    num_classes: int | None,
    source: str,
) -> None:
    """:func:`check_compatible` on a checkpoint's already parsed config, class count and heads."""
    have = _arch(cfg, k_ckpt)
    if not projection:
        have = {k: v for k, v in have.items() if not k.startswith("proj_")}
    want = dict(have)
    if expect is not None:
        want.update({k: v for k, v in _arch(expect, k_ckpt).items() if k in have})
    if num_classes is not None:
        want["num_classes"] = int(num_classes)
    diff = [k for k in have if have[k] != want[k]]
    if diff:
        shown = [
            "backbone",
            *[k for k in diff if k not in ("backbone", "num_classes")],
            "num_classes",
        ]
        raise CheckpointError(
            f"checkpoint {source} was trained with {_describe(have, shown)}; this config asks for "
            f"{_describe(want, shown)}"
        )


def load_segmentor(
    path: str | Path,
    expect: ExperimentConfig | None = None,
    num_classes: int | None = None,
) -> tuple[Segmentor, ExperimentConfig]:
    """Rebuild a segmentor from a checkpoint's own config and load its weights.

    The backbone is created without downloading or reading pretrained weights (the checkpoint has
    them). The model is returned in eval mode, on the CPU, with its projection head when the
    checkpoint has one (runs with ``contrast.enabled=false`` save none).

    Args:
        path: checkpoint directory or ``state.pt``.
        expect: a config whose architecture (:data:`ARCH_FIELDS` of ``model``) must match.
        num_classes: the class count the caller needs (e.g. the dataset's).

    Returns:
        ``(segmentor, the checkpoint's ExperimentConfig)``.

    Raises:
        CheckpointError: unreadable checkpoint, architecture or class-count mismatch (naming both),
            or state-dict keys/shapes that do not fit (listing the keys).

    Example:
        >>> seg, cfg = load_segmentor("runs/synthetic/checkpoint_000400", expect=my_cfg)
        >>> logits = seg.predict(images)
    """
    state = load_checkpoint(path)
    source = str(checkpoint_file(path))
    cfg = _stored_config(state, source)
    k_ckpt = int(state["num_classes"])
    weights = _strip_wrappers(state["model"])
    projection = _has_projection(weights)
    _check_arch(cfg, k_ckpt, projection, expect, num_classes, source)
    seg = build_segmentor(dataclasses.replace(cfg.model, pretrained=False), k_ckpt, projection)
    seg.cfg = cfg.model
    load_state_dict_strict(seg, weights, f"checkpoint {source}")
    return seg.eval(), cfg


def training_state(
    cfg: ExperimentConfig,
    class_names: list[str],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    iteration: int,
    best: dict[str, Any],
    metrics: dict[str, Any],
    rng: list[dict[str, Any]],
    bank: Any = None,
) -> dict[str, Any]:
    """The checkpoint dict of a training run (the module docstring's schema)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "config": config_to_dict(cfg),
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "model": unwrap_model(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "iteration": int(iteration),
        "best": best,
        "metrics": metrics,
        "rng": rng,
        "bank": bank.state_dict() if bank is not None else None,
    }


def restore_training(
    state: Mapping[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    source: str,
) -> dict[str, Any]:
    """Load a :func:`training_state` checkpoint into the training objects.

    Returns the rest of the run's state: ``iteration``, ``best``, ``metrics``, ``rng`` (per-rank list)
    and ``bank`` (a ``MemoryBank`` state dict or ``None``).

    Raises:
        CheckpointError: keys or shapes of the model weights do not fit (``source`` names the file).
    """
    load_state_dict_strict(unwrap_model(model), state["model"], source)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    return {
        "iteration": int(state["iteration"]),
        "best": dict(state["best"]),
        "metrics": dict(state["metrics"]),
        "rng": list(state["rng"]),
        "bank": state.get("bank"),
    }
