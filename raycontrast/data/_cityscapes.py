"""Cityscapes (fine annotations).

Layout::

    root/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png
    root/gtFine/<split>/<city>/<name>_gtFine_labelTrainIds.png   (used when present)
    root/gtFine/<split>/<city>/<name>_gtFine_labelIds.png        (else; mapped to train ids)

``labelIds`` files hold the 34 raw Cityscapes label ids; they are mapped to the 19 evaluation
("train") ids, every other id becoming ignore (255).
"""

from __future__ import annotations

from pathlib import Path

from raycontrast.config import DataConfig
from raycontrast.data._files import FileSource, SamplePair, missing_mask, require_dir
from raycontrast.data._labels import identity_lut, make_lut
from raycontrast.data.base import STORED_IGNORE, DatasetError, DatasetInfo

__all__ = ["CITYSCAPES_CLASSES", "CITYSCAPES_PALETTE", "LABEL_ID_TO_TRAIN_ID", "info", "source"]

CITYSCAPES_CLASSES = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
]  # fmt: skip

CITYSCAPES_PALETTE = [
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
]  # fmt: skip

# Raw label id -> train id for the 19 evaluated classes; ids 0..33 not listed are ignored.
LABEL_ID_TO_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
    26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip

LABEL_IDS_LUT = make_lut({k: LABEL_ID_TO_TRAIN_ID.get(k, STORED_IGNORE) for k in range(34)})
TRAIN_IDS_LUT = identity_lut(len(CITYSCAPES_CLASSES))

MAPPING = (
    "*_gtFine_labelTrainIds.png used as is (0..18, 255 = ignore); otherwise *_gtFine_labelIds.png "
    "mapped from the 34 raw label ids to the 19 train ids, other ids -> 255"
)


def info(cfg: DataConfig) -> DatasetInfo:
    """Class names, palette and label mapping of Cityscapes."""
    return DatasetInfo(
        name="cityscapes",
        num_classes=len(CITYSCAPES_CLASSES),
        class_names=list(CITYSCAPES_CLASSES),
        palette=list(CITYSCAPES_PALETTE),
        ignore_index=cfg.ignore_index,
        label_mapping=MAPPING,
    )


def source(cfg: DataConfig, split: str) -> FileSource:
    """List the images of ``split`` and their masks (train ids preferred over raw label ids)."""
    root = require_dir(Path(cfg.root), "Cityscapes root")
    image_dir = require_dir(root / "leftImg8bit" / split, f"Cityscapes split {split!r} images")
    mask_dir = root / "gtFine" / split
    images = sorted(image_dir.glob("*/*_leftImg8bit.png"))
    if not images:
        raise DatasetError(f"{image_dir}: no <city>/*_leftImg8bit.png images for split {split!r}")
    pairs, dropped = [], []
    for image in images:
        stem = image.name[: -len("_leftImg8bit.png")]
        city = image.parent.name
        train_ids = mask_dir / city / f"{stem}_gtFine_labelTrainIds.png"
        label_ids = mask_dir / city / f"{stem}_gtFine_labelIds.png"
        if train_ids.is_file():
            pairs.append(SamplePair(stem, image, train_ids, TRAIN_IDS_LUT))
        elif label_ids.is_file():
            pairs.append(SamplePair(stem, image, label_ids, LABEL_IDS_LUT))
        else:
            missing_mask(image, [train_ids, label_ids], cfg.on_bad_sample == "skip", dropped)
    return FileSource(pairs, dropped)
