"""Datasets: readers for standard layouts, a synthetic dataset, transforms and Parquet shards.

Pure torch/numpy/PIL/pyarrow; Ray is imported only by :func:`read_parquet_ray`.

Example:
    >>> from raycontrast.config import DataConfig
    >>> from raycontrast.data import build_dataset, dataset_info
    >>> cfg = DataConfig(dataset="synthetic", crop_size=[96, 96])
    >>> dataset_info(cfg).num_classes
    7
    >>> train = build_dataset(cfg, "train", train=True)
    >>> sorted(train[0])
    ['id', 'image', 'label', 'skipped']
"""

from raycontrast.data.base import DatasetError, DatasetInfo
from raycontrast.data.build import DATASETS, build_dataset, dataset_info
from raycontrast.data.convert import convert_dataset
from raycontrast.data.dataset import SegmentationDataset
from raycontrast.data.parquet import ParquetSegDataset, read_parquet_ray
from raycontrast.data.synthetic import SYNTHETIC_CLASSES, generate_scene
from raycontrast.data.transforms import build_transforms

__all__ = [
    "DATASETS",
    "SYNTHETIC_CLASSES",
    "DatasetError",
    "DatasetInfo",
    "ParquetSegDataset",
    "SegmentationDataset",
    "build_dataset",
    "build_transforms",
    "convert_dataset",
    "dataset_info",
    "generate_scene",
    "read_parquet_ray",
]
