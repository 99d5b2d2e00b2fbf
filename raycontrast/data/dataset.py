"""The torch Dataset returned by ``build_dataset``: a sample source + a transform, with
reproducible per-sample randomness and optional skipping of bad samples."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch.utils.data import Dataset

from raycontrast.data.base import DatasetError, DatasetInfo, SampleSource
from raycontrast.data.transforms import SegTransform, sample_rng

__all__ = ["SegmentationDataset"]

log = logging.getLogger(__name__)


class SegmentationDataset(Dataset):
    """Items ``{"image": float32 3xHxW, "label": int64 HxW, "id": str, "skipped": int}``.

    The random augmentation of item ``i`` depends only on ``(seed, epoch, i)``. ``seed`` and
    ``epoch`` live in a small shared-memory tensor, so :meth:`set_epoch` (and setting ``seed``)
    reach DataLoader worker processes too, persistent workers included.

    With ``skip_bad=True`` a sample that fails to decode or validate is replaced by the next good
    one (``i + 1``, ``i + 2``, ... wrapping around) and ``skipped`` counts how many were passed
    over; otherwise the :class:`DatasetError` (naming the file) propagates.

    Args:
        source: the samples (files, Parquet shards or the synthetic generator).
        transform: from :func:`build_transforms`.
        info: the dataset's class metadata (``dataset.info``).
        skip_bad: skip bad samples instead of raising.
        seed: global seed of the augmentation.
    """

    def __init__(
        self,
        source: SampleSource,
        transform: SegTransform,
        info: DatasetInfo,
        *,
        skip_bad: bool = False,
        seed: int = 0,
    ) -> None:
        if len(source) == 0:
            raise DatasetError(f"dataset {info.name!r} has no samples")
        self.source = source
        self.transform = transform
        self.info = info
        self.skip_bad = skip_bad
        self._state = torch.tensor([seed, 0], dtype=torch.int64).share_memory_()
        self._warned: set[int] = set()

    @property
    def seed(self) -> int:
        """Global augmentation seed (set it before iterating, e.g. to ``train.seed``)."""
        return int(self._state[0])

    @seed.setter
    def seed(self, value: int) -> None:
        self._state[0] = int(value)

    @property
    def epoch(self) -> int:
        """Current epoch, part of every sample's random seed."""
        return int(self._state[1])

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch``'s augmentation from now on (also in running DataLoader workers)."""
        self._state[1] = int(epoch)

    @property
    def ids(self) -> list[str]:
        """Sample ids in index order (no decoding)."""
        return [self.source.sample_id(i) for i in range(len(self.source))]

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self.source)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} samples")
        index %= n
        skipped = 0
        for step in range(n):
            j = (index + step) % n
            try:
                raw = self.source.load(j)
                break
            except DatasetError as err:
                if not self.skip_bad:
                    raise
                skipped += 1
                if j not in self._warned:
                    self._warned.add(j)
                    log.warning("skipping bad sample %d: %s", j, err)
        else:
            raise DatasetError(f"dataset {self.info.name!r}: all {n} samples are bad")
        seed, epoch = (int(v) for v in self._state.tolist())
        rng = sample_rng(seed, epoch, index) if self.transform.train else None
        image, label = self.transform(raw.image, raw.label, rng)
        return {"image": image, "label": label, "id": raw.id, "skipped": skipped}
