"""The built-in synthetic dataset: procedurally generated scenes with exact masks (no download).

Each scene is a cluttered, textured background (class 0, a real class) with a few objects of six
classes drawn over it at varying scales, later objects occluding earlier ones. Classes differ in
three ways, colour deliberately the weakest:

* shape: disc, box, triangle, ring, cross, star;
* texture (a colour and a darker shade of it, periods in pixels): shading with a highlight, stripes,
  checkerboard, salt-and-pepper speckle, dots, cross-hatching;
* colour statistics: each class has a preferred hue, but hues are drawn with a broad spread so
  that neighbouring classes overlap, and the background is painted with colours drawn from the
  same mixture. Colour alone therefore gives a poor segmentation (see tests/data/test_synthetic.py).

A scene is a pure function of ``(seed, split, index)``; different splits use different streams.
Generation is vectorised numpy (a few milliseconds for 128x128), cheap enough to generate
every training sample on the fly.
"""

from __future__ import annotations

import zlib

import numpy as np
from PIL import Image

from raycontrast.config import DataConfig, SyntheticConfig
from raycontrast.data.base import DatasetError, DatasetInfo, RawSample

__all__ = [
    "SYNTHETIC_CLASSES",
    "SYNTHETIC_PALETTE",
    "SyntheticSource",
    "generate_scene",
    "info",
    "source",
]

SYNTHETIC_CLASSES = ["background", "disc", "box", "triangle", "ring", "cross", "star"]
"""Class names of the synthetic dataset, by label index."""
SYNTHETIC_PALETTE = [
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180),
]  # fmt: skip

SPLITS = ("train", "val", "test")

# Per-class colour statistics: preferred hue (turns), hue spread, saturation and value ranges.
# The hue spread is wide enough that every hue is likely for several classes.
# Row k is class k; row 0 (background) is unused: the background mixes all classes' colours.
_HUE = np.array([0.0, 0.0, 1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6])
_HUE_SPREAD = 0.22
_SAT = np.array(
    [(0, 1), (0.35, 0.9), (0.45, 1.0), (0.3, 0.8), (0.4, 0.95), (0.5, 1.0), (0.3, 0.85)]
)
_VAL = np.array(
    [(0, 1), (0.5, 1.0), (0.4, 0.95), (0.55, 1.0), (0.45, 0.9), (0.4, 1.0), (0.5, 0.95)]
)


def info(cfg: DataConfig) -> DatasetInfo:
    """Class names and palette of the synthetic dataset."""
    return DatasetInfo(
        name="synthetic",
        num_classes=len(SYNTHETIC_CLASSES),
        class_names=list(SYNTHETIC_CLASSES),
        palette=list(SYNTHETIC_PALETTE),
        ignore_index=cfg.ignore_index,
        label_mapping="generated train ids 0..6 (exact masks, no ignore)",
    )


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Vectorised HSV (..., 3) in 0..1 to RGB (..., 3)."""
    h, s, v = hsv[..., 0] * 6.0, hsv[..., 1], hsv[..., 2]
    sector = np.floor(h).astype(np.int64) % 6
    f = h - np.floor(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = np.stack([v, q, p, p, t, v, t, v, v, q, p, p, p, p, t, v, v, q], axis=-1)
    table = table.reshape(*h.shape, 3, 6)
    return np.take_along_axis(table, sector[..., None, None].repeat(3, -2), axis=-1)[..., 0]


def _class_colours(rng: np.random.Generator, classes: np.ndarray) -> np.ndarray:
    """One RGB colour (float32, 0..1) per entry of ``classes`` (values 1..6), from each class's
    broad colour distribution."""
    u = rng.random((len(classes), 3))
    hue = (_HUE[classes] + rng.normal(0.0, _HUE_SPREAD, len(classes))) % 1.0
    sat = _SAT[classes, 0] + u[:, 1] * (_SAT[classes, 1] - _SAT[classes, 0])
    val = _VAL[classes, 0] + u[:, 2] * (_VAL[classes, 1] - _VAL[classes, 0])
    return _hsv_to_rgb(np.stack([hue, sat, val], axis=-1)).astype(np.float32)


def _mixture_colours(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` colours from the mixture of all object classes (used to paint the background)."""
    return _class_colours(rng, rng.integers(1, len(SYNTHETIC_CLASSES), n))


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth blotches of object-like colours, thin lines and small flat pebbles."""
    gh, gw = rng.integers(3, 7, size=2)
    coarse = (_mixture_colours(rng, gh * gw).reshape(gh, gw, 3) * (0.85 * 255)).astype(np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.float32)
    image *= 1.0 / 255.0
    n_lines, n_pebbles = int(rng.integers(3, 9)), int(rng.integers(4, 12))
    colours = _mixture_colours(rng, n_lines + n_pebbles)
    paint = np.full((h, w), -1, dtype=np.int16)  # index into colours, -1 = keep
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    lines = rng.random((n_lines, 4)).astype(np.float32)
    for i, (a, y0, x0, width) in enumerate(lines):  # thin straight lines across the scene
        a = a * np.pi
        dist = np.abs((ys - y0 * h) * np.cos(a) - (xs - x0 * w) * np.sin(a))
        paint[dist < 0.6 + width] = i
    pebbles = rng.random((n_pebbles, 3)) * (2.0, h, w) + (1.0, 0.0, 0.0)
    for i, (r, cy, cx) in enumerate(pebbles, start=n_lines):
        y1, y2 = max(int(cy - r), 0), min(int(cy + r) + 2, h)
        x1, x2 = max(int(cx - r), 0), min(int(cx + r) + 2, w)
        inside = (ys[y1:y2] - cy) ** 2 + (xs[:, x1:x2] - cx) ** 2 <= r * r
        paint[y1:y2, x1:x2][inside] = i
    hit = paint >= 0
    image[hit] = colours[paint[hit]]
    return image


def _lerp(lo: float, hi: float, t: float) -> float:
    return lo + (hi - lo) * t


def _shape(k: int, u: np.ndarray, v: np.ndarray, t: float) -> np.ndarray:
    """Inside mask of class ``k`` in object coordinates (u, v) (radius 1); ``t`` in 0..1 varies
    the proportions."""
    if k == 1:  # disc (ellipse)
        return u * u + (v / _lerp(0.7, 1.0, t)) ** 2 <= 1.0
    if k == 2:  # box
        return (np.abs(u) <= 0.85) & (np.abs(v) <= 0.85 * _lerp(0.45, 1.0, t))
    if k == 3:  # equilateral triangle
        return (v <= 0.5) & (v >= 1.732 * np.abs(u) - 1.0)
    if k == 4:  # ring
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= _lerp(0.45, 0.65, t) ** 2)
    if k == 5:  # cross
        arm = _lerp(0.25, 0.38, t)
        au, av = np.abs(u), np.abs(v)
        return ((au <= 1.0) & (av <= arm)) | ((au <= arm) & (av <= 1.0))
    # five-pointed star
    r = np.sqrt(u * u + v * v)
    return r <= 0.45 + 0.55 * np.abs(np.cos(2.5 * np.arctan2(v, u))) ** 1.5


def _texture(
    k: int, u: np.ndarray, v: np.ndarray, radius: float, t: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Mixing weight (0 = first colour, 1 = second) of class ``k``'s texture at object
    coordinates (u, v) of an object of ``radius`` pixels. Periods are in pixels, so a texture
    looks the same on small and large objects; ``t`` holds two numbers in 0..1 that vary it."""
    pu, pv = u * radius, v * radius
    if k == 1:  # smooth radial shading, darker towards the rim, with a bright highlight
        hy, hx = t * 0.8 - 0.4
        d2 = (u - hx) ** 2 + (v - hy) ** 2
        return np.minimum(d2 * 0.9, 1.0) - 0.8 * np.maximum(1.0 - d2 / 0.09, 0.0)
    if k == 2:  # hard-edged straight stripes
        return (np.sin(pu * (2 * np.pi / _lerp(5.0, 8.0, t[0]))) > 0).astype(np.float32)
    if k == 3:  # checkerboard
        cell = _lerp(3.0, 5.0, t[0])
        return ((np.floor(pu / cell) + np.floor(pv / cell)) % 2).astype(np.float32)
    if k == 4:  # salt-and-pepper speckle
        shape = np.broadcast_shapes(u.shape, v.shape)
        return (rng.random(shape, dtype=np.float32) < 0.5).astype(np.float32)
    if k == 5:  # dots on a grid
        cell = _lerp(5.0, 7.0, t[0])
        du, dv = (pu % cell) / cell - 0.5, (pv % cell) / cell - 0.5
        return (du * du + dv * dv < 0.09).astype(np.float32)
    # cross-hatching: thin grid lines
    cell = _lerp(5.0, 7.0, t[0])
    return ((pu % cell < 1.5) | (pv % cell < 1.5)).astype(np.float32)


def generate_scene(
    seed: int, split: str, index: int, size: tuple[int, int] = (128, 128)
) -> tuple[np.ndarray, np.ndarray]:
    """Generate scene ``index`` of ``split``.

    Args:
        seed: base seed (``data.synthetic.seed``).
        split: split name; each split has its own random stream.
        index: scene number.
        size: ``(height, width)``.

    Returns:
        ``image`` uint8 HxWx3 and ``label`` uint8 HxW with values ``0..6``.

    Example:
        >>> image, label = generate_scene(0, "train", 3, (96, 96))
        >>> image.shape, label.shape, int(label.max()) < 7
        ((96, 96, 3), (96, 96), True)
    """
    h, w = int(size[0]), int(size[1])
    stream = [int(seed) & 0xFFFFFFFF, zlib.crc32(split.encode()), int(index)]
    rng = np.random.default_rng(stream)
    image = _background(rng, h, w)
    label = np.zeros((h, w), dtype=np.uint8)
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]

    # All object parameters at once: class, radius, centre, angle, shape/texture variation, colours.
    n = int(rng.integers(4, 10))
    classes = rng.integers(1, len(SYNTHETIC_CLASSES), n)
    radii = min(h, w) * np.exp(rng.uniform(np.log(0.12), np.log(0.35), n))
    centres = rng.uniform(-0.1, 1.1, (n, 2)) * (h, w)
    angles = rng.uniform(0.0, 2 * np.pi, n)
    variation = rng.random((n, 3))
    first = _class_colours(rng, classes)
    factor = rng.uniform(0.2, 0.45, n)  # the second texture colour is a darker shade
    second = first * factor[:, None]
    second = second.astype(np.float32)

    for i in range(n):
        k, radius, (cy, cx) = int(classes[i]), radii[i], centres[i]
        y1, y2 = max(int(cy - radius) - 1, 0), min(int(cy + radius) + 2, h)
        x1, x2 = max(int(cx - radius) - 1, 0), min(int(cx + radius) + 2, w)
        if y1 >= y2 or x1 >= x2:
            continue
        dy, dx = (ys[y1:y2] - cy) / radius, (xs[:, x1:x2] - cx) / radius
        c, s = np.float32(np.cos(angles[i])), np.float32(np.sin(angles[i]))
        u, v = dx * c + dy * s, dy * c - dx * s
        inside = _shape(k, u, v, variation[i, 0])
        weight = _texture(k, u, v, radius, variation[i, 1:], rng)[..., None]
        patch = first[i] + (second[i] - first[i]) * weight
        region = image[y1:y2, x1:x2]
        region[...] = np.where(inside[..., None], patch, region)
        label[y1:y2, x1:x2][inside] = k

    # Global illumination gain; uniform grey pixel noise: coarse "grain" (+-12 grey levels) on the
    # background and faint (+-3) on objects: a local texture cue that is not a colour.
    gain = np.float32(rng.uniform(0.75, 1.15) * 255.0)
    noise = np.frombuffer(rng.bytes(h * w), dtype=np.uint8).reshape(h, w) - np.float32(127.5)
    noise *= np.where(label == 0, np.float32(24.0 / 255.0), np.float32(6.0 / 255.0))
    image *= gain
    image += noise[..., None]
    np.clip(image, 0.0, 255.0, out=image)
    return (image + 0.5).astype(np.uint8), label


class SyntheticSource:
    """The scenes of one split, generated on demand (no files)."""

    def __init__(self, cfg: SyntheticConfig, split: str) -> None:
        if split not in SPLITS:
            raise DatasetError(f"synthetic split {split!r} is unknown; expected one of {SPLITS}")
        self.split = split
        self.seed = cfg.seed
        self.size = (int(cfg.image_size[0]), int(cfg.image_size[1]))
        if split == "train":
            self.length = cfg.num_train
        elif split == "test" and cfg.num_test is not None:
            self.length = cfg.num_test
        else:
            self.length = cfg.num_val

    def __len__(self) -> int:
        return self.length

    def sample_id(self, index: int) -> str:
        return f"{self.split}_{index:06d}"

    def load(self, index: int) -> RawSample:
        image, label = generate_scene(self.seed, self.split, index, self.size)
        return RawSample(id=self.sample_id(index), image=image, label=label)


def source(cfg: DataConfig, split: str) -> SyntheticSource:
    """The synthetic scenes of ``split`` (train: ``num_train``; val: ``num_val``; test: ``num_test``,
    else ``num_val``)."""
    return SyntheticSource(cfg.synthetic, split)
