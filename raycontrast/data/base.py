"""Core types shared by every dataset: the error type, dataset metadata and one decoded sample.

Internally every reader produces labels as ``uint8`` train ids with :data:`STORED_IGNORE` (255) as
the ignore value, the convention of all supported on-disk formats and of the Parquet shards. Only
the final transform maps 255 to ``DataConfig.ignore_index``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from raycontrast.errors import UserError

__all__ = ["STORED_IGNORE", "DatasetError", "DatasetInfo", "RawSample", "SampleSource"]

STORED_IGNORE = 255
"""Ignore value of decoded and stored (PNG, Parquet) label maps."""


class DatasetError(UserError, ValueError):
    """Bad dataset input; the message names the file (or folder/split) and what was expected."""


@dataclass
class DatasetInfo:
    """What a dataset's labels mean.

    Args:
        name: dataset name (``DataConfig.dataset``).
        num_classes: number of train classes; labels are ``0..num_classes-1`` or ``ignore_index``.
        class_names: one name per class.
        palette: one RGB colour per class, for visualisation.
        ignore_index: label value of ignored pixels in the items a dataset returns.
        label_mapping: how on-disk label values become train ids (human readable).
    """

    name: str
    num_classes: int
    class_names: list[str]
    palette: list[tuple[int, int, int]]
    ignore_index: int
    label_mapping: str = ""


@dataclass(eq=False)
class RawSample:
    """One decoded, validated sample before augmentation.

    ``image`` is ``uint8`` HxWx3 RGB; ``label`` is ``uint8`` HxW train ids with 255 = ignore;
    ``image_bytes`` is the original encoded file when the sample comes from a file (kept verbatim by
    ``convert_dataset``), else ``None``.
    """

    id: str
    image: np.ndarray
    label: np.ndarray
    image_bytes: bytes | None = None


class SampleSource(Protocol):
    """An indexable collection of samples (files on disk, Parquet shards, the synthetic generator)."""

    def __len__(self) -> int: ...

    def sample_id(self, index: int) -> str:
        """Identifier of sample ``index`` without decoding it."""
        ...

    def load(self, index: int) -> RawSample:
        """Decode and validate sample ``index``; raise :class:`DatasetError` naming the file."""
        ...
