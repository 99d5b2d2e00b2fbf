"""Tiny on-disk dataset trees for the reader tests (written with PIL into a tmp folder)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from raycontrast.data._labels import bit_palette

SIZE = (12, 16)  # (height, width) of every fixture image


def rng_image(seed: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def write_png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array) if mode is None else Image.fromarray(array, mode=mode)
    img.save(path)
    return path


def write_jpeg(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, quality=90)
    return path


def write_palette_png(path: Path, indices: np.ndarray) -> Path:
    """A mode "P" PNG whose palette indices are ``indices`` (as Pascal VOC stores labels)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(indices.astype(np.uint8), mode="P")
    flat = [v for colour in bit_palette(256) for v in colour]
    img.putpalette(flat)
    img.save(path)
    return path


def make_cityscapes(
    root: Path, split: str = "train", train_ids: bool = False, n_per_city: int = 2
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Cityscapes tree; returns ``{id: (image, raw label)}``. Raw labels use labelIds 0..33
    (``train_ids=False``) or train ids 0..18 + 255."""
    out = {}
    seed = 0
    for city in ("aachen", "bonn"):
        for i in range(n_per_city):
            stem = f"{city}_{i:06d}_000019"
            image = rng_image(seed)
            rng = np.random.default_rng(seed + 100)
            if train_ids:
                label = rng.choice(np.r_[np.arange(19), 255], size=SIZE).astype(np.uint8)
                name = f"{stem}_gtFine_labelTrainIds.png"
            else:
                label = rng.integers(0, 34, size=SIZE, dtype=np.uint8)
                name = f"{stem}_gtFine_labelIds.png"
            write_png(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", image)
            write_png(root / "gtFine" / split / city / name, label)
            out[stem] = (image, label)
            seed += 1
    return out


def make_ade20k(root: Path, folder: str = "training", n: int = 3) -> dict[str, np.ndarray]:
    """ADE20K tree (JPEG images); returns ``{id: raw annotation 0..150}``."""
    base = root / "ADEChallengeData2016"
    out = {}
    for i in range(n):
        stem = f"ADE_{folder[:5]}_{i:08d}"
        write_jpeg(base / "images" / folder / f"{stem}.jpg", rng_image(i))
        label = np.random.default_rng(i + 50).integers(0, 151, size=SIZE, dtype=np.uint8)
        write_png(base / "annotations" / folder / f"{stem}.png", label)
        out[stem] = label
    return out


def make_voc(
    root: Path, split: str = "train", n: int = 3, devkit: bool = True
) -> dict[str, np.ndarray]:
    """VOC tree with palette PNG masks (0..20 and a 255 border); returns ``{id: label}``."""
    voc = root / "VOCdevkit" / "VOC2012" if devkit else root / "VOC2012"
    out = {}
    for i in range(n):
        sample_id = f"2007_{i:06d}"
        write_jpeg(voc / "JPEGImages" / f"{sample_id}.jpg", rng_image(i))
        label = np.random.default_rng(i).integers(0, 21, size=SIZE, dtype=np.uint8)
        label[0, :] = 255  # object border
        write_palette_png(voc / "SegmentationClass" / f"{sample_id}.png", label)
        out[sample_id] = label
    split_file = voc / "ImageSets" / "Segmentation" / f"{split}.txt"
    split_file.parent.mkdir(parents=True, exist_ok=True)
    split_file.write_text("".join(f"{k}\n" for k in out))
    return out


def make_folder(
    root: Path,
    split: str = "train",
    n: int = 3,
    num_classes: int = 3,
    layout: str = "images_first",
    classes_txt: bool = True,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Generic folder tree (PNG images); returns ``{id: (image, label)}``."""
    if layout == "images_first":
        image_dir, mask_dir = root / "images" / split, root / "masks" / split
    else:
        image_dir, mask_dir = root / split / "images", root / split / "masks"
    out = {}
    for i in range(n):
        image = rng_image(i)
        label = np.random.default_rng(i).integers(0, num_classes, size=SIZE, dtype=np.uint8)
        label[-1, -3:] = 255
        write_png(image_dir / f"img{i}.png", image)
        write_png(mask_dir / f"img{i}.png", label)
        out[f"img{i}"] = (image, label)
    if classes_txt:
        names = [f"name{k}" for k in range(num_classes)]
        (root / "classes.txt").write_text("# classes\n" + "\n".join(names) + "\n")
    return out
