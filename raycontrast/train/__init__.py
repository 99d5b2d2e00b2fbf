"""Distributed training on Ray Train with a shared memory bank.

Public API: :func:`run_training` (what ``raycontrast train`` calls) and the worker entry point
:func:`train_loop_per_worker` for users who build their own ``TorchTrainer``.
"""

from raycontrast.train.launcher import (
    TrainingInterrupted,
    check_data,
    check_storage,
    connect,
    run_dir_of,
    run_training,
)
from raycontrast.train.loop import NonFiniteLoss, train_loop_per_worker

__all__ = [
    "NonFiniteLoss",
    "TrainingInterrupted",
    "check_data",
    "check_storage",
    "connect",
    "run_dir_of",
    "run_training",
    "train_loop_per_worker",
]
