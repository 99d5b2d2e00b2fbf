"""Image/mask file pairs on disk: the sample source shared by the Cityscapes, ADE20K, VOC and folder
readers. Listing happens at construction (it finds images without masks); decoding and validation
happen lazily, one sample at a time, in :meth:`FileSource.load`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raycontrast.data._io import check_same_size, decode_image, read_bytes, read_mask
from raycontrast.data._labels import apply_lut
from raycontrast.data.base import DatasetError, RawSample

__all__ = ["FileSource", "SamplePair", "require_dir"]


@dataclass(eq=False)
class SamplePair:
    """One image file, its label file and the table mapping the label file's values to train ids."""

    id: str
    image: Path
    mask: Path
    lut: np.ndarray


class FileSource:
    """A list of :class:`SamplePair` decoded and validated on demand.

    Args:
        pairs: the samples, in a fixed (sorted) order.
        dropped: files left out at listing time because they were bad (e.g. an image without a
            mask, with ``on_bad_sample=skip``), kept for reporting.
    """

    def __init__(self, pairs: list[SamplePair], dropped: list[str] | None = None) -> None:
        self.pairs = pairs
        self.dropped = list(dropped or [])

    def __len__(self) -> int:
        return len(self.pairs)

    def sample_id(self, index: int) -> str:
        return self.pairs[index].id

    def load(self, index: int) -> RawSample:
        pair = self.pairs[index]
        data = read_bytes(pair.image)
        image = decode_image(data, str(pair.image))
        raw = read_mask(pair.mask)
        check_same_size(image, raw, str(pair.image), str(pair.mask))
        label = apply_lut(raw, pair.lut, str(pair.mask))
        return RawSample(id=pair.id, image=image, label=label, image_bytes=data)


def require_dir(path: Path, what: str) -> Path:
    """``path`` if it is a folder, else :class:`DatasetError` naming it (always raised, never skipped)."""
    if not path.is_dir():
        raise DatasetError(f"{path}: {what} not found (expected a folder)")
    return path


def missing_mask(image: Path, expected: Path | list[Path], skip: bool, dropped: list[str]) -> None:
    """Record (``skip``) or raise for an image whose mask does not exist."""
    if isinstance(expected, list):
        expected_text = " or ".join(str(p) for p in expected)
    else:
        expected_text = str(expected)
    if not skip:
        raise DatasetError(f"{image}: image has no mask (expected {expected_text})")
    dropped.append(f"{image}: no mask")
