"""Pictures of predictions: palettes, colour label maps, overlays, validation sample grids and the
confusion-matrix heatmap.

Everything here works on plain arrays: images are ``uint8`` HxWx3 RGB, label maps integer HxW class
ids (``ignore_index`` for unlabelled pixels). Training calls :func:`write_val_samples` at each
evaluation and :func:`write_confusion` at the end; ``raycontrast predict`` uses :func:`colorize`,
:func:`overlay` and :func:`palette_image`.
"""

from __future__ import annotations

import contextlib
import csv
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor, nn

from raycontrast.config import EvalConfig

__all__ = [
    "ERROR_COLOR",
    "IGNORE_COLOR",
    "ValSamples",
    "class_palette",
    "colorize",
    "confusion_figure",
    "denormalize",
    "error_map",
    "normalize_confusion",
    "overlay",
    "palette_for_classes",
    "palette_image",
    "pick_val_samples",
    "predict_labels",
    "read_confusion",
    "sample_grid",
    "write_confusion",
    "write_val_samples",
]

Color = tuple[int, int, int]

IGNORE_COLOR: Color = (255, 255, 255)
"""Colour of ignored pixels in ground-truth pictures."""
ERROR_COLOR: Color = (255, 0, 0)
"""Colour of mispredicted pixels in error maps."""
_BACKGROUND = (24, 24, 24)
_TEXT = (235, 235, 235)


# ------------------------------------------------------------------------------------- palettes


def _bit_palette(n: int) -> list[Color]:
    from raycontrast.data._labels import bit_palette

    return bit_palette(n)


def class_palette(num_classes: int, palette: Sequence[Sequence[int]] | None = None) -> list[Color]:
    """``num_classes`` RGB colours: ``palette``'s, extended with the bit-interleaving (Pascal VOC)
    colour map when it is short or missing."""
    colors = [(int(c[0]), int(c[1]), int(c[2])) for c in (palette or [])][:num_classes]
    if len(colors) < num_classes:
        colors += _bit_palette(num_classes)[len(colors) :]
    return colors


def palette_for_classes(class_names: Sequence[str]) -> list[Color]:
    """The palette of the built-in dataset whose class list is ``class_names`` (synthetic,
    Cityscapes, ADE20K, Pascal VOC), else the bit-interleaving colour map.

    Used where only class names are known: exported models and checkpoints whose dataset is not on
    this machine.
    """
    from raycontrast.config import DataConfig
    from raycontrast.data import DATASETS, DatasetError

    names = list(class_names)
    for name in ("synthetic", "cityscapes", "ade20k", "voc"):
        with contextlib.suppress(DatasetError, OSError, AttributeError):
            info = DATASETS[name].info(DataConfig(dataset=name))
            if list(info.class_names) == names:
                return class_palette(len(names), info.palette)
    return _bit_palette(len(names))


# ------------------------------------------------------------------------------ label pictures


def _labels(labels: Any) -> np.ndarray:
    if isinstance(labels, Tensor):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"expected a label map (H, W), got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"label maps must hold integer class ids, got {labels.dtype}")
    return labels.astype(np.int64)


def _image(image: Any) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB image (H, W, 3), got {image.dtype} {image.shape}")
    return image


def colorize(
    labels: Any, palette: Sequence[Sequence[int]], ignore_index: int | None = 255
) -> np.ndarray:
    """``uint8`` HxWx3 picture of a label map: class ``k`` in ``palette[k]``, ignored pixels in
    :data:`IGNORE_COLOR`.

    Raises:
        ValueError: a label outside ``0..len(palette)-1`` that is not ``ignore_index``.
    """
    lab = _labels(labels)
    lut = np.array([tuple(c)[:3] for c in palette], dtype=np.uint8).reshape(-1, 3)
    ignored = lab == ignore_index if ignore_index is not None else np.zeros(lab.shape, bool)
    bad = ~ignored & ((lab < 0) | (lab >= len(lut)))
    if bad.any():
        values = np.unique(lab[bad])[:10].tolist()
        raise ValueError(
            f"labels {values} are outside the palette's {len(lut)} classes "
            f"(and not the ignore index {ignore_index})"
        )
    out = lut[np.clip(lab, 0, len(lut) - 1)]
    out[ignored] = IGNORE_COLOR
    return out


def overlay(
    image: Any,
    labels: Any,
    palette: Sequence[Sequence[int]],
    alpha: float = 0.5,
    ignore_index: int | None = 255,
) -> np.ndarray:
    """The label colours blended over ``image``: ``(1 - alpha) * image + alpha * colour``, rounded;
    ignored pixels show the image unchanged."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    img = _image(image)
    lab = _labels(labels)
    if img.shape[:2] != lab.shape:
        raise ValueError(f"image {img.shape[:2]} and labels {lab.shape} differ in size")
    colors = colorize(lab, palette, ignore_index).astype(np.float32)
    out = np.rint((1.0 - alpha) * img.astype(np.float32) + alpha * colors).astype(np.uint8)
    if ignore_index is not None:
        keep = lab == ignore_index
        out[keep] = img[keep]
    return out


def error_map(image: Any, pred: Any, target: Any, ignore_index: int | None = 255) -> np.ndarray:
    """Where ``pred`` is wrong: :data:`ERROR_COLOR` on mispredicted pixels, the image in dim grey
    where it is right, :data:`IGNORE_COLOR` where the target is ignored."""
    img = _image(image)
    p, t = _labels(pred), _labels(target)
    if p.shape != t.shape or img.shape[:2] != t.shape:
        raise ValueError(
            f"image {img.shape[:2]}, prediction {p.shape} and target {t.shape} differ in size"
        )
    grey = (img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)) * 0.4
    out = np.repeat(np.rint(grey).astype(np.uint8)[..., None], 3, axis=2)
    ignored = t == ignore_index if ignore_index is not None else np.zeros(t.shape, bool)
    out[(p != t) & ~ignored] = ERROR_COLOR
    out[ignored] = IGNORE_COLOR
    return out


def palette_image(labels: Any, palette: Sequence[Sequence[int]]) -> Image.Image:
    """A palette-mode ("P") PIL image: pixel values are the class ids (readable as labels), and
    viewers show them in the palette's colours. Index 255 (ignore) is :data:`IGNORE_COLOR`."""
    lab = _labels(labels)
    if lab.size and (lab.min() < 0 or lab.max() > 255):
        raise ValueError(f"palette PNGs hold ids 0..255, got {lab.min()}..{lab.max()}")
    colors = class_palette(min(len(palette), 255), palette)
    flat = [0] * 768
    for k, c in enumerate(colors):
        flat[3 * k : 3 * k + 3] = c
    flat[765:768] = IGNORE_COLOR
    arr = np.ascontiguousarray(lab.astype(np.uint8))
    img = Image.frombytes("P", (arr.shape[1], arr.shape[0]), arr.tobytes())
    img.putpalette(flat)
    return img


def denormalize(image: Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Undo the dataset normalisation: float ``(3, H, W)`` -> ``uint8`` HxWx3 RGB."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) image, got shape {tuple(image.shape)}")
    m = torch.tensor(list(mean), dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(list(std), dtype=torch.float32).view(3, 1, 1)
    x = (image.detach().float().cpu() * s + m) * 255.0
    return x.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


# --------------------------------------------------------------------------------- sample grid


def _font(size: int = 12) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _fit(array: np.ndarray, height: int, nearest: bool) -> np.ndarray:
    h, w = array.shape[:2]
    if h == height:
        return array
    width = max(1, round(w * height / h))
    method = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(array).resize((width, height), method))


def _legend(names: Sequence[str], palette: Sequence[Color], width: int) -> np.ndarray:
    font = _font(12)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    items = [(n, c, probe.textlength(n, font=font) + 26) for n, c in zip(names, palette)]
    lines, line, used = [], [], 0.0
    for item in items:
        if line and used + item[2] > width - 8:
            lines.append(line)
            line, used = [], 0.0
        line.append(item)
        used += item[2]
    if line:
        lines.append(line)
    img = Image.new("RGB", (width, 6 + 18 * len(lines)), _BACKGROUND)
    draw = ImageDraw.Draw(img)
    for row, entries in enumerate(lines):
        x, y = 4.0, 4 + 18 * row
        for name, color, w in entries:
            draw.rectangle([x, y + 2, x + 12, y + 14], fill=tuple(color), outline=_TEXT)
            draw.text((x + 16, y), name, fill=_TEXT, font=font)
            x += w
    return np.asarray(img)


def sample_grid(
    images: Sequence[np.ndarray],
    targets: Sequence[Any],
    preds: Sequence[Any],
    palette: Sequence[Sequence[int]],
    ignore_index: int | None = 255,
    class_names: Sequence[str] | None = None,
    height: int = 192,
    titles: Sequence[str] = ("image", "ground truth", "prediction", "errors"),
    gap: int = 2,
) -> np.ndarray:
    """One row per sample: image | ground truth | prediction | error map, as a ``uint8`` HxWx3 array.

    Each row is scaled to ``height`` pixels (label maps with nearest neighbour), narrower rows are
    padded; a header names the columns and, with ``class_names``, a legend shows the palette.

    Args:
        images: ``uint8`` HxWx3 RGB images.
        targets: ground-truth label maps of the images' sizes (``ignore_index`` allowed).
        preds: predicted label maps of the same sizes.
        palette: one RGB colour per class.
        ignore_index: the targets' ignore value.
        class_names: names for the legend (none: no legend).
        height: display height of a row in pixels.
        titles: the four column titles.
        gap: pixels between cells.
    """
    if not (len(images) == len(targets) == len(preds)) or not images:
        raise ValueError(
            f"sample_grid needs as many images, targets and predictions (at least one), got "
            f"{len(images)}, {len(targets)}, {len(preds)}"
        )
    colors = class_palette(len(palette), palette)
    rows = []
    for image, target, pred in zip(images, targets, preds):
        img = _image(image)
        cells = [
            _fit(img, height, nearest=False),
            _fit(colorize(target, colors, ignore_index), height, nearest=True),
            _fit(colorize(pred, colors, None), height, nearest=True),
            _fit(error_map(img, pred, target, ignore_index), height, nearest=True),
        ]
        rows.append(cells)
    col_w = [max(r[c].shape[1] for r in rows) for c in range(4)]
    width = sum(col_w) + gap * 5
    header = 18
    canvas = np.empty((header + len(rows) * (height + gap) + gap, width, 3), np.uint8)
    canvas[:] = _BACKGROUND
    for r, cells in enumerate(rows):
        y = header + gap + r * (height + gap)
        x = gap
        for c, cell in enumerate(cells):
            canvas[y : y + height, x : x + cell.shape[1]] = cell
            x += col_w[c] + gap
    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    font = _font(12)
    x = gap
    for c, title in enumerate(titles[:4]):
        draw.text((x + 2, 2), title, fill=_TEXT, font=font)
        x += col_w[c] + gap
    out = np.asarray(img)
    if class_names:
        legend = _legend(list(class_names), colors, width)
        out = np.concatenate([out, legend], axis=0)
    return np.ascontiguousarray(out)


# ---------------------------------------------------------------------- validation samples


@dataclass
class ValSamples:
    """A fixed set of validation items shown at every evaluation.

    ``images`` are normalised float ``(3, H, W)`` tensors, ``labels`` int64 ``(H, W)``.
    """

    images: list[Tensor]
    labels: list[Tensor]
    ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)


def pick_val_samples(dataset: Any, num: int = 4) -> ValSamples:
    """``num`` items of a map-style validation dataset, evenly spaced over it (the first and the
    last included), so every evaluation shows the same images.

    Args:
        dataset: yields ``{"image": (3,H,W), "label": (H,W), "id": str}`` (e.g. ``build_dataset(
            cfg.data, cfg.data.val_split, train=False)``).
        num: how many (fewer when the dataset is smaller).
    """
    n = len(dataset)
    if n == 0 or num < 1:
        return ValSamples([], [], [])
    k = min(num, n)
    indices = sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(k)})
    images, labels, ids = [], [], []
    for i in indices:
        item = dataset[i]
        images.append(torch.as_tensor(item["image"]).float())
        labels.append(torch.as_tensor(item["label"]).long())
        ids.append(str(item.get("id", i)))
    return ValSamples(images, labels, ids)


@contextlib.contextmanager
def _eval_mode(model_fn: Callable[..., Any]) -> Iterator[None]:
    module = model_fn if isinstance(model_fn, nn.Module) else getattr(model_fn, "__self__", None)
    if not isinstance(module, nn.Module):
        yield
        return
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def predict_labels(
    model_fn: Callable[[Tensor], Any],
    images: Sequence[Tensor],
    num_classes: int,
    eval_cfg: EvalConfig | None = None,
    device: str | torch.device = "cpu",
) -> list[np.ndarray]:
    """Predicted label maps (``int64`` HxW numpy) of normalised images, one at a time (sizes may
    differ), with the inference settings of evaluation (``eval_cfg``: mode, crop, scales, flip).

    A module (or a module's bound method) is put in eval mode for the call and restored after.
    """
    from raycontrast.eval.inference import infer_with

    cfg = eval_cfg or EvalConfig()
    out = []
    with _eval_mode(model_fn), torch.inference_mode():
        for image in images:
            x = image.unsqueeze(0).to(device=device, dtype=torch.float32)
            logits = infer_with(model_fn, x, num_classes, cfg)
            out.append(logits.argmax(1)[0].cpu().numpy())
    return out


def write_val_samples(
    model_fn: Callable[[Tensor], Any],
    samples: ValSamples,
    run_dir: str | Path,
    iteration: int,
    *,
    palette: Sequence[Sequence[int]],
    mean: Sequence[float],
    std: Sequence[float],
    ignore_index: int = 255,
    class_names: Sequence[str] | None = None,
    eval_cfg: EvalConfig | None = None,
    device: str | torch.device = "cpu",
    height: int = 192,
) -> np.ndarray:
    """Predict ``samples`` and save the grid (image | ground truth | prediction | errors) to
    ``run_dir/plots/val_samples_<iteration, 6 digits>.png``.

    Returns:
        The grid as a ``uint8`` HxWx3 array (for ``SummaryWriter.add_image(..., dataformats="HWC")``).

    Example:
        >>> grid = write_val_samples(seg.predict, samples, run_dir, 150, palette=info.palette,
        ...                          mean=cfg.data.mean, std=cfg.data.std, class_names=names)
    """
    if len(samples) == 0:
        raise ValueError("write_val_samples: no samples (pick_val_samples got an empty dataset?)")
    num_classes = len(class_names) if class_names else len(palette)
    preds = predict_labels(model_fn, samples.images, num_classes, eval_cfg, device)
    images = [denormalize(x, mean, std) for x in samples.images]
    targets = [t.cpu().numpy() for t in samples.labels]
    grid = sample_grid(
        images,
        targets,
        preds,
        class_palette(num_classes, palette),
        ignore_index,
        class_names,
        height=height,
    )
    out = Path(run_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(out / f"val_samples_{int(iteration):06d}.png", optimize=True)
    return grid


# ---------------------------------------------------------------------------- confusion matrix


def normalize_confusion(confusion: Any) -> np.ndarray:
    """Row-normalised confusion matrix (rows = ground truth): entry ``[i, j]`` is the fraction of
    class ``i``'s pixels predicted as ``j``; rows of classes without pixels are NaN."""
    conf = np.asarray(
        confusion.detach().cpu().numpy() if isinstance(confusion, Tensor) else confusion,
        dtype=np.float64,
    )
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"expected a square (K, K) confusion matrix, got shape {conf.shape}")
    rows = conf.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(rows > 0, conf / np.where(rows > 0, rows, 1), np.nan)


def confusion_figure(confusion: Any, class_names: Sequence[str] | None = None, title: str = ""):
    """A matplotlib figure of the row-normalised confusion matrix (values in % when K <= 25)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    norm = normalize_confusion(confusion)
    k = norm.shape[0]
    names = list(class_names) if class_names else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for a {k}x{k} confusion matrix")
    side = min(max(5.0, 0.45 * k + 2.0), 40.0)
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    shown = np.ma.masked_invalid(norm)
    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="#dddddd")
    im = ax.imshow(shown, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    fontsize = 9 if k <= 20 else (7 if k <= 40 else 5)
    ax.set_xticks(range(k), names, rotation=60, ha="right", fontsize=fontsize)
    ax.set_yticks(range(k), names, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title(title or "confusion matrix (each row normalised to its ground-truth pixels)")
    if k <= 25:
        for i in range(k):
            for j in range(k):
                if np.isfinite(norm[i, j]) and norm[i, j] >= 0.005:
                    color = "white" if norm[i, j] > 0.5 else "black"
                    ax.text(j, i, f"{100 * norm[i, j]:.0f}", ha="center", va="center",
                            color=color, fontsize=fontsize - 1)  # fmt: skip
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the row")
    fig.tight_layout()
    return fig


def write_confusion(
    confusion: Any, class_names: Sequence[str], run_dir: str | Path, title: str = ""
) -> Path:
    """Save the confusion matrix of a run: counts to ``run_dir/confusion.csv`` (rows = ground truth,
    columns = prediction, so ``raycontrast report`` can redraw it) and the row-normalised heatmap
    to ``run_dir/plots/confusion.png``. Returns the PNG's path."""
    import matplotlib.pyplot as plt

    conf = np.asarray(
        confusion.detach().cpu().numpy() if isinstance(confusion, Tensor) else confusion
    )
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    names = [str(n) for n in class_names]
    with (run_dir / "confusion.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ground_truth \\ predicted", *names])
        for name, row in zip(names, conf.tolist()):
            writer.writerow([name, *[int(v) for v in row]])
    fig = confusion_figure(conf, names, title)
    out = run_dir / "plots" / "confusion.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def read_confusion(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """The counts and class names of a ``confusion.csv`` written by :func:`write_confusion`."""
    with Path(path).open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows or len(rows) != len(rows[0]):
        raise ValueError(f"{path}: not a confusion matrix written by write_confusion")
    names = rows[0][1:]
    counts = np.array([[int(v) for v in r[1:]] for r in rows[1:]], dtype=np.int64)
    return counts, names
