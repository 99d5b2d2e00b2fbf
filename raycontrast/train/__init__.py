"""Distributed training on Ray Train with a shared memory bank.

Public API: :func:`run_training` (what ``raycontrast train`` calls), :func:`preflight` (the checks it
runs before any worker starts; ``--dry-run``), and for users who build their own ``TorchTrainer`` the
worker entry point :func:`train_loop_per_worker` and its :class:`Trainer`. Every driver check lives in
:mod:`raycontrast.train.preflight`; connecting to Ray and measuring capacity in one internal module.

Example:
    >>> from raycontrast.config import load_config
    >>> from raycontrast.train import run_training
    >>> summary = run_training(load_config(None, ["train.iterations=100"]))
    >>> summary["mIoU"]
"""

from raycontrast.train.launcher import (
    TrainingInterrupted,
    TrialsFailed,
    WorkerFailure,
    run_training,
)
from raycontrast.train.loop import NonFiniteLoss, Trainer, train_loop_per_worker
from raycontrast.train.preflight import preflight

__all__ = [
    "NonFiniteLoss",
    "Trainer",
    "TrainingInterrupted",
    "TrialsFailed",
    "WorkerFailure",
    "preflight",
    "run_training",
    "train_loop_per_worker",
]
