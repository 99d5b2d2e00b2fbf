"""SyncBatchNorm conversion for distributed training."""

from __future__ import annotations

import torch.distributed as dist
from timm.layers import convert_sync_batchnorm as _timm_convert
from torch import nn

__all__ = ["convert_sync_batchnorm"]


def convert_sync_batchnorm(model: nn.Module, process_group=None, force: bool = False) -> nn.Module:
    """Replace BatchNorm layers by SyncBatchNorm when training with several processes.

    Converts only when ``torch.distributed`` is initialised with a world size > 1 (or ``force``);
    otherwise the model is returned unchanged, so single-process runs and tests keep working.
    timm's fused ``BatchNormAct2d`` layers become ``SyncBatchNormAct`` (keeping their activation).
    Call it before wrapping the model in DDP and before creating the optimizer.

    Args:
        model: the model (not yet DDP-wrapped).
        process_group: the group to synchronise over (default: the world).
        force: convert even without an initialised process group (the result then only runs in
            eval mode until a process group exists).

    Returns:
        The converted model (a new top-level module if ``model`` itself is a BatchNorm).

    Example:
        >>> seg = convert_sync_batchnorm(build_segmentor(cfg, 19))  # no-op in one process
    """
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if not (distributed or force):
        return model
    return _timm_convert(model, process_group)
