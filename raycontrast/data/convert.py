"""Converting a dataset split to Parquet shards (``raycontrast convert``)."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raycontrast.config import ConfigError, load_config
from raycontrast.data.base import STORED_IGNORE, DatasetError
from raycontrast.data.build import build_source, dataset_info
from raycontrast.data.io import encode_png
from raycontrast.data.parquet import FORMAT, MANIFEST_NAME

__all__ = ["ROW_GROUP_SIZE", "SCHEMA", "convert_dataset"]

SCHEMA = pa.schema(
    [
        ("image", pa.binary()),
        ("mask", pa.binary()),
        ("id", pa.string()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("split", pa.string()),
    ]
)

ROW_GROUP_SIZE = 32
"""Rows per Parquet row group: the unit a random-access read decodes."""


def convert_dataset(
    dataset: str,
    root: str,
    split: str,
    out: str,
    rows_per_shard: int = 256,
    overrides: Sequence[str] = (),
) -> Path:
    """Write one split of a dataset as Parquet shards plus ``out/manifest.json``.

    Every sample is decoded and validated (the errors of the file readers; with
    ``data.on_bad_sample=skip`` bad samples are left out and listed in the manifest). Images keep
    their original encoded bytes (PNG for the synthetic dataset); masks are stored as PNGs of the
    mapped train ids (uint8, 255 = ignore). Converting another split into the same ``out`` merges
    its entry into the manifest; re-converting a split replaces its shards.

    Args:
        dataset: ``data.dataset`` value (synthetic, cityscapes, ade20k, voc, folder).
        root: dataset root folder (ignored for synthetic).
        split: split to convert.
        out: output folder; shards go to ``out/<split>/part-00000.parquet``, ...
        rows_per_shard: rows per shard file.
        overrides: further ``data.*`` config overrides, e.g. ``["data.class_names=[a,b]"]``.

    Returns:
        The folder of the written shards, ``out/<split>``.

    Example:
        >>> convert_dataset("synthetic", "", "val", "/tmp/shards", rows_per_shard=16)  # doctest: +SKIP
        PosixPath('/tmp/shards/val')
    """
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
    bad = [o for o in overrides if not o.strip().startswith("data.")]
    if bad:
        raise ConfigError(f"convert overrides must be data.* keys, got {bad[0]!r}")
    items = [f"data.dataset={dataset}", *([f"data.root={root}"] if root else []), *overrides]
    cfg = load_config(None, [*items, "data.source=files", "data.ingest=torch"]).data
    info = dataset_info(cfg)
    source = build_source(cfg, split)
    skip = cfg.on_bad_sample == "skip"

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = _load_or_new_manifest(out_dir, info, cfg.dataset)
    tmp_dir = out_dir / f".{split}.tmp-{os.getpid()}"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir()

    skipped = list(getattr(source, "dropped", []))
    rows: dict[str, list[Any]] = {name: [] for name in SCHEMA.names}
    shards, written, total = 0, 0, len(source)
    start = time.perf_counter()

    def flush() -> None:
        nonlocal shards, rows
        if not rows["id"]:
            return
        table = pa.table(rows, schema=SCHEMA)
        pq.write_table(table, tmp_dir / f"part-{shards:05d}.parquet", row_group_size=ROW_GROUP_SIZE)
        shards += 1
        rows = {name: [] for name in SCHEMA.names}
        print(
            f"[convert] {info.name}/{split}: {written}/{total} rows, {shards} shards "
            f"({time.perf_counter() - start:.0f}s)",
            flush=True,
        )

    try:
        for index in range(total):
            try:
                sample = source.load(index)
            except DatasetError as err:
                if not skip:
                    raise
                skipped.append(str(err))
                continue
            image = (
                sample.image_bytes if sample.image_bytes is not None else encode_png(sample.image)
            )
            rows["image"].append(image)
            rows["mask"].append(encode_png(sample.label))
            rows["id"].append(sample.id)
            rows["height"].append(int(sample.image.shape[0]))
            rows["width"].append(int(sample.image.shape[1]))
            rows["split"].append(split)
            written += 1
            if len(rows["id"]) >= rows_per_shard:
                flush()
        flush()
        if written == 0:
            raise DatasetError(f"{info.name} split {split!r}: no valid samples to convert")
        split_dir = out_dir / split
        shutil.rmtree(split_dir, ignore_errors=True)
        tmp_dir.rename(split_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)

    manifest["splits"][split] = {
        "rows": written,
        "shards": shards,
        "skipped": len(skipped),
        "skipped_samples": skipped[:100],
        "source_root": str(Path(cfg.root).resolve()) if cfg.root else "",
    }
    path = out_dir / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"[convert] wrote {written} rows of {split!r} to {split_dir} ({len(skipped)} skipped)")
    return split_dir


def _load_or_new_manifest(out_dir: Path, info: Any, dataset: str) -> dict[str, Any]:
    """The existing manifest of ``out_dir`` (checked to describe the same classes) or a new one."""
    fresh = {
        "format": FORMAT,
        "version": 1,
        "dataset": dataset,
        "num_classes": info.num_classes,
        "class_names": list(info.class_names),
        "palette": [list(c) for c in info.palette],
        "ignore_index": STORED_IGNORE,
        "label_mapping": info.label_mapping,
        "columns": {
            "image": "encoded image file bytes (original file, or PNG for generated data)",
            "mask": "PNG (mode L) of train ids after the label mapping; 255 = ignore",
            "id": "sample id",
            "height": "image height",
            "width": "image width",
            "split": "split name",
        },
        "splits": {},
    }
    path = out_dir / MANIFEST_NAME
    if not path.is_file():
        return fresh
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DatasetError(f"{path}: unreadable existing manifest ({err})") from None
    for key in ("format", "dataset", "num_classes", "class_names", "label_mapping"):
        if old.get(key) != fresh[key]:
            raise DatasetError(
                f"{path}: existing manifest has {key}={old.get(key)!r} but this conversion has "
                f"{fresh[key]!r}; convert into another folder"
            )
    fresh["splits"] = dict(old.get("splits", {}))
    return fresh
