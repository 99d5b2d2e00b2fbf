"""Training and evaluation transforms applied to a decoded ``(image, label)`` pair.

Training: random rescale, random crop (padding the image with 0 after normalisation, i.e. the mean
colour, and the label with ignore), horizontal flip, photometric jitter, normalisation. The
geometric steps are applied identically to the image (bilinear) and the label (nearest).
Evaluation: normalisation only. Randomness comes only from the ``rng`` argument, so a sample's
augmentation is reproducible from :func:`sample_rng` ``(seed, epoch, index)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from raycontrast.config import DataConfig
from raycontrast.data.base import STORED_IGNORE

__all__ = ["SegTransform", "build_transforms", "sample_rng"]

_MASK64 = (1 << 64) - 1


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random generator of sample ``index`` in ``epoch`` for global ``seed`` (any ints)."""
    words = [int(v) & _MASK64 for v in (seed, epoch, index)]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(words)))


@dataclass(frozen=True)
class SegTransform:
    """Callable ``(image uint8 HxWx3, label int HxW, rng) -> (image float32 3xHxW, label int64 HxW)``.

    Input labels are train ids where both 255 and ``ignore_index`` mean ignore (decoded masks and
    Parquet rows use 255); output labels use ``ignore_index``. Build it with
    :func:`build_transforms`.
    """

    train: bool
    crop_size: tuple[int, int]
    scale_range: tuple[float, float]
    flip: bool
    color_jitter: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    ignore_index: int

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = _check_pair(image, label, self.ignore_index)
        if not self.train:
            return self._normalise(image), self._labels(label)
        if rng is None:
            raise ValueError("training transforms need an rng (see raycontrast.data.sample_rng)")
        # Every random number is drawn in a fixed order, whatever the options, so that changing
        # one option does not change the others' draws.
        scale = rng.uniform(*self.scale_range)
        flip = bool(rng.random() < 0.5) and self.flip
        jitter = rng.uniform(-1.0, 1.0, size=3) * self.color_jitter
        off_y, off_x = rng.random(2)

        image, label = _rescale(image, label, scale)
        h, w = label.shape
        ch, cw = self.crop_size
        y0 = int(off_y * (max(h - ch, 0) + 1))
        x0 = int(off_x * (max(w - cw, 0) + 1))
        image, label = image[y0 : y0 + ch, x0 : x0 + cw], label[y0 : y0 + ch, x0 : x0 + cw]
        if flip:
            image, label = image[:, ::-1], label[:, ::-1]
        img = _chw_float(image)
        if self.color_jitter > 0:
            img = _jitter(img, *np.maximum(1.0 + jitter, 0.0))
        out_img = torch.zeros(3, ch, cw)
        out_lbl = torch.full((ch, cw), self.ignore_index, dtype=torch.int64)
        out_img[:, : img.shape[1], : img.shape[2]] = self._normalise_float(img)
        out_lbl[: label.shape[0], : label.shape[1]] = self._labels(label)
        return out_img, out_lbl

    def _normalise(self, image: np.ndarray) -> torch.Tensor:
        return self._normalise_float(_chw_float(image))

    def _normalise_float(self, img: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return img.sub_(mean).div_(std).contiguous()

    def _labels(self, label: np.ndarray) -> torch.Tensor:
        out = torch.from_numpy(_writable(label)).long()
        if self.ignore_index != STORED_IGNORE:
            out[out == STORED_IGNORE] = self.ignore_index
        return out


def _writable(array: np.ndarray) -> np.ndarray:
    """A contiguous, writable view or copy (torch.from_numpy warns on read-only arrays)."""
    array = np.ascontiguousarray(array)
    return array if array.flags.writeable else array.copy()


def _chw_float(image: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 -> float32 3xHxW in 0..1."""
    return torch.from_numpy(_writable(image)).permute(2, 0, 1).float().div_(255.0)


def _check_pair(image: np.ndarray, label: np.ndarray, ignore: int) -> tuple[np.ndarray, np.ndarray]:
    image, label = np.asarray(image), np.asarray(label)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 HxWx3, got {image.dtype} {image.shape}")
    if label.shape != image.shape[:2]:
        raise ValueError(f"label shape {label.shape} does not match image {image.shape[:2]}")
    if ignore != STORED_IGNORE and (label.dtype != np.uint8 or 0 <= ignore < 256):
        label = np.where(label == ignore, STORED_IGNORE, label)
    if label.dtype != np.uint8:
        if label.size and (label.min() < 0 or label.max() > STORED_IGNORE):
            raise ValueError(
                f"label values must be 0..254 or ignore, got {label.min()}..{label.max()}"
            )
        label = label.astype(np.uint8)
    return image, label


def _rescale(image: np.ndarray, label: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    if scale == 1.0:
        return image, label
    h, w = label.shape
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    image = np.array(Image.fromarray(image).resize(size, Image.BILINEAR))
    label = np.array(Image.fromarray(label).resize(size, Image.NEAREST))
    return image, label


def _jitter(
    img: torch.Tensor, brightness: float, contrast: float, saturation: float
) -> torch.Tensor:
    """Photometric jitter of a 3xHxW image in 0..1 (factors around 1; 1 = unchanged)."""
    img = img * brightness
    grey = img[0] * 0.299 + img[1] * 0.587 + img[2] * 0.114
    img = (img - grey.mean()) * contrast + grey.mean()
    grey = img[0] * 0.299 + img[1] * 0.587 + img[2] * 0.114
    img = (img - grey) * saturation + grey
    return img.clamp_(0.0, 1.0)


def build_transforms(cfg: DataConfig, train: bool) -> SegTransform:
    """The transform of ``cfg`` for training (``train=True``) or evaluation.

    Args:
        cfg: data config (crop_size, scale_range, flip, color_jitter, mean, std, ignore_index).
        train: random augmentation + fixed-size crops, or normalisation only.

    Example:
        >>> t = build_transforms(DataConfig(crop_size=[64, 64]), train=True)
        >>> image, label = t(np.zeros((80, 90, 3), np.uint8), np.zeros((80, 90), np.uint8),
        ...                  sample_rng(0, 0, 0))
        >>> tuple(image.shape), tuple(label.shape)
        ((3, 64, 64), (64, 64))
    """
    return SegTransform(
        train=train,
        crop_size=(int(cfg.crop_size[0]), int(cfg.crop_size[1])),
        scale_range=(float(cfg.scale_range[0]), float(cfg.scale_range[1])),
        flip=cfg.flip,
        color_jitter=float(cfg.color_jitter),
        mean=tuple(float(v) for v in cfg.mean),
        std=tuple(float(v) for v in cfg.std),
        ignore_index=int(cfg.ignore_index),
    )
