"""Reading the Parquet shards written by :func:`raycontrast.data.convert_dataset`.

Layout::

    parquet_dir/manifest.json                 dataset, classes, palette, label mapping, splits
    parquet_dir/<split>/part-00000.parquet    columns: image, mask, id, height, width, split

``image`` holds the encoded image file (the original JPEG/PNG bytes, or PNG for generated data),
``mask`` a PNG of the already mapped ``uint8`` train ids (255 = ignore). Two readers share the
decoding: :class:`ParquetSegDataset` (a torch Dataset, random access by row group) and
:func:`read_parquet_ray` (Ray Data streaming).
"""

from __future__ import annotations

import bisect
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.parquet as pq

from raycontrast.config import DataConfig
from raycontrast.data._io import check_same_size, decode_image, decode_mask
from raycontrast.data._labels import apply_lut, identity_lut
from raycontrast.data.base import DatasetError, DatasetInfo, RawSample
from raycontrast.data.dataset import SegmentationDataset
from raycontrast.data.transforms import build_transforms

if TYPE_CHECKING:
    import ray.data

__all__ = [
    "MANIFEST_NAME",
    "ParquetSegDataset",
    "ParquetSource",
    "decode_batch",
    "manifest_info",
    "read_manifest",
    "read_parquet_ray",
    "shard_paths",
]

MANIFEST_NAME = "manifest.json"
FORMAT = "raycontrast-segmentation-parquet"


def read_manifest(parquet_dir: str | Path) -> dict[str, Any]:
    """The ``manifest.json`` of a converted dataset (:class:`DatasetError` naming it if missing)."""
    path = Path(parquet_dir) / MANIFEST_NAME
    if not Path(parquet_dir).is_dir():
        raise DatasetError(f"{parquet_dir}: Parquet folder not found (run `raycontrast convert`)")
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{path}: manifest not found (run `raycontrast convert`)") from None
    except (OSError, ValueError) as err:
        raise DatasetError(f"{path}: unreadable manifest ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DatasetError(f"{path}: not a raycontrast Parquet manifest (expected format {FORMAT})")
    return manifest


def manifest_info(manifest: dict[str, Any], cfg: DataConfig | None = None) -> DatasetInfo:
    """The :class:`DatasetInfo` recorded in a manifest; ``ignore_index`` is ``cfg``'s."""
    cfg = cfg or DataConfig()
    return DatasetInfo(
        name=manifest["dataset"],
        num_classes=int(manifest["num_classes"]),
        class_names=list(manifest["class_names"]),
        palette=[tuple(c) for c in manifest["palette"]],
        ignore_index=cfg.ignore_index,
        label_mapping=manifest.get("label_mapping", ""),
    )


def shard_paths(parquet_dir: str | Path, split: str) -> list[Path]:
    """The sorted shard files of ``split`` (:class:`DatasetError` if the split folder is missing)."""
    split_dir = Path(parquet_dir) / split
    if not split_dir.is_dir():
        raise DatasetError(f"{split_dir}: Parquet split {split!r} not found")
    paths = sorted(split_dir.glob("part-*.parquet"))
    if not paths:
        raise DatasetError(f"{split_dir}: no part-*.parquet shards for split {split!r}")
    return paths


def _decode_row(
    image_bytes: bytes, mask_bytes: bytes, height: int, width: int, name: str, lut: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    image = decode_image(image_bytes, f"{name} image")
    mask = decode_mask(mask_bytes, f"{name} mask")
    check_same_size(image, mask, f"{name} image", f"{name} mask")
    if image.shape[:2] != (height, width):
        raise DatasetError(
            f"{name}: image is {image.shape[1]}x{image.shape[0]} but the row says {width}x{height}"
        )
    return image, apply_lut(mask, lut, f"{name} mask")


class ParquetSource:
    """Random access to the rows of one split's shards.

    Only the ``id`` column and the footers are read at construction; a row is decoded when asked
    for, reading its row group (the last one read is cached per process).
    """

    def __init__(self, parquet_dir: str | Path, split: str, num_classes: int) -> None:
        self.paths = shard_paths(parquet_dir, split)
        self.lut = identity_lut(num_classes)
        self.ids: list[str] = []
        self._groups: list[tuple[int, int]] = []  # (shard, row group) of each group
        self._starts: list[int] = []  # first row (global index) of each group
        for s, path in enumerate(self.paths):
            try:
                meta = pq.read_metadata(path)
                ids = pq.read_table(path, columns=["id"]).column("id").to_pylist()
            except Exception as err:  # pyarrow raises several types for a corrupt file
                raise DatasetError(f"{path}: unreadable Parquet shard ({err})") from None
            row = len(self.ids)
            for g in range(meta.num_row_groups):
                self._groups.append((s, g))
                self._starts.append(row)
                row += meta.row_group(g).num_rows
            self.ids.extend(ids)
        self._cache: tuple[int, dict[str, list]] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"] = None
        return state

    def sample_id(self, index: int) -> str:
        return self.ids[index]

    def _group(self, group: int) -> dict[str, list]:
        if self._cache is None or self._cache[0] != group:
            shard, g = self._groups[group]
            path = self.paths[shard]
            try:
                table = pq.ParquetFile(path).read_row_group(g)
            except Exception as err:
                raise DatasetError(f"{path}: unreadable row group {g} ({err})") from None
            self._cache = (group, table.to_pydict())
        return self._cache[1]

    def load(self, index: int) -> RawSample:
        group = bisect.bisect_right(self._starts, index) - 1
        rows = self._group(group)
        r = index - self._starts[group]
        path = self.paths[self._groups[group][0]]
        name = f"{path} row {rows['id'][r]!r}"
        image, label = _decode_row(
            rows["image"][r], rows["mask"][r], rows["height"][r], rows["width"][r], name, self.lut
        )
        return RawSample(id=rows["id"][r], image=image, label=label, image_bytes=rows["image"][r])


class ParquetSegDataset(SegmentationDataset):
    """A torch Dataset over converted shards; items are those of ``build_dataset``.

    Args:
        parquet_dir: folder holding ``manifest.json`` and ``<split>/part-*.parquet``.
        split: split folder to read.
        cfg: data config for the transforms, ``ignore_index`` and ``on_bad_sample``
            (default: ``DataConfig()``).
        train: training augmentation (see ``build_transforms``).
        seed: global augmentation seed.

    Example:
        >>> ds = ParquetSegDataset("shards/", "val")  # doctest: +SKIP
        >>> ds[0]["image"].shape  # doctest: +SKIP
        torch.Size([3, 96, 96])
    """

    def __init__(
        self,
        parquet_dir: str | Path,
        split: str,
        cfg: DataConfig | None = None,
        train: bool = False,
        seed: int = 0,
    ) -> None:
        cfg = cfg or DataConfig()
        info = manifest_info(read_manifest(parquet_dir), cfg)
        source = ParquetSource(parquet_dir, split, info.num_classes)
        super().__init__(
            source,
            build_transforms(cfg, train),
            info,
            skip_bad=cfg.on_bad_sample == "skip",
            seed=seed,
        )


def decode_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """Decode a batch of Parquet rows (a Ray Data "numpy" batch, or any dict of sequences).

    Returns ``image`` (uint8 HxWx3 per row) and ``label`` (uint8 HxW train ids, 255 = ignore) as
    object arrays of per-row arrays (rows may differ in size), plus ``id``, ``height``, ``width``
    and ``split`` unchanged. Errors name the row's id.
    """
    images, labels = [], []
    lut = np.arange(256, dtype=np.int16)  # values are validated by the torch reader, not here
    for i, sample_id in enumerate(batch["id"]):
        name = f"Parquet row {str(sample_id)!r}"
        image, label = _decode_row(
            bytes(batch["image"][i]),
            bytes(batch["mask"][i]),
            int(batch["height"][i]),
            int(batch["width"][i]),
            name,
            lut,
        )
        images.append(image)
        labels.append(label)
    out = {key: value for key, value in batch.items() if key not in ("image", "mask")}
    out["image"] = _object_array(images)
    out["label"] = _object_array(labels)
    return out


def _object_array(arrays: list[np.ndarray]) -> np.ndarray:
    out = np.empty(len(arrays), dtype=object)
    for i, a in enumerate(arrays):
        out[i] = a
    return out


def read_parquet_ray(parquet_dir: str, split: str, decode: bool = True) -> ray.data.Dataset:
    """Stream one split's shards with Ray Data.

    Args:
        parquet_dir: folder written by ``raycontrast convert``.
        split: split folder to read.
        decode: map :func:`decode_batch` over the rows (``image``/``label`` arrays); ``False``
            returns the encoded rows.

    Example:
        >>> ds = read_parquet_ray("shards/", "train")  # doctest: +SKIP
        >>> row = ds.take(1)[0]; row["image"].shape, row["label"].dtype  # doctest: +SKIP
        ((96, 96, 3), dtype('uint8'))
    """
    import ray.data

    paths = [str(p) for p in shard_paths(parquet_dir, split)]
    ds = ray.data.read_parquet(paths)
    return ds.map_batches(decode_batch, batch_format="numpy") if decode else ds
