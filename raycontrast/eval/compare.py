"""``raycontrast report``: rebuild a run's plots from its files, and compare runs side by side.

A run directory holds ``metrics.csv`` (training rows), ``val.csv`` (one row per evaluation),
``summary.json`` (final metrics, per-class IoU) and, when training saved it, ``confusion.csv``.
:func:`compare_runs` is what ``raycontrast report RUN_DIR RUN_DIR ...`` and sweep/study tooling call
to put several runs side by side.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Comparison", "ReportError", "RunRecord", "compare_runs", "load_run", "report"]

SUMMARY_KEYS = ("mIoU", "mAcc", "aAcc", "fwIoU")


class ReportError(ValueError):
    """A run directory that cannot be reported on; the message names it."""


def _num(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _rows(path: Path) -> list[dict[str, float | None]]:
    if not path.is_file():
        return []
    try:
        with path.open(newline="") as f:
            return [{k: _num(v) for k, v in row.items() if k} for row in csv.DictReader(f)]
    except (OSError, csv.Error) as err:
        raise ReportError(f"{path}: unreadable CSV ({err})") from None


@dataclass
class RunRecord:
    """What a run directory's files say about the run."""

    name: str
    run_dir: Path
    train: list[dict[str, float | None]] = field(default_factory=list)
    val: list[dict[str, float | None]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def class_names(self) -> list[str]:
        per_class = self.summary.get("per_class_IoU")
        if isinstance(per_class, dict) and per_class:
            return [str(k) for k in per_class]
        if self.val:
            return [k[4:] for k in self.val[-1] if k.startswith("IoU/")]
        return []

    def final(self) -> dict[str, float | None]:
        """Final metrics (fractions): ``summary.json``'s, else the last evaluation's."""
        last = self.val[-1] if self.val else {}
        out = {}
        for key in SUMMARY_KEYS:
            value = _num(self.summary.get(key)) if key in self.summary else None
            out[key] = value if value is not None else last.get(key)
        return out

    def best(self) -> tuple[float | None, int | None]:
        """Best validation mIoU and its iteration (``val.csv``, else ``summary.json``)."""
        scored = [(r["mIoU"], r.get("iteration")) for r in self.val if r.get("mIoU") is not None]
        if scored:
            value, it = max(scored, key=lambda s: s[0])
            return value, int(it) if it is not None else None
        best = self.summary.get("best") or {}
        it = best.get("iteration")
        return _num(best.get("mIoU")), int(it) if it is not None else None

    def iterations(self) -> int | None:
        if self.summary.get("iterations") is not None:
            return int(self.summary["iterations"])
        its = [r.get("iteration") for r in (self.train or self.val) if r.get("iteration")]
        return int(max(its)) if its else None

    def per_class_iou(self) -> dict[str, float | None]:
        """Final IoU per class name (``None``: absent class)."""
        per_class = self.summary.get("per_class_IoU")
        if isinstance(per_class, dict) and per_class:
            return {str(k): _num(v) for k, v in per_class.items()}
        if self.val:
            return {k[4:]: v for k, v in self.val[-1].items() if k.startswith("IoU/")}
        return {}


def load_run(run_dir: str | Path) -> RunRecord:
    """Read a run directory's ``metrics.csv``, ``val.csv`` and ``summary.json``.

    Raises:
        ReportError: the directory is missing or has none of the three files.
    """
    if "://" in str(run_dir):
        raise ReportError(
            f"{run_dir}: report reads local (or NFS) run directories; copy the run's metrics.csv, "
            "val.csv, summary.json and confusion.csv to a local folder first"
        )
    path = Path(run_dir).expanduser()
    if not path.is_dir():
        raise ReportError(f"{path}: run directory not found")
    files = [path / n for n in ("metrics.csv", "val.csv", "summary.json")]
    if not any(f.is_file() for f in files):
        raise ReportError(
            f"{path}: not a run directory (expected metrics.csv, val.csv or summary.json written "
            "by `raycontrast train`)"
        )
    summary: dict[str, Any] = {}
    if files[2].is_file():
        try:
            summary = json.loads(files[2].read_text())
        except (OSError, ValueError) as err:
            raise ReportError(f"{files[2]}: unreadable JSON ({err})") from None
        if not isinstance(summary, dict):
            raise ReportError(f"{files[2]}: expected a JSON object")
    name = str(summary.get("name") or path.name)
    return RunRecord(name, path, _rows(files[0]), _rows(files[1]), summary)


def rebuild_plots(run: RunRecord, out_dir: Path | None = None) -> list[Path]:
    """Redraw a run's loss, mIoU, per-class IoU and (with ``confusion.csv``) confusion plots into
    ``out_dir`` (default ``<run>/plots``). Sample grids need the model and are not redrawn."""
    from raycontrast.eval._plots import write_plots

    per_class = run.per_class_iou()
    return write_plots(run.run_dir, list(per_class), list(per_class.values()), out_dir=out_dir)


@dataclass
class Comparison:
    """The tables :func:`compare_runs` wrote (values are fractions in [0, 1]) and its files."""

    runs: list[dict[str, Any]]
    per_class: list[dict[str, Any]]
    markdown: str
    files: list[Path]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _labels(runs: Sequence[RunRecord], labels: Sequence[str] | None) -> list[str]:
    if labels is not None:
        if len(labels) != len(runs):
            raise ValueError(f"{len(labels)} labels for {len(runs)} runs")
        return [str(x) for x in labels]
    out: list[str] = []
    for run in runs:
        label = run.name
        if label in out:
            label = f"{run.run_dir.parent.name}/{run.run_dir.name}"
        n = 2
        base = label
        while label in out:
            label, n = f"{base}#{n}", n + 1
        out.append(label)
    return out


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _write_csv(path: Path, header: list[str], rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in header})


def _curves(runs: Sequence[RunRecord], labels: list[str], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for run, label in zip(runs, labels):
        pts = [(r["iteration"], r["loss"]) for r in run.train if r.get("loss") is not None]
        if pts:
            axes[0].plot(*zip(*pts), label=label)
        pts = [(r["iteration"], 100 * r["mIoU"]) for r in run.val if r.get("mIoU") is not None]
        if pts:
            axes[1].plot(*zip(*pts), marker="o", label=label)
    axes[0].set(xlabel="iteration", ylabel="loss", title="training loss")
    axes[1].set(xlabel="iteration", ylabel="mIoU (%)", title="validation mIoU")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "curves.png", dpi=100)
    plt.close(fig)
    written.append(out_dir / "curves.png")

    classes = _class_union(runs)
    if classes:
        width = 0.8 / len(runs)
        fig, ax = plt.subplots(figsize=(max(7.0, 0.5 * len(classes) * max(1, len(runs) / 2)), 4.2))
        for i, (run, label) in enumerate(zip(runs, labels)):
            iou = run.per_class_iou()
            values = [100 * (iou.get(c) or 0.0) for c in classes]
            ax.bar([k + (i - (len(runs) - 1) / 2) * width for k in range(len(classes))], values,
                   width=width, label=label)  # fmt: skip
        ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=8)
        ax.set_ylabel("IoU (%)")
        ax.set_title("per-class IoU (final)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / "per_class_iou.png", dpi=100)
        plt.close(fig)
        written.append(out_dir / "per_class_iou.png")
    return written


def _class_union(runs: Sequence[RunRecord]) -> list[str]:
    classes: list[str] = []
    for run in runs:
        for name in run.per_class_iou():
            if name not in classes:
                classes.append(name)
    return classes


def compare_runs(
    runs: Sequence[str | Path | RunRecord],
    out_dir: str | Path,
    labels: Sequence[str] | None = None,
) -> Comparison:
    """Put runs side by side: final and best metrics, per-class IoU, overlaid curves.

    Writes to ``out_dir``: ``runs.csv`` (one row per run: iterations, final mIoU / mAcc / aAcc /
    fwIoU, best mIoU and its iteration, wall time; fractions in [0, 1]), ``per_class_iou.csv``
    (one row per class, one column per run; classes matched by name), ``curves.png`` (training
    loss and validation mIoU of every run), ``per_class_iou.png`` (grouped bars) and
    ``comparison.md`` (both tables in %, and the pictures).

    Args:
        runs: run directories (or records from :func:`load_run`).
        out_dir: output folder (created).
        labels: a name per run (default: the run names, made unique).

    Returns:
        A :class:`Comparison` with the tables and the written files.

    Example:
        >>> cmp = compare_runs(["runs/synthetic", "runs/synthetic_baseline"], "runs/comparison")
        >>> print(cmp.markdown)
    """
    records = [r if isinstance(r, RunRecord) else load_run(r) for r in runs]
    if not records:
        raise ReportError("compare_runs needs at least one run directory")
    names = _labels(records, labels)
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ReportError(f"{out}: is a file; expected an output folder")
    out.mkdir(parents=True, exist_ok=True)

    table = []
    for run, label in zip(records, names):
        final = run.final()
        best, best_it = run.best()
        table.append(
            {
                "run": label,
                "run_dir": str(run.run_dir),
                "iterations": run.iterations(),
                **final,
                "best_mIoU": best,
                "best_iteration": best_it,
                "wall_s": _num(run.summary.get("wall_s")),
            }
        )
    classes = _class_union(records)
    per_class = []
    for cls in classes:
        row: dict[str, Any] = {"class": cls}
        for run, label in zip(records, names):
            row[label] = run.per_class_iou().get(cls)
        per_class.append(row)

    run_header = ["run", "run_dir", "iterations", *SUMMARY_KEYS, "best_mIoU", "best_iteration",
                  "wall_s"]  # fmt: skip
    _write_csv(out / "runs.csv", run_header, table)
    _write_csv(out / "per_class_iou.csv", ["class", *names], per_class)
    files = [out / "runs.csv", out / "per_class_iou.csv"]
    pictures = _curves(records, names, out)
    files += pictures

    md_runs = _markdown_table(
        ["run", "iterations", "mIoU", "mAcc", "aAcc", "fwIoU", "best mIoU (iteration)", "wall"],
        [
            [
                r["run"],
                "-" if r["iterations"] is None else str(r["iterations"]),
                *[_pct(r[k]) for k in SUMMARY_KEYS],
                _pct(r["best_mIoU"])
                + ("" if r["best_iteration"] is None else f" ({r['best_iteration']})"),
                "-" if r["wall_s"] is None else f"{r['wall_s']:.0f} s",
            ]
            for r in table
        ],
    )
    md_classes = _markdown_table(
        ["class", *names], [[row["class"], *[_pct(row[n]) for n in names]] for row in per_class]
    )
    markdown = (
        "# Run comparison\n\nMetrics in %; final = the last evaluation.\n\n"
        + md_runs
        + "\n\n## Per-class IoU (final)\n\n"
        + (md_classes if per_class else "(no per-class IoU recorded)")
        + "\n\n"
        + "\n".join(f"![{p.stem}]({p.name})" for p in pictures)
        + "\n"
    )
    (out / "comparison.md").write_text(markdown)
    files.append(out / "comparison.md")
    return Comparison(table, per_class, markdown, files)


def _check_report_out(run_dirs: Sequence[str | Path], out: str | Path | None) -> None:
    """``--out`` may lie inside a run (``RUN/plots`` is the default) but may not be a run, hold one,
    or be one of the files report reads."""
    from raycontrast.outputs import OutputError, check_output

    target = Path(out).expanduser() if out else Path("comparison") if len(run_dirs) > 1 else None
    if target is None:
        return
    inputs = []
    for run in run_dirs:
        inputs.append((f"run {run}", run))
        names = ("metrics.csv", "val.csv", "summary.json", "confusion.csv")
        inputs += [("the input file", Path(run) / n) for n in names]
    try:
        check_output(target, inputs, forbid=("is", "contains"))
    except OutputError as err:
        raise ReportError(str(err)) from None


def report(run_dirs: Sequence[str | Path], out: str | Path | None = None) -> list[Path]:
    """``raycontrast report RUN_DIR [RUN_DIR ...] [--out DIR]``.

    One run: redraw its plots (into ``out``, default ``<run>/plots``) and print its final metrics.
    Several runs: write :func:`compare_runs`'s comparison to ``out`` (default ``./comparison``)
    and print the table.

    Returns:
        The written files.
    """
    from raycontrast.eval.report import format_summary

    if not run_dirs:
        raise ReportError("report needs at least one run directory")
    seen: dict[Path, str] = {}
    for given in run_dirs:
        key = Path(given).expanduser().resolve()
        if key in seen:
            raise ReportError(f"{given}: the same run as {seen[key]}; give each run directory once")
        seen[key] = str(given)
    _check_report_out(run_dirs, out)
    if len(run_dirs) == 1:
        run = load_run(run_dirs[0])
        target = Path(out).expanduser() if out else None
        if target is not None and target.exists() and not target.is_dir():
            raise ReportError(f"{target}: is a file; expected an output folder")
        files = rebuild_plots(run, target)
        per_class = run.per_class_iou()
        final = run.final()
        best, best_it = run.best()
        if per_class:
            width = max(len("class"), *(len(n) for n in per_class))
            print(f"{'class':<{width}}  {'IoU':>6}")
            for name, value in per_class.items():
                print(f"{name:<{width}}  {_pct(value):>6}")
        if any(v is not None for v in final.values()):
            print(format_summary(final))
        if best is not None:
            print(f"best mIoU {100 * best:.2f}" + (f" at iteration {best_it}" if best_it else ""))
        where = files[0].parent if files else (target or run.run_dir / "plots")
        print(f"raycontrast: wrote {len(files)} plots of {run.name} to {where}")
        return files
    target = Path(out).expanduser() if out else Path("comparison")
    comparison = compare_runs(run_dirs, target)
    print(comparison.markdown.split("\n\n## ")[0].split("\n\n", 2)[-1])
    print(f"raycontrast: wrote the comparison of {len(run_dirs)} runs to {target}")
    return comparison.files
