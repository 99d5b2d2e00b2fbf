"""Backbones: any timm model created with ``features_only=True``.

A backbone maps an image batch ``(B, 3, H, W)`` to a list of feature maps, finest first. Its
``feature_info`` gives each level's channels and reduction (stride w.r.t. the input).

Choices made here:

* ``output_stride`` is passed to timm, which dilates the last stages of the backbones that support
  it (ResNets, ConvNeXt, EfficientNet, MobileNetV3, ...). A backbone that cannot be dilated (HRNet,
  most transformers) raises :class:`~raycontrast.models.errors.ModelError` naming the backbone and
  asking for ``model.output_stride=null``; nothing falls back silently, because the decode head's
  resolution would change behind the user's back.
* HRNet (``hrnet_*``) returns its raw multi-resolution branches (timm ``feature_location=''``:
  48/96/192/384 channels for W48 at strides 4/8/16/32) rather than timm's default classification
  "incre" features; these are what HRNetV2 segmentation concatenates (``model.head_input=concat``,
  ``model.proj_input=concat``). With ``model.out_indices: null`` an HRNet uses its four branches
  (indices 1-4); the stride-2 stem (index 0) is used only when listed explicitly.
"""

from __future__ import annotations

import difflib
import os
from typing import Any

import timm
from torch import nn

from raycontrast.config import ModelConfig
from raycontrast.models.errors import ModelError

__all__ = [
    "HRNET_BRANCHES",
    "backbone_kwargs",
    "create_backbone",
    "feature_channels",
    "feature_reductions",
    "hub_offline",
]

_OFFLINE_VALUES = ("1", "true", "yes", "on")
HRNET_BRANCHES = (1, 2, 3, 4)
"""HRNet levels used when ``model.out_indices`` is null: the four branches, not the stride-2 stem."""


def backbone_kwargs(cfg: ModelConfig, output_stride: int | None = None) -> dict[str, Any]:
    """Keyword arguments for ``timm.create_model`` (without ``pretrained``)."""
    kwargs: dict[str, Any] = {"features_only": True}
    if cfg.out_indices is not None:
        kwargs["out_indices"] = tuple(cfg.out_indices)
    if cfg.backbone.startswith("hrnet"):
        kwargs["feature_location"] = ""
        if cfg.out_indices is None:
            kwargs["out_indices"] = HRNET_BRANCHES
    if output_stride is not None:
        kwargs["output_stride"] = output_stride
    return kwargs


def feature_channels(backbone: nn.Module) -> list[int]:
    """Channels of each feature level a timm ``features_only`` model returns."""
    return list(backbone.feature_info.channels())


def feature_reductions(backbone: nn.Module) -> list[int]:
    """Reduction (stride w.r.t. the input) of each feature level."""
    return list(backbone.feature_info.reduction())


def hub_offline() -> bool:
    """Whether the environment asks Hugging Face / timm to stay offline."""
    return any(
        os.environ.get(var, "").strip().lower() in _OFFLINE_VALUES
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _unknown_backbone(name: str) -> ModelError:
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return ModelError(f"model.backbone={name!r} is not a timm model{hint}")


def _hub_error(name: str, err: BaseException | None) -> ModelError:
    why = f" ({type(err).__name__}: {err})" if err is not None else " (HF_HUB_OFFLINE is set)"
    return ModelError(
        f"model.pretrained=true downloads the ImageNet weights of {name!r} from the timm / Hugging "
        f"Face hub, which is not reachable{why}. Download the weights on a machine with internet "
        f"access (e.g. timm.create_model({name!r}, pretrained=True).state_dict() saved with "
        "torch.save, or the hub's model.safetensors) and pass the local file with "
        "model.pretrained=/path/to/file"
    )


def _create(name: str, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    """timm.create_model with hub failures turned into a clear error."""
    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs)
    if hub_offline():
        raise _hub_error(name, None)
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except (OSError, ConnectionError, TimeoutError) as err:  # URLError, HF hub errors are OSErrors
        raise _hub_error(name, err) from err
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise
        text = str(err).lower()
        if any(w in text for w in ("connect", "offline", "download", "network", "resolve", "hub")):
            raise _hub_error(name, err) from err
        raise


def create_backbone(cfg: ModelConfig, pretrained: bool = False) -> nn.Module:
    """Create the timm ``features_only`` backbone of ``cfg``.

    Args:
        cfg: the model section; uses ``backbone``, ``output_stride`` and ``out_indices``.
        pretrained: load timm's hub weights (``model.pretrained: true``). Local weight files are
            applied afterwards by :func:`raycontrast.models._pretrained.load_pretrained_backbone`.

    Returns:
        The timm module; ``module(x)`` returns a list of feature maps, finest first.

    Raises:
        ModelError: unknown backbone, one without ``features_only`` support, an ``output_stride``
            the backbone cannot produce, or hub weights that cannot be downloaded.

    Example:
        >>> bb = create_backbone(ModelConfig(backbone="resnet18", output_stride=8))
        >>> [f.shape[1] for f in bb(torch.zeros(1, 3, 64, 64))]
        [64, 64, 128, 256, 512]
    """
    name = cfg.backbone
    if not timm.is_model(name):
        raise _unknown_backbone(name)
    stride = cfg.output_stride
    try:
        model = _create(name, pretrained, backbone_kwargs(cfg, stride))
    except ModelError:
        raise
    except (
        Exception
    ) as err:  # timm signals unsupported kwargs with TypeError / AssertionError / ...
        if stride is None:
            raise ModelError(
                f"cannot create backbone {name!r} with features_only=True "
                f"(out_indices={cfg.out_indices}): {type(err).__name__}: {err}"
            ) from err
        try:
            native = timm.create_model(name, pretrained=False, **backbone_kwargs(cfg))
        except Exception as err2:
            raise ModelError(
                f"cannot create backbone {name!r} with features_only=True "
                f"(out_indices={cfg.out_indices}): {type(err2).__name__}: {err2}"
            ) from err2
        if max(feature_reductions(native)) == stride:
            model = _create(name, pretrained, backbone_kwargs(cfg)) if pretrained else native
        else:
            raise ModelError(
                f"backbone {name!r} does not support model.output_stride={stride} (timm cannot "
                f"dilate it; its native strides are {feature_reductions(native)}). Set "
                "model.output_stride=null to keep the native strides"
                + (
                    " (HRNet keeps a stride-4 branch: use model.head=fpn or model.proj_input=concat)"
                    if name.startswith("hrnet")
                    else ""
                )
            ) from err
    reductions = feature_reductions(model)
    if stride is not None and max(reductions) > stride:
        raise ModelError(
            f"backbone {name!r} ignored model.output_stride={stride} (its feature strides are "
            f"{reductions}). Set model.output_stride=null to keep the native strides"
        )
    return model
