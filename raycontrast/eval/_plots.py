"""A run's plots from its CSV logs: loss and mIoU curves, per-class IoU and the confusion heatmap.

Written by the driver at the end of a run (:func:`plot_run`, local or URI run dirs) and redrawn by
``raycontrast report`` (:func:`~raycontrast.eval.compare.rebuild_plots`).
"""

from __future__ import annotations

import csv
import math
import shutil
import tempfile
from pathlib import Path

from raycontrast import storage

__all__ = ["plot_run", "read_rows", "write_plots"]


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file as dicts; ``[]`` when it does not exist."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _num(value: str | None) -> float:
    try:
        return float(value) if value not in (None, "") else math.nan
    except ValueError:
        return math.nan


def write_plots(
    run_dir: Path, class_names, per_class_iou, out_dir: Path | None = None
) -> list[Path]:
    """Loss and mIoU curves, the final per-class IoU and (when the run saved ``confusion.csv``) the
    confusion heatmap, as PNGs in ``out_dir`` (default ``run_dir/plots``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    train = read_rows(run_dir / "metrics.csv")
    if train:
        fig, ax = plt.subplots(figsize=(7, 4))
        its = [_num(r["iteration"]) for r in train]
        labels = {
            "loss": "loss (total, weighted)",
            "ce": "ce",
            "contrast": "contrast (unweighted; total adds contrast.loss_weight x this)",
        }
        for key, label in labels.items():
            ax.plot(its, [_num(r.get(key)) for r in train], label=label)
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss")
        ax.set_title("training loss")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "loss.png", dpi=100)
        plt.close(fig)
        written.append(out / "loss.png")
    val = read_rows(run_dir / "val.csv")
    if val:
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(
            [_num(r["iteration"]) for r in val], [100 * _num(r["mIoU"]) for r in val], marker="o"
        )
        ax.set_xlabel("iteration")
        ax.set_ylabel("mIoU (%)")
        ax.set_title("validation mIoU")
        fig.tight_layout()
        fig.savefig(out / "miou.png", dpi=100)
        plt.close(fig)
        written.append(out / "miou.png")
    if per_class_iou:
        fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(class_names)), 4))
        values = [100 * (v if v is not None and math.isfinite(v) else 0.0) for v in per_class_iou]
        ax.bar(range(len(values)), values)
        ax.set_xticks(range(len(values)), class_names, rotation=60, ha="right", fontsize=8)
        ax.set_ylabel("IoU (%)")
        ax.set_title("per-class IoU (final)")
        fig.tight_layout()
        fig.savefig(out / "per_class_iou.png", dpi=100)
        plt.close(fig)
        written.append(out / "per_class_iou.png")
    if (run_dir / "confusion.csv").is_file():
        from raycontrast.eval._visualize import confusion_figure, read_confusion

        counts, names = read_confusion(run_dir / "confusion.csv")
        fig = confusion_figure(counts, names)
        fig.savefig(out / "confusion.png", dpi=100)
        plt.close(fig)
        written.append(out / "confusion.png")
    return written


def plot_run(run_dir: str, class_names, per_class_iou) -> None:
    """:func:`write_plots` for a run dir on local disk or behind a URI (drawn in a temporary folder
    from the run's CSVs, then uploaded to ``<run_dir>/plots/``)."""
    if not storage.is_uri(run_dir):
        write_plots(Path(run_dir), class_names, per_class_iou)
        return
    tmp = Path(tempfile.mkdtemp(prefix="raycontrast-plots-"))
    try:
        for name in ("metrics.csv", "val.csv"):
            uri = storage.join(run_dir, name)
            if storage.exists(uri):
                (tmp / name).write_bytes(storage.read_bytes(uri))
        for path in write_plots(tmp, class_names, per_class_iou):
            storage.write_bytes(storage.join(run_dir, "plots", path.name), path.read_bytes())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
