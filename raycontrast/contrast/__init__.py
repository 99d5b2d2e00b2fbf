"""Cross-image pixel contrast: losses, anchor sampling, the memory bank and its health. Pure torch,
no Ray.

Example:
    >>> from raycontrast.contrast import MemoryBank, MemorySampling, memory_contrast_loss
    >>> loss = memory_contrast_loss(z, zl, q, ql, sampling=MemorySampling("semi_hard", k=512))
"""

from raycontrast.contrast.health import bank_health
from raycontrast.contrast.loss import inbatch_contrast_loss, memory_contrast_loss
from raycontrast.contrast.memory import KINDS, BankRecords, MemoryBank, select_records
from raycontrast.contrast.module import ContrastOutput, PixelContrastLoss, memory_kinds
from raycontrast.contrast.sampling import sample_anchors
from raycontrast.contrast.selection import MemorySampling

__all__ = [
    "KINDS",
    "BankRecords",
    "ContrastOutput",
    "MemoryBank",
    "MemorySampling",
    "PixelContrastLoss",
    "bank_health",
    "inbatch_contrast_loss",
    "memory_contrast_loss",
    "memory_kinds",
    "sample_anchors",
    "select_records",
]
