"""Paper-shaped fake datasets on disk: Cityscapes and ADE20K trees at their real sizes (no download).

``raycontrast fake-data --like cityscapes|ade20k --out DIR --n N`` writes the real layout, file names
and label encodings, so the shipped readers and ``raycontrast convert`` read it unchanged:

* Cityscapes: ``leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png`` (2048x1024 RGB)
  and ``gtFine/.../<...>_gtFine_labelIds.png`` holding the 34 raw label ids, ignored ones included.
* ADE20K: ``ADEChallengeData2016/images/{training,validation}/ADE_train_XXXXXXXX.jpg`` (short side
  512, common aspect ratios) and ``annotations/.../*.png`` holding 0 ("other") and 1..150.

A scene is a Voronoi partition of the frame into regions, each given a label by where it lies (sky
high, road low for Cityscapes). Every label has its own colour, stripe texture (frequency,
orientation) and noise level, so the images can be learned, unlike noise. Generation is vectorised
numpy; ``scale`` shrinks every size (tests). The tree's marker file lists what it wrote, so a rerun
replaces exactly those files and never touches anything else; a non-empty folder without the marker
is refused.
"""

from __future__ import annotations

import json
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from raycontrast.data.base import DatasetError

__all__ = ["FAKE_LIKES", "MARKER", "FakeTree", "fake_scene", "write_fake_dataset"]

MARKER = ".raycontrast-fake-data.json"
FAKE_LIKES = ("cityscapes", "ade20k")

_CITIES = {
    "train": ("aachen", "bochum", "bremen", "cologne", "darmstadt", "dusseldorf"),
    "val": ("frankfurt", "lindau", "munster"),
}
# Raw Cityscapes label ids by band of the frame (top / middle / bottom); ids outside the 19 train
# classes (0 unlabeled, 1 ego vehicle, 4 static, 5 dynamic, 9 parking, 14 guard rail, ...) are in.
_CS_BANDS = (
    (23, 23, 23, 11, 21, 17, 20, 19, 0, 4),
    (11, 12, 13, 17, 19, 20, 21, 22, 24, 25, 26, 27, 28, 31, 32, 33, 5, 14, 15, 16, 18),
    (7, 7, 7, 8, 8, 9, 10, 22, 26, 24, 1, 6, 3),
)
_ADE_SIZES = ((512, 683), (683, 512), (512, 512), (512, 768), (512, 910), (384, 512))


@dataclass
class FakeTree:
    """What :func:`write_fake_dataset` wrote."""

    root: Path
    like: str
    files: list[str]
    seconds: float


def _spec(like: str, scale: float) -> dict:
    if like == "cityscapes":
        return {"num_labels": 34, "size": (round(1024 * scale), round(2048 * scale))}
    return {"num_labels": 151, "size": None}


def _style(like: str, num_labels: int) -> dict[str, np.ndarray]:
    """Per-label appearance, fixed for a dataset: colour, stripe frequency/angle, noise, contrast."""
    rng = np.random.default_rng(zlib_seed(like))
    return {
        "colour": rng.uniform(30, 225, (num_labels, 3)).astype(np.float32),
        "freq": rng.uniform(0.02, 0.35, num_labels).astype(np.float32),
        "angle": rng.uniform(0, np.pi, num_labels).astype(np.float32),
        "amp": rng.uniform(8, 40, num_labels).astype(np.float32),
        "noise": rng.uniform(3, 18, num_labels).astype(np.float32),
    }


def zlib_seed(text: str) -> int:
    """A stable integer seed from a name (``hash()`` varies between processes)."""
    return zlib.crc32(text.encode())


def _partition(
    rng: np.random.Generator, h: int, w: int, cells: int
) -> tuple[np.ndarray, np.ndarray]:
    """Voronoi regions: an (h, w) map of cell indices, computed at 1/8 resolution and upsampled, and
    each cell centre's vertical position in 0..1."""
    gh, gw = max(h // 8, 2), max(w // 8, 2)
    centres = rng.random((cells, 2)).astype(np.float32)
    ys = (np.arange(gh, dtype=np.float32) + 0.5) / gh
    xs = (np.arange(gw, dtype=np.float32) + 0.5) / gw
    best = np.zeros((gh, gw), dtype=np.int32)
    dist = np.full((gh, gw), np.inf, dtype=np.float32)
    for i, (cy, cx) in enumerate(centres):  # `cells` passes over a small grid: cheap
        d = (ys[:, None] - cy) ** 2 + ((xs[None, :] - cx) * (w / h)) ** 2
        closer = d < dist
        best[closer], dist[closer] = i, d[closer]
    rows = np.minimum(np.arange(h) * gh // h, gh - 1)
    cols = np.minimum(np.arange(w) * gw // w, gw - 1)
    return best[rows[:, None], cols[None, :]], centres[:, 0]


def _labels_for(like: str, rng: np.random.Generator, heights: np.ndarray) -> np.ndarray:
    if like == "cityscapes":
        band = np.minimum((heights * 3).astype(int), 2)
        return np.array([rng.choice(_CS_BANDS[b]) for b in band], dtype=np.uint8)
    scene = rng.choice(np.arange(1, 151), size=12, replace=False)  # a scene uses a few classes
    labels = rng.choice(scene, size=len(heights))
    labels[rng.random(len(heights)) < 0.08] = 0  # "other"
    return labels.astype(np.uint8)


def fake_scene(
    like: str, rng: np.random.Generator, size: tuple[int, int], style: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """One scene: ``uint8`` HxWx3 image and HxW raw label map (the dataset's on-disk encoding)."""
    h, w = size
    cells, heights = _partition(rng, h, w, int(rng.integers(24, 48)))
    label = _labels_for(like, rng, heights)[cells]
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    lab = label.astype(np.intp)
    angle = style["angle"][lab]
    phase = style["freq"][lab] * (xs * np.cos(angle) + ys * np.sin(angle))
    shade = style["amp"][lab] * np.sin(phase)
    noise = rng.standard_normal((h, w), dtype=np.float32) * style["noise"][lab]
    jitter = rng.normal(1.0, 0.08, 3).astype(np.float32)  # per-image illumination
    image = style["colour"][lab] * jitter + (shade + noise)[..., None]
    return np.clip(image, 0, 255).astype(np.uint8), label


def _ade_size(rng: np.random.Generator, scale: float) -> tuple[int, int]:
    h, w = _ADE_SIZES[int(rng.integers(len(_ADE_SIZES)))]
    return max(round(h * scale), 8), max(round(w * scale), 8)


def _layout(like: str, split: str, i: int) -> tuple[str, str]:
    """(image path, label path) of sample ``i`` of ``split``, relative to the root."""
    if like == "cityscapes":
        cities = _CITIES[split]
        city = cities[i % len(cities)]
        stem = f"{city}_{i // len(cities):06d}_{19 + i % 7:06d}"
        return (
            f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png",
            f"gtFine/{split}/{city}/{stem}_gtFine_labelIds.png",
        )
    folder = "training" if split == "train" else "validation"
    stem = f"ADE_{'train' if split == 'train' else 'val'}_{i + 1:08d}"
    base = "ADEChallengeData2016"
    return f"{base}/images/{folder}/{stem}.jpg", f"{base}/annotations/{folder}/{stem}.png"


def _check_out(out: Path) -> list[str]:
    """Files a previous fake-data run wrote into ``out`` (to replace); refuses foreign content."""
    if not out.exists():
        return []
    if not out.is_dir():
        raise DatasetError(f"{out}: --out exists and is not a folder")
    marker = out / MARKER
    if marker.is_file():
        return list(json.loads(marker.read_text()).get("files", []))
    if any(out.iterdir()):
        raise DatasetError(
            f"{out}: folder is not empty and is not a fake-data tree (no {MARKER}); "
            "choose an empty or new folder (nothing was written)"
        )
    return []


def write_fake_dataset(
    like: str,
    out: str | Path,
    n: int,
    n_val: int | None = None,
    seed: int = 0,
    scale: float = 1.0,
) -> FakeTree:
    """Write a fake ``like`` tree of ``n`` training and ``n_val`` (default ``max(1, n // 4)``)
    validation samples under ``out``.

    Args:
        like: ``cityscapes`` or ``ade20k``.
        out: output folder: new, empty, or a previous fake-data tree (its files are replaced).
        n: training samples.
        n_val: validation samples.
        seed: scenes are a pure function of ``(like, seed, split, index)``.
        scale: multiplies every image size (1.0: the real sizes).
    """
    if like not in FAKE_LIKES:
        raise DatasetError(f"fake-data --like {like!r}: expected one of {', '.join(FAKE_LIKES)}")
    if n < 1 or (n_val is not None and n_val < 0) or not 0 < scale <= 1:
        raise DatasetError(
            f"fake-data: need n >= 1, n_val >= 0, 0 < scale <= 1 (got {n}, {n_val}, {scale})"
        )
    out = Path(out)
    previous = _check_out(out)
    for rel in previous:  # only what the marker says we wrote
        (out / rel).unlink(missing_ok=True)
    t0 = time.perf_counter()
    spec = _spec(like, scale)
    style = _style(like, spec["num_labels"])
    counts = {"train": n, "val": max(1, n // 4) if n_val is None else n_val}
    written: list[str] = []
    for split_id, (split, count) in enumerate(counts.items()):
        for i in range(count):
            rng = np.random.default_rng([seed, zlib_seed(like), split_id, i])
            size = spec["size"] or _ade_size(rng, scale)
            image, label = fake_scene(like, rng, size, style)
            image_rel, label_rel = _layout(like, split, i)
            for rel in (image_rel, label_rel):
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
            if image_rel.endswith(".jpg"):
                Image.fromarray(image).save(out / image_rel, quality=90)
            else:
                Image.fromarray(image).save(out / image_rel, compress_level=1)
            Image.fromarray(label, mode="L").save(out / label_rel, compress_level=1)
            written += [image_rel, label_rel]
    meta = {"like": like, "n": counts, "seed": seed, "scale": scale, "files": written}
    (out / MARKER).write_text(json.dumps(meta))
    return FakeTree(out, like, written, time.perf_counter() - t0)
