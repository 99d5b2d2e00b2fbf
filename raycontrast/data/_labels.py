"""Label look-up tables (on-disk value -> train id) and colour palettes."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from raycontrast.data.base import STORED_IGNORE, DatasetError

__all__ = ["INVALID", "apply_lut", "bit_palette", "identity_lut", "make_lut"]

INVALID = -1
"""LUT entry of an on-disk value that is neither a class nor ignore (an error when it occurs)."""


def make_lut(mapping: Mapping[int, int], size: int = 256) -> np.ndarray:
    """An int16 table mapping on-disk values to train ids; values not in ``mapping`` are invalid."""
    lut = np.full(size, INVALID, dtype=np.int16)
    for raw, train_id in mapping.items():
        lut[raw] = train_id
    return lut


def identity_lut(num_classes: int, ignore_values: tuple[int, ...] = (STORED_IGNORE,)) -> np.ndarray:
    """Values ``0..num_classes-1`` map to themselves; each of ``ignore_values`` (0..255) to ignore."""
    mapping = {k: k for k in range(num_classes)}
    mapping.update({v: STORED_IGNORE for v in ignore_values if 0 <= v < 256 and v >= num_classes})
    return make_lut(mapping)


def apply_lut(raw: np.ndarray, lut: np.ndarray, name: str) -> np.ndarray:
    """Map an on-disk label array to ``uint8`` train ids (255 = ignore).

    Raises:
        DatasetError: naming ``name`` and the offending on-disk values when any value is not in the
            table (negative, too large, or marked invalid).
    """
    raw = np.asarray(raw)
    if raw.dtype == np.uint8:
        mapped = lut[raw]
    else:
        raw = raw.astype(np.int64)
        in_range = (raw >= 0) & (raw < len(lut))
        mapped = np.where(in_range, lut[np.clip(raw, 0, len(lut) - 1)], INVALID)
    bad = mapped == INVALID
    if bad.any():
        values = np.unique(raw[bad])
        shown = ", ".join(str(int(v)) for v in values[:10]) + (" ..." if len(values) > 10 else "")
        valid = np.flatnonzero(lut != INVALID)
        raise DatasetError(
            f"{name}: label values {shown} are not valid for this dataset "
            f"(expected one of {_ranges(valid)}; {int(bad.sum())} pixels)"
        )
    return mapped.astype(np.uint8)


def _ranges(values: np.ndarray) -> str:
    """``[0, 1, 2, 5, 255]`` -> ``"0..2, 5, 255"``."""
    parts, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            parts.append(str(start) if start == v else f"{start}..{v}")
            start = None
    return ", ".join(parts)


def bit_palette(n: int) -> list[tuple[int, int, int]]:
    """``n`` distinct colours from the classic bit-interleaving colour map (Pascal VOC's scheme).

    Class ``k``'s bits are spread over the high bits of R, G and B, so neighbouring ids get
    clearly different colours.
    """
    palette = []
    for k in range(n):
        r = g = b = 0
        c = k
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette.append((r, g, b))
    return palette
