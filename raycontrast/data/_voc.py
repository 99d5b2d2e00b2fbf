"""Pascal VOC 2012 segmentation.

Layout (``root`` may be the ``VOC2012`` folder, its parent, or the parent of ``VOCdevkit``)::

    VOC2012/ImageSets/Segmentation/<split>.txt    one sample id per line
    VOC2012/JPEGImages/<id>.jpg
    VOC2012/SegmentationClass/<id>.png            palette ("P") PNG; indices are the labels
    VOC2012/SegmentationClassAug/<id>.png         optional (data.voc_aug); plain label PNG

Labels are 0 = background, 1..20 = objects, 255 = object border (ignored).
"""

from __future__ import annotations

from pathlib import Path

from raycontrast.config import DataConfig
from raycontrast.data._files import FileSource, SamplePair, missing_mask, require_dir
from raycontrast.data._labels import bit_palette, identity_lut
from raycontrast.data.base import DatasetError, DatasetInfo

__all__ = ["VOC_CLASSES", "find_voc_root", "info", "source"]

VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
]  # fmt: skip

VOC_LUT = identity_lut(len(VOC_CLASSES))

MAPPING = "palette indices used as is: 0..20, 255 (border) = ignore"


def info(cfg: DataConfig) -> DatasetInfo:
    """Class names, the VOC colour map and label mapping."""
    return DatasetInfo(
        name="voc",
        num_classes=len(VOC_CLASSES),
        class_names=list(VOC_CLASSES),
        palette=bit_palette(len(VOC_CLASSES)),
        ignore_index=cfg.ignore_index,
        label_mapping=MAPPING + ("; SegmentationClassAug preferred" if cfg.voc_aug else ""),
    )


def find_voc_root(root: Path) -> Path:
    """The ``VOC2012`` folder under ``root`` (``root`` itself, ``root/VOC2012`` or
    ``root/VOCdevkit/VOC2012``)."""
    require_dir(root, "Pascal VOC root")
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise DatasetError(
        f"{root}: no Pascal VOC 2012 layout found (expected {root}/VOC2012/JPEGImages or "
        f"{root}/VOCdevkit/VOC2012/JPEGImages)"
    )


def source(cfg: DataConfig, split: str) -> FileSource:
    """The samples listed in ``ImageSets/Segmentation/<split>.txt``."""
    voc = find_voc_root(Path(cfg.root))
    split_file = voc / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not split_file.is_file():
        raise DatasetError(f"{split_file}: split file for VOC split {split!r} not found")
    ids = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
    if not ids:
        raise DatasetError(f"{split_file}: split file lists no sample ids")
    aug_dir = voc / "SegmentationClassAug"
    use_aug = cfg.voc_aug and aug_dir.is_dir()
    skip = cfg.on_bad_sample == "skip"
    pairs, dropped = [], []
    for sample_id in ids:
        image = voc / "JPEGImages" / f"{sample_id}.jpg"
        if not image.is_file():
            if not skip:
                raise DatasetError(f"{image}: image listed in {split_file} not found")
            dropped.append(f"{image}: not found")
            continue
        candidates = [voc / "SegmentationClass" / f"{sample_id}.png"]
        if use_aug:
            candidates.insert(0, aug_dir / f"{sample_id}.png")
        mask = next((c for c in candidates if c.is_file()), None)
        if mask is None:
            missing_mask(image, candidates, skip, dropped)
        else:
            pairs.append(SamplePair(sample_id, image, mask, VOC_LUT))
    return FileSource(pairs, dropped)
