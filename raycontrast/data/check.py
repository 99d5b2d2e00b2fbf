"""Check a dataset's files in the driver, before any Train worker starts (``preflight``, ``--dry-run``).

A bad file found by a worker costs a worker-group start and a traceback; found here it is one line
naming the file. What is read, and why it stays cheap (seconds for a Cityscapes-sized tree):

* **every file's header** (PIL reads the first bytes, decodes no pixels): missing, zero-byte,
  unreadable or not an image; a mask mode that holds no labels; a mask whose size differs from its
  image's;
* **every Parquet shard's footer**: the columns ``raycontrast convert`` writes, a row count > 0 and,
  when the manifest records one, the split's total;
* **the first K samples and K random others** (``data.check_masks``), decoded as training decodes
  them: corrupt pixel data and label values outside the dataset's class table (the ignore label is
  allowed; for Cityscapes ``labelIds`` the raw ids are checked against their mapping).

With ``data.on_bad_sample=skip`` the problems are returned as warnings instead of raised.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from raycontrast.config import DataConfig
from raycontrast.data.base import DatasetError, SampleSource

__all__ = ["MASK_MODES", "DataCheck", "check_data_files", "check_header"]

MASK_MODES = ("P", "L", "I", "I;16", "I;16B", "I;16L", "1", "RGB", "RGBA")
"""Modes a label PNG may have (:func:`raycontrast.data._io.decode_mask` reads these)."""


@dataclass
class DataCheck:
    """What :func:`check_data_files` looked at, and the problems it found (when skipping bad samples)."""

    headers: int = 0
    shards: int = 0
    decoded: int = 0
    problems: list[str] = field(default_factory=list)


def check_header(path: Path, what: str) -> tuple[tuple[int, int], str]:
    """``((width, height), mode)`` of an image file from its header alone.

    Raises:
        DatasetError: naming ``path``: missing, zero bytes, unreadable, or not an image.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DatasetError(f"{path}: {what} not found") from None
    except OSError as err:
        raise DatasetError(f"{path}: cannot read {what} ({err.strerror or err})") from None
    if size == 0:
        raise DatasetError(f"{path}: {what} is an empty (zero-byte) file")
    try:
        with Image.open(path) as img:
            return img.size, img.mode
    except PermissionError as err:
        raise DatasetError(f"{path}: cannot read {what} ({err.strerror or err})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise DatasetError(f"{path}: corrupt or unreadable {what} ({err})") from None


def _check_pair(pair) -> None:
    image_size, _ = check_header(pair.image, "image")
    mask_size, mode = check_header(pair.mask, "mask")
    if mode not in MASK_MODES:
        raise DatasetError(
            f"{pair.mask}: mask has mode {mode}; expected a single-channel PNG whose values are labels"
        )
    if image_size != mask_size:
        raise DatasetError(
            f"{pair.mask}: mask is {mask_size[0]}x{mask_size[1]} (WxH) but its image {pair.image} "
            f"is {image_size[0]}x{image_size[1]}; expected the same size"
        )


def _check_shards(source, expected_rows: int | None) -> int:
    import pyarrow.parquet as pq

    from raycontrast.data.convert import SCHEMA

    total = 0
    for path in source.paths:
        try:
            meta = pq.read_metadata(path)
        except Exception as err:  # pyarrow raises several types for a corrupt footer
            raise DatasetError(f"{path}: unreadable Parquet shard ({err})") from None
        names = set(meta.schema.to_arrow_schema().names)
        missing = [n for n in SCHEMA.names if n not in names]
        if missing:
            raise DatasetError(
                f"{path}: Parquet shard lacks column(s) {', '.join(missing)} (expected "
                f"{', '.join(SCHEMA.names)}, as written by raycontrast convert)"
            )
        if meta.num_rows == 0:
            raise DatasetError(f"{path}: Parquet shard holds no rows")
        total += meta.num_rows
    if expected_rows is not None and total != expected_rows:
        raise DatasetError(
            f"{Path(source.paths[0]).parent}: shards hold {total} rows but the manifest records "
            f"{expected_rows}; re-run raycontrast convert for this split"
        )
    return len(source.paths)


def _sample(n: int, k: int, seed: int) -> list[int]:
    """The first ``k`` indices and ``k`` random others (fixed by ``seed``)."""
    first = list(range(min(k, n)))
    rest = range(len(first), n)
    return first + sorted(random.Random(seed).sample(rest, min(k, len(rest))))


def _each(items, check, problems: list[str] | None) -> None:
    for item in items:
        try:
            check(item)
        except DatasetError as err:
            if problems is None:
                raise
            problems.append(str(err))


def check_split(
    cfg: DataConfig, source: SampleSource, split: str, report: DataCheck, seed: int = 0
) -> None:
    """Check one split's files into ``report`` (raises on the first problem unless skipping)."""
    from raycontrast.data._files import FileSource
    from raycontrast.data.parquet import ParquetSource

    problems = report.problems if cfg.on_bad_sample == "skip" else None
    if isinstance(source, FileSource):
        _each(source.pairs, _check_pair, problems)
        report.headers += 2 * len(source.pairs)
    elif isinstance(source, ParquetSource):
        from raycontrast.data.parquet import read_manifest

        recorded = read_manifest(cfg.parquet_dir).get("splits", {}).get(split, {})
        expected = recorded.get("rows") if isinstance(recorded, dict) else None
        report.shards += _check_shards(source, expected if isinstance(expected, int) else None)
    else:
        return  # generated data (synthetic): nothing on disk
    indices = _sample(len(source), cfg.check_masks, seed)
    _each(indices, source.load, problems)
    report.decoded += len(indices)


def check_data_files(cfg: DataConfig, splits: list[str] | None = None, seed: int = 0) -> DataCheck:
    """Check the files of ``splits`` (default: the train and val splits), see the module docstring.

    Args:
        cfg: the data config (``check_masks`` is K; ``check_masks=0`` checks headers only).
        splits: split names.
        seed: picks the random samples (the same files on every run of one config).

    Raises:
        DatasetError: the first problem, naming the file (unless ``on_bad_sample=skip``: then the
            problems are in the returned report).
    """
    from raycontrast.data.build import build_source

    report = DataCheck()
    for split in dict.fromkeys(splits or [cfg.train_split, cfg.val_split]):
        check_split(cfg, build_source(cfg, split), split, report, seed)
    report.problems = list(dict.fromkeys(report.problems))  # a header and a decode may agree
    return report
