"""ADE20K (the 150-class SceneParsing benchmark, ADEChallengeData2016).

Layout (``root`` may also be the ``ADEChallengeData2016`` folder itself)::

    root/ADEChallengeData2016/images/{training,validation}/<name>.jpg
    root/ADEChallengeData2016/annotations/{training,validation}/<name>.png

Split names ``train``/``val`` are accepted for ``training``/``validation``. Annotations store
0 = "other" and 1..150 = classes; they are mapped with reduce-zero-label: 0 -> 255 (ignore),
k -> k - 1.
"""

from __future__ import annotations

from pathlib import Path

from raycontrast.config import DataConfig
from raycontrast.data._files import FileSource, SamplePair, missing_mask, require_dir
from raycontrast.data._io import IMAGE_EXTENSIONS
from raycontrast.data._labels import bit_palette, make_lut
from raycontrast.data.base import STORED_IGNORE, DatasetError, DatasetInfo

__all__ = ["ADE20K_CLASSES", "SPLIT_NAMES", "info", "source"]

ADE20K_CLASSES = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing",
    "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink",
    "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case",
    "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister",
    "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel",
    "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step",
    "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen",
    "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
]  # fmt: skip

SPLIT_NAMES = {"train": "training", "val": "validation", "training": "training",
               "validation": "validation"}  # fmt: skip

REDUCE_ZERO_LUT = make_lut({0: STORED_IGNORE, **{k: k - 1 for k in range(1, 151)}})

MAPPING = "reduce-zero-label: 0 (other) -> 255, k -> k - 1 for k in 1..150"


def info(cfg: DataConfig) -> DatasetInfo:
    """Class names, palette (bit-interleaving colour map, shifted past black) and label mapping."""
    return DatasetInfo(
        name="ade20k",
        num_classes=len(ADE20K_CLASSES),
        class_names=list(ADE20K_CLASSES),
        palette=bit_palette(len(ADE20K_CLASSES) + 1)[1:],
        ignore_index=cfg.ignore_index,
        label_mapping=MAPPING,
    )


def _base(root: Path) -> Path:
    require_dir(root, "ADE20K root")
    nested = root / "ADEChallengeData2016"
    return nested if nested.is_dir() or not (root / "images").is_dir() else root


def source(cfg: DataConfig, split: str) -> FileSource:
    """List the images of ``split`` (train/val/training/validation) and their annotations."""
    base = _base(Path(cfg.root))
    folder = SPLIT_NAMES.get(split)
    if folder is None:
        raise DatasetError(
            f"ADE20K split {split!r} is unknown; expected one of train, val, training, validation"
        )
    image_dir = require_dir(base / "images" / folder, f"ADE20K split {split!r} images")
    mask_dir = base / "annotations" / folder
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise DatasetError(f"{image_dir}: no images for ADE20K split {split!r}")
    pairs, dropped = [], []
    for image in images:
        mask = mask_dir / f"{image.stem}.png"
        if mask.is_file():
            pairs.append(SamplePair(image.stem, image, mask, REDUCE_ZERO_LUT))
        else:
            missing_mask(image, mask, cfg.on_bad_sample == "skip", dropped)
    return FileSource(pairs, dropped)
