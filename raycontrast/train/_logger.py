"""Run artifacts written by rank 0: console progress, metrics CSVs, TensorBoard events, plots, summary.

Files in the run directory ``<storage_path>/<name>/``:

- ``metrics.csv``: one row per logged training iteration (losses, lr, speed);
- ``val.csv``: one row per evaluation (mIoU, mAcc, aAcc, fwIoU and per-class IoU);
- ``tb/``: TensorBoard events; ``plots/*.png``; ``summary.json`` at the end.

A resumed run drops rows past the checkpoint it resumes from (and TensorBoard purges those steps), so
the logs hold every iteration once. For URI storage (s3://...) files are kept in a local staging folder
and uploaded at each evaluation and at the end.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from raycontrast import storage
from raycontrast._progress import format_eta
from raycontrast.eval._plots import read_rows

__all__ = ["TRAIN_FIELDS", "RunLogger", "console"]

TRAIN_FIELDS = [
    "iteration",
    "epoch",
    "loss",
    "ce",
    "aux",
    "contrast",
    "inbatch",
    "memory",
    "lr",
    "it_per_s",
    "anchors",
    "bank_entries",
    "bank_dropped",
    "skipped_samples",
]
VAL_FIELDS = ["iteration", "mIoU", "mAcc", "aAcc", "fwIoU"]
FILES = ("metrics.csv", "val.csv", "summary.json", "config.yaml")
WALL_FILE = "wall.json"  # training seconds of each segment of a resumed run


def console(message: str) -> None:
    """One progress line on the worker's stdout, which Ray forwards to the driver's console.

    Written to the process's real stdout: Ray Train patches ``print`` into its logging, which shows
    each line twice on the driver.
    """
    stream = sys.__stdout__ or sys.stdout
    stream.write(message + "\n")
    stream.flush()


def _truncate_csv(path: Path, last_iteration: int) -> None:
    """Keep the header and rows with ``iteration <= last_iteration``."""
    if not path.exists():
        return
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:] if r and int(float(r[0])) <= last_iteration]
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(kept)


class RunLogger:
    """Rank 0's logger. ``start_iteration`` is where this (possibly resumed) run starts."""

    def __init__(
        self, run_dir: str, name: str, start_iteration: int, total_iterations: int, class_names
    ):
        self.run_dir = run_dir
        self.name = name
        self.total = total_iterations
        self.class_names = list(class_names)
        self.remote = storage.is_uri(run_dir)
        self.local = (
            Path(tempfile.mkdtemp(prefix="raycontrast-run-")) if self.remote else Path(run_dir)
        )
        self.local.mkdir(parents=True, exist_ok=True)
        if self.remote:
            for name_ in ("metrics.csv", "val.csv", "bank.csv", WALL_FILE):
                uri = storage.join(run_dir, name_)
                if storage.exists(uri):
                    (self.local / name_).write_bytes(storage.read_bytes(uri))
        for name_ in ("metrics.csv", "val.csv", "bank.csv"):
            _truncate_csv(self.local / name_, start_iteration)
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(self.local / "tb"), purge_step=start_iteration or None)
        self._t0 = time.perf_counter()
        self._last = (start_iteration, self._t0)
        self.last_bank: dict[str, float] = {}
        self.tracker: Any = None  # a raycontrast.train.tracking.Tracking when trackers are on
        # training time of the segments before this one (a resumed run counts all of them)
        self._start = start_iteration
        self._segments = [
            seg for seg in _read_segments(self.local / WALL_FILE) if seg[0] < start_iteration
        ]
        self.previous_wall = sum(seg[2] for seg in self._segments)

    def _append(self, filename: str, fields: list[str], row: dict[str, Any]) -> None:
        path = self.local / filename
        new = not path.exists() or path.stat().st_size == 0
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)

    def speed(self, iteration: int) -> float:
        """Iterations per second since the previous call."""
        now = time.perf_counter()
        it0, t0 = self._last
        self._last = (iteration, now)
        return (iteration - it0) / max(now - t0, 1e-9)

    def train(self, row: dict[str, Any]) -> None:
        """Log one training row (console, CSV, TensorBoard)."""
        it = row["iteration"]
        self._append("metrics.csv", TRAIN_FIELDS, row)
        if self.tracker:
            self.tracker.log_metrics({f"train/{k}": row.get(k) for k in TRAIN_FIELDS[1:]}, it)
        for key in ("loss", "ce", "aux", "contrast", "inbatch", "memory", "lr", "it_per_s"):
            if row.get(key) is not None:
                self.tb.add_scalar(f"train/{key}", row[key], it)
        eta = (self.total - it) / row["it_per_s"] if row.get("it_per_s") else float("inf")
        parts = [f"ce {row['ce']:.4f}"]
        for key in ("aux", "inbatch", "memory"):
            if row.get(key) is not None:
                parts.append(f"{key} {row[key]:.4f}")
        console(
            f"[{self.name}] it {it}/{self.total} | loss {row['loss']:.4f} ({', '.join(parts)}) | "
            f"lr {row['lr']:.2e} | {row['it_per_s']:.2f} it/s | ETA {format_eta(eta)}"
        )

    def val(self, iteration: int, metrics: dict[str, Any]) -> None:
        """Log one evaluation."""
        # this segment's time up to this checkpoint (what a resume from it keeps)
        segment = [self._start, iteration, time.perf_counter() - self._t0]
        (self.local / WALL_FILE).write_text(json.dumps([*self._segments, segment]))
        iou = metrics.get("IoU") or []
        row = {k: metrics.get(k) for k in VAL_FIELDS[1:]}
        row["iteration"] = iteration
        fields = VAL_FIELDS + [f"IoU/{n}" for n in self.class_names]
        for name, value in zip(self.class_names, iou):
            row[f"IoU/{name}"] = value
        self._append("val.csv", fields, row)
        if self.tracker:
            self.tracker.log_metrics(
                {f"val/{k}": v for k, v in row.items() if k != "iteration"}, iteration
            )
        for key in VAL_FIELDS[1:]:
            if metrics.get(key) is not None:
                self.tb.add_scalar(f"val/{key}", metrics[key], iteration)
        self.tb.flush()
        console(
            f"[{self.name}] eval at it {iteration}: mIoU {100 * metrics['mIoU']:.2f} | "
            f"mAcc {100 * metrics['mAcc']:.2f} | aAcc {100 * metrics['aAcc']:.2f}"
        )

    def val_samples(self, iteration: int, grid: Any) -> None:
        """Add a validation sample grid (``uint8`` HxWx3, as returned by
        :func:`raycontrast.eval._visualize.write_val_samples`) to TensorBoard as ``val/samples``."""
        self.tb.add_image("val/samples", grid, iteration, dataformats="HWC")

    def bank(self, iteration: int, health: dict[str, float], sample=None) -> None:
        """Log one evaluation's bank health (:func:`raycontrast.contrast.health.bank_health`): a
        ``bank.csv`` row, TensorBoard scalars under its keys, a console line, ``plots/bank_health.png``
        redrawn from ``bank.csv`` and, given a :class:`~raycontrast.contrast.health.BankSample`,
        ``plots/bank_map_<iteration>.png``. ``last_bank`` keeps the row for the run summary."""
        from raycontrast.train._bank_plots import plot_bank_health, plot_bank_map

        row = {"iteration": iteration, **health}
        self._append("bank.csv", list(row), row)
        for key, value in health.items():
            if math.isfinite(value):
                self.tb.add_scalar(key, value, iteration)
        self.last_bank = row
        if self.tracker:
            self.tracker.log_metrics(health, iteration)
        kinds = [k for k in ("pixel", "region") if f"bank/{k}/fill" in health]
        parts = [
            f"{k} fill {100 * health[f'bank/{k}/fill']:.0f}% age {health[f'bank/{k}/age_mean']:.0f}"
            f"/{health[f'bank/{k}/age_max']:.0f} spread {health[f'bank/{k}/spread']:.2f} "
            f"closest pair {health[f'bank/{k}/nearest']:.2f}"
            for k in kinds
        ]
        loss = [health.get(f"bank/loss/{k}", math.nan) for k in ("positive_share", "positive_cos")]
        neg = health.get("bank/loss/hardest_negative_cos", math.nan)
        parts.append(
            f"anchors with a positive {100 * loss[0]:.0f}% pos {loss[1]:.2f} neg {neg:.2f}"
        )
        console(f"[{self.name}] bank at it {iteration}: " + " | ".join(parts))
        plots = self.local / "plots"
        plot_bank_health(
            read_rows(self.local / "bank.csv"), self.class_names, plots / "bank_health.png"
        )
        if sample is not None:
            plot_bank_map(
                sample,
                self.class_names,
                plots / f"bank_map_{iteration}.png",
                f"bank at it {iteration}",
            )

    def sync(self) -> None:
        """Upload the staging folder to URI storage (no-op for local and NFS paths)."""
        self.tb.flush()
        if not self.remote:
            return
        for path in self.local.rglob("*"):
            if path.is_file():
                rel = path.relative_to(self.local).as_posix()
                storage.write_bytes(storage.join(self.run_dir, rel), path.read_bytes())

    def close(self) -> None:
        if self.tracker:
            self.tracker.finish()  # the driver reopens it for the summary and the plots
        self.tb.close()
        self.sync()
        if self.remote:
            shutil.rmtree(self.local, ignore_errors=True)


def _read_segments(path: Path) -> list[list[float]]:
    """``[[start_iteration, last_checkpoint_iteration, seconds], ...]`` of ``wall.json``."""
    try:
        return [list(seg) for seg in json.loads(path.read_text())]
    except (OSError, ValueError, TypeError):
        return []
