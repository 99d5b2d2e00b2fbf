"""Cross-image pixel contrast: losses, anchor sampling, the memory bank. Pure torch, no Ray."""

from raycontrast.contrast.loss import (
    class_blocks,
    inbatch_contrast_loss,
    memory_contrast_loss,
    memory_contrast_loss_blocks,
    selected_contrast_loss,
    zero_with_graph,
)
from raycontrast.contrast.memory import KINDS, BankRecords, MemoryBank, select_records
from raycontrast.contrast.module import ContrastOutput, PixelContrastLoss, memory_kinds
from raycontrast.contrast.sampling import resize_labels, resize_predictions, sample_anchors
from raycontrast.contrast.selection import (
    MemorySampling,
    MemorySelection,
    gather_similarity,
    select_memory_entries,
)

__all__ = [
    "KINDS",
    "BankRecords",
    "ContrastOutput",
    "MemoryBank",
    "MemorySampling",
    "MemorySelection",
    "PixelContrastLoss",
    "class_blocks",
    "gather_similarity",
    "inbatch_contrast_loss",
    "memory_contrast_loss",
    "memory_contrast_loss_blocks",
    "memory_kinds",
    "resize_labels",
    "resize_predictions",
    "sample_anchors",
    "select_memory_entries",
    "select_records",
    "selected_contrast_loss",
    "zero_with_graph",
]
