"""Entry points: dataset metadata and torch Datasets from a :class:`DataConfig`."""

from __future__ import annotations

import logging
from types import ModuleType

from raycontrast.config import DataConfig
from raycontrast.data import _ade20k, _cityscapes, _folder, _voc, synthetic
from raycontrast.data.base import STORED_IGNORE, DatasetError, DatasetInfo, SampleSource
from raycontrast.data.dataset import SegmentationDataset
from raycontrast.data.parquet import ParquetSource, manifest_info, read_manifest
from raycontrast.data.transforms import build_transforms

__all__ = ["DATASETS", "build_dataset", "build_source", "dataset_info"]

log = logging.getLogger(__name__)

DATASETS: dict[str, ModuleType] = {
    "synthetic": synthetic,
    "cityscapes": _cityscapes,
    "ade20k": _ade20k,
    "voc": _voc,
    "folder": _folder,
}
"""Reader module of each ``data.dataset`` value; each has ``info(cfg)`` and ``source(cfg, split)``."""


def _reader(cfg: DataConfig) -> ModuleType:
    try:
        return DATASETS[cfg.dataset]
    except KeyError:
        raise DatasetError(
            f"data.dataset={cfg.dataset!r} is unknown; expected one of {', '.join(DATASETS)}"
        ) from None


def dataset_info(cfg: DataConfig) -> DatasetInfo:
    """Class names, palette, ``num_classes`` and ignore value of the configured dataset.

    With ``cfg.source == "parquet"`` the metadata comes from ``parquet_dir/manifest.json``. For the
    ``folder`` dataset class names come from ``cfg.class_names`` or ``<root>/classes.txt``.
    ``cfg.num_classes``, when set, must agree with the dataset (for ``folder`` without names it
    sets the number of classes).

    Args:
        cfg: the data config.

    Example:
        >>> info = dataset_info(DataConfig(dataset="synthetic"))
        >>> info.num_classes, info.class_names[0]
        (7, 'background')
    """
    if cfg.source == "parquet":
        manifest = read_manifest(cfg.parquet_dir)
        if manifest["dataset"] != cfg.dataset:
            raise DatasetError(
                f"{cfg.parquet_dir}: shards hold dataset {manifest['dataset']!r} but "
                f"data.dataset={cfg.dataset!r}"
            )
        info = manifest_info(manifest, cfg)
    else:
        info = _reader(cfg).info(cfg)
    if cfg.num_classes is not None and cfg.num_classes != info.num_classes:
        raise DatasetError(
            f"data.num_classes={cfg.num_classes} but dataset {info.name!r} has "
            f"{info.num_classes} classes"
        )
    if info.num_classes > STORED_IGNORE:
        raise DatasetError(f"dataset {info.name!r}: at most 255 classes are supported")
    if 0 <= cfg.ignore_index < info.num_classes:
        raise DatasetError(
            f"data.ignore_index={cfg.ignore_index} is a class id of {info.name!r} "
            f"(0..{info.num_classes - 1}); use a value outside the classes, e.g. 255"
        )
    return info


def build_source(cfg: DataConfig, split: str) -> SampleSource:
    """The undecoded samples of ``split`` (files, Parquet rows or generated scenes)."""
    if cfg.source == "parquet":
        return ParquetSource(cfg.parquet_dir, split, dataset_info(cfg).num_classes)
    return _reader(cfg).source(cfg, split)


def build_dataset(cfg: DataConfig, split: str, train: bool) -> SegmentationDataset:
    """The torch Dataset of ``split``.

    Items are ``{"image": float32 3xHxW normalised, "label": int64 HxW (ignore =
    cfg.ignore_index), "id": str, "skipped": int}``. With ``train=True`` random scale, crop to
    ``cfg.crop_size``, flip and colour jitter are applied, reproducibly per
    ``(dataset.seed, epoch, index)``: call ``dataset.set_epoch(epoch)`` each epoch (it reaches
    DataLoader workers) and set ``dataset.seed`` to the run's seed.

    Args:
        cfg: the data config (dataset, root or parquet_dir, transforms, on_bad_sample).
        split: split name, e.g. ``cfg.train_split`` or ``cfg.val_split``.
        train: training augmentation (fixed-size crops) or evaluation (normalisation only).

    Raises:
        DatasetError: missing root, split folder or split file; an image without a mask (unless
            ``on_bad_sample=skip``). Corrupt or inconsistent samples raise when they are read.

    Example:
        >>> ds = build_dataset(DataConfig(dataset="synthetic", crop_size=[64, 64]), "train", True)
        >>> ds.set_epoch(1)
        >>> item = ds[0]
        >>> tuple(item["image"].shape), item["label"].dtype, item["id"]
        ((3, 64, 64), torch.int64, 'train_000000')
    """
    info = dataset_info(cfg)
    source = build_source(cfg, split)
    dropped = getattr(source, "dropped", [])
    if dropped:
        log.warning(
            "%s split %r: left out %d bad samples, e.g. %s",
            info.name,
            split,
            len(dropped),
            dropped[0],
        )
    return SegmentationDataset(
        source, build_transforms(cfg, train), info, skip_bad=cfg.on_bad_sample == "skip"
    )
