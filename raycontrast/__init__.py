"""raycontrast: semantic segmentation with cross-image pixel contrast (ContrastiveSeg), trained on Ray.

The documented entry points, one per command (``raycontrast --help`` lists the same):

* :func:`load_config` - an experiment from YAML and ``key=value`` overrides;
* :func:`run_training` - ``raycontrast train``: Ray Train workers and the shared memory bank;
* :func:`run_sweep` / :func:`run_study` - ``raycontrast tune`` / ``raycontrast study`` (Ray Tune);
* :func:`run_eval` - ``raycontrast eval``; :func:`predict` - ``raycontrast predict``;
* :func:`build_segmentor` - the model, for use outside the commands.

They are imported on first use, so ``import raycontrast`` stays cheap (no torch, no Ray).
Sub-packages: ``config``, ``contrast`` (pure torch), ``data``, ``models``, ``bank``, ``eval``,
``train``, ``tune``; each lists its public API in ``__all__``.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what static readers (type checkers, the API reference) see; loaded lazily below
    from raycontrast.config import load_config
    from raycontrast.eval import predict, run_eval
    from raycontrast.models import build_segmentor
    from raycontrast.train import run_training
    from raycontrast.tune import run_study, run_sweep

try:
    __version__ = version("raycontrast")
except PackageNotFoundError:  # pragma: no cover - a source tree that is not installed
    __version__ = "0.0.0+unknown"

_ENTRY_POINTS = {
    "load_config": "raycontrast.config",
    "run_training": "raycontrast.train",
    "run_sweep": "raycontrast.tune",
    "run_study": "raycontrast.tune",
    "run_eval": "raycontrast.eval",
    "predict": "raycontrast.eval",
    "build_segmentor": "raycontrast.models",
}

__all__ = [
    "__version__",
    "build_segmentor",
    "load_config",
    "predict",
    "run_eval",
    "run_study",
    "run_sweep",
    "run_training",
]


def __getattr__(name: str) -> Any:
    """The entry points, imported from their sub-package on first access."""
    module = _ENTRY_POINTS.get(name)
    if module is None:
        raise AttributeError(f"module 'raycontrast' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_ENTRY_POINTS])
