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

from raycontrast._progress import progress
from raycontrast.config import ConfigError, load_config
from raycontrast.data._io import encode_png
from raycontrast.data.base import STORED_IGNORE, DatasetError
from raycontrast.data.build import build_source, dataset_info
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

    Nothing that this function did not write is deleted or overwritten: ``out`` may not be (or be
    inside, or contain) ``root``, nor an existing file, and an existing ``out/<split>`` is replaced only
    when it is a shard set of the same dataset listed in ``out/manifest.json``. Shards are written to a
    temporary sibling folder that replaces the old set only once complete.

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
        raise ConfigError(f"--rows-per-shard must be >= 1, got {rows_per_shard}")
    if not split or Path(split).name != split or split.startswith("."):
        raise ConfigError(f"--split must be a plain split name (e.g. train), got {split!r}")
    bad = [o for o in overrides if not o.strip().startswith("data.")]
    if bad:
        raise ConfigError(f"convert overrides must be data.* keys, got {bad[0]!r}")
    items = [f"data.dataset={dataset}", *([f"data.root={root}"] if root else []), *overrides]
    cfg = load_config(None, [*items, "data.source=files", "data.ingest=torch"]).data
    out_dir = Path(out).expanduser()
    _check_out(out_dir, cfg.root if cfg.dataset != "synthetic" else "")
    info = dataset_info(cfg)
    source = build_source(cfg, split)
    skip = cfg.on_bad_sample == "skip"

    manifest = _load_or_new_manifest(out_dir, info, cfg.dataset)
    split_dir = out_dir / split
    _check_replaceable(split_dir, manifest)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp_dir = out_dir / f".{split}.tmp-{os.getpid()}"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir()

    skipped = list(getattr(source, "dropped", []))
    rows: dict[str, list[Any]] = {name: [] for name in SCHEMA.names}
    shards, written, total = 0, 0, len(source)
    start = time.perf_counter()
    bar = progress(total=total, desc=f"convert {split}", unit="img")

    def say(message: str) -> None:  # a line above the progress bar, or a plain print
        if bar.disable:
            print(message, flush=True)
        else:
            bar.write(message)

    def flush() -> None:
        nonlocal shards, rows
        if not rows["id"]:
            return
        table = pa.table(rows, schema=SCHEMA)
        pq.write_table(table, tmp_dir / f"part-{shards:05d}.parquet", row_group_size=ROW_GROUP_SIZE)
        shards += 1
        rows = {name: [] for name in SCHEMA.names}
        say(
            f"[convert] {info.name}/{split}: {written}/{total} rows, {shards} shards "
            f"({time.perf_counter() - start:.0f}s)"
        )

    try:
        for index in range(total):
            bar.update(1)
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
        _swap_in(tmp_dir, split_dir)
    finally:
        bar.close()
        shutil.rmtree(tmp_dir, ignore_errors=True)

    manifest["splits"][split] = {
        "rows": written,
        "shards": shards,
        "skipped": len(skipped),
        "skipped_samples": skipped[:100],
        "source_root": str(Path(cfg.root).resolve()) if cfg.root else "",
    }
    path = out_dir / MANIFEST_NAME
    tmp_manifest = out_dir / f".{MANIFEST_NAME}.tmp-{os.getpid()}"
    tmp_manifest.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp_manifest, path)
    print(f"[convert] wrote {written} rows of {split!r} to {split_dir} ({len(skipped)} skipped)")
    return split_dir


def _check_out(out_dir: Path, root: str) -> None:
    """Refuse an output folder that would overwrite the source dataset or an existing file."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is an existing file; pass a folder for the shards")
    if not root:
        return
    src, dst = Path(root).expanduser().resolve(), out_dir.resolve()
    if src == dst or src in dst.parents or dst in src.parents:
        relation = "is" if src == dst else ("is inside" if src in dst.parents else "contains")
        raise ConfigError(
            f"--out {out_dir} {relation} the dataset root --root {root}: converting there could "
            "overwrite the source files. Write the shards to a folder outside the dataset, e.g. "
            f"--out {src.parent / (src.name + '-parquet')}"
        )


def _is_shard_file(path: Path) -> bool:
    return path.is_file() and path.name.startswith("part-") and path.suffix == ".parquet"


def _check_replaceable(split_dir: Path, manifest: dict[str, Any]) -> None:
    """An existing ``out/<split>`` is replaced only when it is this dataset's shard set: listed in the
    (already checked) manifest and holding nothing but ``part-*.parquet`` files."""
    if not split_dir.exists() and not split_dir.is_symlink():
        return
    if split_dir.is_symlink() or not split_dir.is_dir():
        raise ConfigError(
            f"{split_dir} exists and is not a shard folder written by raycontrast convert; "
            "convert into another --out folder"
        )
    entries = sorted(split_dir.iterdir())
    if not entries:
        return
    foreign = [p for p in entries if not _is_shard_file(p)]
    if split_dir.name not in manifest.get("splits", {}) or foreign:
        why = (
            f"it holds {foreign[0].name!r}, which raycontrast convert did not write"
            if foreign
            else f"{split_dir.parent / MANIFEST_NAME} does not list split {split_dir.name!r}"
        )
        raise ConfigError(
            f"{split_dir} already exists and is not a Parquet shard set of this dataset ({why}); "
            "nothing was changed. Convert into another --out folder"
        )


def _swap_in(tmp_dir: Path, split_dir: Path) -> None:
    """Replace ``split_dir`` by the complete ``tmp_dir``; the old set is kept until the new one is in
    place (and put back if that fails)."""
    old = split_dir.with_name(f".{split_dir.name}.old-{os.getpid()}")
    had_old = split_dir.exists()
    if had_old:
        split_dir.rename(old)
    try:
        tmp_dir.rename(split_dir)
    except BaseException:
        if had_old:
            old.rename(split_dir)
        raise
    if had_old:
        shutil.rmtree(old, ignore_errors=True)


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
