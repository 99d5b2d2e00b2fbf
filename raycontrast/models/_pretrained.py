"""Backbone weights from a local file (``model.pretrained: /path/to/file``).

The file holds a timm state dict of the backbone's architecture: the output of
``timm.create_model(name).state_dict()`` saved with ``torch.save`` (``.pth``/``.pt``/``.bin``), or
the hub's ``model.safetensors``. The dict may sit under a ``"state_dict"`` or ``"model"`` key and
its keys may carry a ``module.``/``backbone.``/``encoder.`` prefix. Keys are matched to the
``features_only`` backbone modulo timm's renaming of flattened stages (``stages.0.x`` is
``stages_0.x`` there). Keys the backbone does not have (the classifier) are ignored; a backbone
parameter missing from the file, or any shape mismatch, is an error naming the keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from raycontrast.models.errors import ModelError, describe_load_failure

__all__ = ["PretrainedReport", "load_pretrained_backbone", "read_state_dict"]

_PREFIXES = ("", "module.", "backbone.", "module.backbone.", "encoder.", "model.")
_NESTED = ("state_dict", "model", "model_state", "module")


def _norm(key: str) -> str:
    return key.replace(".", "_")


def _keys_text(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a tensor dict from a ``.safetensors`` file or a ``torch.save`` file (weights only).

    A dict nested under ``"state_dict"``, ``"model"``, ``"model_state"`` or ``"module"`` is unwrapped.

    Raises:
        ModelError: missing or unreadable file, or no tensor dict inside.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelError(f"model.pretrained: weights file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as err:
            raise ModelError(
                f"model.pretrained={path} is a .safetensors file but the safetensors package is "
                "not installed; install it or save the weights with torch.save"
            ) from err
        return dict(load_file(str(path), device="cpu"))
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ModelError(
            f"model.pretrained: cannot read {path}: {describe_load_failure(err)}; pass a state "
            "dict saved with torch.save or a .safetensors file"
        ) from None
    for _ in range(3):
        if not isinstance(data, Mapping):
            break
        if any(isinstance(v, Tensor) for v in data.values()):
            break
        nested = next((data[k] for k in _NESTED if isinstance(data.get(k), Mapping)), None)
        if nested is None:
            break
        data = nested
    if not isinstance(data, Mapping) or not any(isinstance(v, Tensor) for v in data.values()):
        raise ModelError(
            f"model.pretrained: {path} holds no state dict (expected a dict of tensors, possibly "
            f"under one of {list(_NESTED)})"
        )
    return {str(k): v for k, v in data.items() if isinstance(v, Tensor)}


@dataclass
class PretrainedReport:
    """What :func:`load_pretrained_backbone` did.

    Args:
        loaded: backbone keys that received weights.
        ignored: keys of the file the backbone does not have (e.g. the classifier).
        prefix: the key prefix stripped from the file's keys ("" if none).
    """

    loaded: list[str]
    ignored: list[str]
    prefix: str


def _match(model_keys: list[str], source: Mapping[str, Tensor]) -> tuple[str, dict[str, str]]:
    """Best prefix and a map model key -> source key."""
    best: tuple[str, dict[str, str]] = ("", {})
    for prefix in _PREFIXES:
        stripped = {k[len(prefix) :]: k for k in source if k.startswith(prefix)}
        by_norm: dict[str, str | None] = {}
        for k, orig in stripped.items():
            n = _norm(k)
            by_norm[n] = None if n in by_norm else orig  # None marks an ambiguous normalised key
        mapping = {}
        for mk in model_keys:
            if mk in stripped:
                mapping[mk] = stripped[mk]
            elif by_norm.get(_norm(mk)):
                mapping[mk] = by_norm[_norm(mk)]  # type: ignore[assignment]
        if len(mapping) > len(best[1]):
            best = (prefix, mapping)
    return best


def load_pretrained_backbone(
    backbone: nn.Module, path: str | Path, name: str = ""
) -> PretrainedReport:
    """Copy weights from a local file into a timm ``features_only`` backbone.

    Args:
        backbone: the model from :func:`raycontrast.models.backbone.create_backbone`.
        path: ``.pth``/``.pt``/``.bin`` (torch.save) or ``.safetensors`` file.
        name: the backbone's timm name, for error messages.

    Returns:
        A :class:`PretrainedReport` with the loaded keys, the file's ignored keys and the prefix used.

    Raises:
        ModelError: no key of the file matches the backbone, a backbone parameter is missing from
            the file, or shapes differ; the message lists the keys.

    Example:
        >>> torch.save(timm.create_model("resnet18").state_dict(), "r18.pth")
        >>> seg = build_segmentor(ModelConfig(backbone="resnet18", pretrained="r18.pth"), 19)
    """
    source = read_state_dict(path)
    target = backbone.state_dict()
    what = f"backbone {name!r}" if name else "the backbone"
    prefix, mapping = _match(list(target), source)
    if not mapping:
        raise ModelError(
            f"model.pretrained: no key of {path} matches {what}. File keys: "
            f"{_keys_text(sorted(source))}; backbone keys: {_keys_text(list(target))}. Save the "
            f"weights of the same timm architecture (timm.create_model(name).state_dict())"
        )
    missing = [k for k in target if k not in mapping and not k.endswith("num_batches_tracked")]
    if missing:
        raise ModelError(
            f"model.pretrained: {path} lacks {len(missing)} parameter(s) of {what}: "
            f"{_keys_text(missing)}"
        )
    bad = [
        f"{k} (file {tuple(source[s].shape)}, model {tuple(target[k].shape)})"
        for k, s in mapping.items()
        if source[s].shape != target[k].shape
    ]
    if bad:
        raise ModelError(
            f"model.pretrained: shape mismatch between {path} and {what}: {_keys_text(bad, 8)}"
        )
    new_state = {k: source[s].to(target[k].dtype) for k, s in mapping.items()}
    backbone.load_state_dict(new_state, strict=False)
    used = set(mapping.values())
    return PretrainedReport(
        loaded=sorted(mapping), ignored=sorted(k for k in source if k not in used), prefix=prefix
    )
