"""A generic folder of images and label PNGs.

Layout (the first that exists for the split is used)::

    root/images/<split>/<name>.<jpg|png|...>   and   root/masks/<split>/<name>.png
    root/<split>/images/<name>.<jpg|png|...>   and   root/<split>/masks/<name>.png

Sub-folders are allowed; an image and its mask are matched by relative path and file stem. Mask
pixel values are the class ids ``0..num_classes-1``; 255 and ``data.ignore_index`` mean ignore.
Class names come from ``data.class_names``, else ``root/classes.txt`` (one name per line, blank
lines and ``#`` comments skipped); with neither, ``data.num_classes`` gives generic names.
"""

from __future__ import annotations

from pathlib import Path

from raycontrast.config import DataConfig
from raycontrast.data._files import FileSource, SamplePair, missing_mask, require_dir
from raycontrast.data._io import IMAGE_EXTENSIONS
from raycontrast.data._labels import bit_palette, identity_lut
from raycontrast.data.base import STORED_IGNORE, DatasetError, DatasetInfo

__all__ = ["class_names", "find_split_dirs", "info", "source"]


def class_names(cfg: DataConfig) -> list[str]:
    """Class names from ``cfg.class_names``, ``<root>/classes.txt`` or ``cfg.num_classes``."""
    if cfg.class_names:
        names = list(cfg.class_names)
        origin = "data.class_names"
    else:
        path = Path(cfg.root) / "classes.txt"
        if path.is_file():
            lines = (line.strip() for line in path.read_text().splitlines())
            names = [line for line in lines if line and not line.startswith("#")]
            origin = str(path)
            if not names:
                raise DatasetError(f"{path}: lists no class names (expected one name per line)")
        elif cfg.num_classes is not None:
            return [f"class_{k}" for k in range(cfg.num_classes)]
        else:
            raise DatasetError(
                f"{path}: not found; the folder dataset needs class names: set data.class_names, "
                "write classes.txt (one name per line) or set data.num_classes"
            )
    if cfg.num_classes is not None and cfg.num_classes != len(names):
        raise DatasetError(
            f"data.num_classes={cfg.num_classes} but {origin} lists {len(names)} class names"
        )
    return names


def info(cfg: DataConfig) -> DatasetInfo:
    """Class names (see :func:`class_names`), a bit-interleaving palette and the label mapping."""
    require_dir(Path(cfg.root), "folder dataset root")
    names = class_names(cfg)
    return DatasetInfo(
        name="folder",
        num_classes=len(names),
        class_names=names,
        palette=bit_palette(len(names)),
        ignore_index=cfg.ignore_index,
        label_mapping=f"mask values used as is: 0..{len(names) - 1}; "
        f"{sorted({STORED_IGNORE, cfg.ignore_index})} = ignore",
    )


def find_split_dirs(root: Path, split: str) -> tuple[Path, Path]:
    """``(image_dir, mask_dir)`` of ``split`` in either supported layout."""
    require_dir(root, "folder dataset root")
    layouts = [
        (root / "images" / split, root / "masks" / split),
        (root / split / "images", root / split / "masks"),
    ]
    for image_dir, mask_dir in layouts:
        if image_dir.is_dir():
            return image_dir, mask_dir
    raise DatasetError(
        f"{root}: split {split!r} not found (expected {layouts[0][0]} or {layouts[1][0]})"
    )


def source(cfg: DataConfig, split: str) -> FileSource:
    """Pair every image of ``split`` with the mask of the same relative path and stem."""
    image_dir, mask_dir = find_split_dirs(Path(cfg.root), split)
    lut = identity_lut(len(class_names(cfg)), (STORED_IGNORE, cfg.ignore_index))
    images = sorted(
        p for p in image_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )
    if not images:
        raise DatasetError(
            f"{image_dir}: no images ({', '.join(IMAGE_EXTENSIONS)}) in split {split!r}"
        )
    pairs, dropped = [], []
    for image in images:
        rel = image.relative_to(image_dir).with_suffix("")
        mask = mask_dir / rel.parent / f"{rel.name}.png"
        if mask.is_file():
            pairs.append(SamplePair(rel.as_posix(), image, mask, lut))
        else:
            missing_mask(image, mask, cfg.on_bad_sample == "skip", dropped)
    return FileSource(pairs, dropped)
