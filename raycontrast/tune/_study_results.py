"""A study's results: the table of every run, per-arm intervals, paired differences, study.md, plots.

Everything is computed from the run directories (``val.csv``, ``metrics.csv``, ``summary.json``), so
the analysis can be redone at any time (``raycontrast study STUDY.yaml --analyse``), including on a
study cut short: arms are compared over the seeds both have finished, and every table says how many.

Run directories are read with :func:`raycontrast.eval.load_run` (what ``raycontrast report`` reads),
and each regime's runs are also put side by side with :func:`raycontrast.eval.compare_runs`
(``comparison[-<regime>]/``: every run's curves and per-class IoU bars).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import yaml

from raycontrast import storage
from raycontrast.eval.compare import ReportError, RunRecord, compare_runs, load_run
from raycontrast.tune._stats import (
    bootstrap_paired_miou,
    holm,
    paired_difference,
    summarize,
    wilcoxon_signed_rank,
)
from raycontrast.tune.study import REPORTED_METRICS, Cell, Study, study_dict

__all__ = ["analyse", "collect_runs", "load_record", "write_results"]


def _num(x: Any) -> float:
    try:
        return math.nan if x is None else float(x)
    except (TypeError, ValueError):
        return math.nan


def load_record(run_dir: str) -> RunRecord | None:
    """The run's files (:func:`raycontrast.eval.load_run`), or ``None`` when it has not started."""
    if storage.is_uri(run_dir):
        raise ValueError(
            f"{run_dir}: studies are analysed from a local or mounted (NFS) study directory; copy "
            "it locally and run `raycontrast study STUDY.yaml storage_path=<local copy> --analyse`"
        )
    try:
        return load_run(run_dir)
    except ReportError:
        return None


def collect_runs(study: Study) -> list[dict[str, Any]]:
    """One row per run of the study: arm, regime, seed, status, final and best metric, per-class IoU.

    ``final`` is the metric at the run's last iteration (``train.iterations``); ``best`` the highest
    over its evaluations; ``last_gain`` its change over the last evaluation interval (from
    ``last_gain_from``; under a poly schedule the learning rate there is near zero, so it is no
    evidence of convergence). With ``data.test_split`` the row also holds ``test_<metric>`` and
    ``test_IoU/<class>`` of the last weights (``test.json``), and a run without them is
    ``incomplete``. A run that has not reached its last iteration is ``incomplete`` (its values are
    kept in the table but left out of the statistics); one that never evaluated is ``missing``.
    """
    metric = study.config.metric
    rows = []
    for cell in study.cells():
        cfg = study.run_config(cell)
        record = load_record(study.run_dir(cell))
        row: dict[str, Any] = {
            "regime": cell.regime,
            "arm": cell.arm,
            "seed": cell.seed,
            "run": cell.run_name,
            "iterations": 0,
            "target_iterations": cfg.train.iterations,
        }
        val = [r for r in (record.val if record else []) if r.get("iteration") is not None]
        if not val:
            rows.append({**row, "status": "missing", f"final_{metric}": math.nan})
            continue
        last = val[-1]
        iterations = int(last["iteration"])
        values = [_num(r.get(metric)) for r in val]
        best = max(values)
        row.update(
            iterations=iterations,
            status="completed" if iterations >= cfg.train.iterations else "incomplete",
            best_iteration=int(val[values.index(best)]["iteration"]),
            last_gain=values[-1] - values[-2] if len(values) > 1 else math.nan,
            last_gain_from=int(val[-2]["iteration"]) if len(values) > 1 else None,
            final_ce=_num(record.train[-1].get("ce")) if record.train else math.nan,
            train_wall_s=_num(record.summary.get("train_wall_s")),
        )
        row.update({f"final_{m}": _num(last.get(m)) for m in REPORTED_METRICS})
        row[f"best_{metric}"] = best
        row.update({f"IoU/{k}": _num(v) for k, v in record.per_class_iou().items()})
        if cfg.data.test_split:
            row.update(_test_columns(study.run_dir(cell)))
            if row["status"] == "completed" and "test_images" not in row:
                row["status"] = "incomplete"  # trained, but its test split was not evaluated
        rows.append(row)
    return rows


def _test_columns(run_dir: str) -> dict[str, Any]:
    """``test_<metric>`` and ``test_IoU/<class>`` from the run's ``test.json`` (last weights)."""
    from raycontrast.eval.final_test import TEST_JSON

    path = storage.join(run_dir, TEST_JSON)
    if not storage.exists(path):
        return {}
    record = json.loads(storage.read_bytes(path))
    out: dict[str, Any] = {f"test_{m}": _num(record.get(m)) for m in REPORTED_METRICS}
    out["test_images"] = int(record.get("num_images", 0))
    out.update({f"test_IoU/{k}": _num(v) for k, v in (record.get("per_class_IoU") or {}).items()})
    return out


def _ok(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("status") == "completed"]


def analyse(study: Study, rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The statistics tables from :func:`collect_runs` rows (completed runs only).

    Returns ``arms`` (per regime and arm: n, mean, std, CI of final and best metric and of the last
    evaluation interval's gain), ``paired`` (per regime and non-reference arm: paired difference with
    the reference over common seeds, its CI, t and p) and ``per_class`` (per regime, arm and class:
    mean IoU and paired difference with the reference).
    """
    cfg = study.config
    metric, conf, ref = cfg.metric, cfg.confidence, cfg.reference
    done = _ok(rows)
    tested = any(f"test_{metric}" in r for r in done)
    kinds = ("final", "best", "test") if tested else ("final", "best")
    prefix = "test_IoU/" if tested else "IoU/"  # per-class values of the compared split
    classes = sorted({k for r in done for k in r if k.startswith(prefix)}, key=_class_order(done))
    arms, paired, per_class = [], [], []
    for regime in study.regimes:
        by_arm = {
            arm: {r["seed"]: r for r in done if r["regime"] == regime and r["arm"] == arm}
            for arm in study.arms
        }
        for arm, runs in by_arm.items():
            entry: dict[str, Any] = {"regime": regime, "arm": arm, "n": len(runs)}
            for kind in kinds:
                s = summarize([r[f"{kind}_{metric}"] for r in runs.values()], conf)
                entry.update(s.as_dict(f"{kind}_"))
            gains = [r.get("last_gain", math.nan) for r in runs.values()]
            entry.update(summarize(gains, conf).as_dict("last_gain_"))
            starts = [r["last_gain_from"] for r in runs.values() if r["last_gain_from"] is not None]
            entry["last_gain_from"] = min(starts, default=None)
            arms.append(entry)
            if arm != ref:
                for kind in kinds:
                    paired.append(_paired_row(study, regime, arm, kind, runs, by_arm[ref], conf))
            for key in classes:
                values = {s: r.get(key, math.nan) for s, r in runs.items()}
                s = summarize(list(values.values()), conf)
                item = {
                    "regime": regime,
                    "arm": arm,
                    "class": key.removeprefix(prefix),
                    "n": s.n,
                    "mean": s.mean,
                }
                if arm != ref:
                    d = paired_difference(
                        values, {s_: r.get(key, math.nan) for s_, r in by_arm[ref].items()}, conf
                    )
                    item.update(diff_mean=d.diff.mean, diff_ci_low=d.diff.ci_low)
                    item.update(diff_ci_high=d.diff.ci_high, p=d.p)
                per_class.append(item)
    _holm_columns(paired, per_class)
    return {"arms": arms, "paired": paired, "per_class": per_class}


def _paired_row(
    study: Study,
    regime: str,
    arm: str,
    kind: str,
    runs: dict[int, dict[str, Any]],
    reference: dict[int, dict[str, Any]],
    conf: float,
) -> dict[str, Any]:
    """One arm's paired difference with the reference: t interval and test, Wilcoxon signed-rank,
    and (for ``test``) the bootstrap over test images beside the interval over seeds."""
    metric = study.config.metric
    key = f"{kind}_{metric}"
    d = paired_difference(
        {s: r[key] for s, r in runs.items()}, {s: r[key] for s, r in reference.items()}, conf
    )
    diffs = [runs[s][key] - reference[s][key] for s in d.seeds]
    row = {
        "regime": regime,
        "arm": arm,
        "reference": study.config.reference,
        "value": kind,
        "seeds": " ".join(str(s) for s in d.seeds),
        **d.as_dict(),
        "wilcoxon_p": wilcoxon_signed_rank(diffs),
    }
    if kind == "test" and metric == "mIoU":
        row.update(_bootstrap(study, regime, arm, d.seeds, conf))
    return row


def _bootstrap(
    study: Study, regime: str, arm: str, seeds: tuple[int, ...], conf: float
) -> dict[str, Any]:
    """``boot_ci_low/high``: the paired bootstrap over test images (per-image counts of each run)."""
    from raycontrast.eval.final_test import read_per_image

    counts: dict[str, dict[int, Any]] = {arm: {}, study.config.reference: {}}
    for name in counts:
        for seed in seeds:
            c = read_per_image(study.run_dir(Cell(name, regime, seed)))
            if c is not None:
                counts[name][seed] = c
    b = bootstrap_paired_miou(counts[arm], counts[study.config.reference], confidence=conf)
    return {"boot_ci_low": b.ci_low, "boot_ci_high": b.ci_high, "boot_seeds": b.n_seeds,
            "test_images": b.n_images}  # fmt: skip


def _holm_columns(paired: list[dict[str, Any]], per_class: list[dict[str, Any]]) -> None:
    """Holm over the study's comparisons: per value kind across every regime and arm (``p_holm``,
    ``wilcoxon_p_holm``); per-class differences within each regime across arms x classes."""
    for kind in {r["value"] for r in paired}:
        group = [r for r in paired if r["value"] == kind]
        for col in ("p", "wilcoxon_p"):
            for r, adj in zip(group, holm([r[col] for r in group])):
                r[f"{col}_holm"] = adj
    for regime in {r["regime"] for r in per_class}:
        group = [r for r in per_class if r["regime"] == regime and "p" in r]
        for r, adj in zip(group, holm([r["p"] for r in group])):
            r["p_holm"] = adj


def _class_order(rows: list[dict[str, Any]]):
    order = {}
    for r in rows:
        for k in r:
            if "IoU/" in k and k not in order:
                order[k] = len(order)
    return lambda k: order[k]


def _pct(x: float, signed: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{100 * x:+.2f}" if signed else f"{100 * x:.2f}"


def _interval(low: float, high: float, signed: bool = False) -> str:
    if not (math.isfinite(low) and math.isfinite(high)):
        return "-"
    return f"[{_pct(low, signed)}, {_pct(high, signed)}]"


def _p(p: float) -> str:
    if not math.isfinite(p):
        return "-"
    return f"{p:.3g}" if p >= 1e-3 else f"{p:.1e}"


def study_markdown(study: Study, rows: list[dict[str, Any]], tables: dict[str, Any]) -> str:
    """``study.md``: the per-arm table, the paired differences and the per-class differences.

    With a test split (``data.test_split``) the compared value is the last weights' ``test`` metric;
    ``best`` is then best-on-validation and descriptive. p-values are given raw and Holm-adjusted
    over the study's comparisons; per-class differences are starred only when Holm-adjusted.
    """
    cfg = study.config
    m, ref, level = cfg.metric, cfg.reference, f"{100 * cfg.confidence:g} %"
    done = _ok(rows)
    kind = "test" if any(r["value"] == "test" for r in tables["paired"]) else "final"
    split = _test_split(study) if kind == "test" else _val_split(study)
    where = (
        f"{m} on `{split}` with each run's last weights (evaluated once, after training); `best` is "
        f"the best evaluation on `{_val_split(study)}` (descriptive)"
        if kind == "test"
        else f"{m} on `{split}`"
    )
    lines = [
        f"# Study `{cfg.name}`",
        "",
        f"Base `{cfg.base}`, seeds {study.seeds}, reference arm `{ref}`. "
        f"{len(done)} of {len(rows)} runs completed. Values in % ({where}): mean ± std over seeds, "
        f"{level} Student t interval of the mean; differences paired by seed (arm − {ref}) over the "
        f"paired n seeds both completed: two-sided paired t-test (p), its Holm adjustment over the "
        f"study's {sum(r['value'] == kind for r in tables['paired'])} comparisons (p Holm), and the "
        "two-sided Wilcoxon signed-rank test (exact for small n)."
        + (
            f" `boot CI`: {level} paired bootstrap over the test images (the fixed test set's own "
            "sampling error), beside the interval over seeds."
            if kind == "test"
            else ""
        ),
        "",
    ]
    if len(done) < len(rows):
        missing = [r["run"] for r in rows if r.get("status") != "completed"]
        lines += [
            f"**Partial study**: {len(rows) - len(done)} run(s) not completed "
            f"({', '.join(missing)}); each row says over how many seeds it is computed.",
            "",
        ]
    for regime in study.regimes:
        lines += _regime_markdown(study, tables, regime, kind)
    lines += [
        "Files: `runs.csv` / `runs.parquet` (every run), `arms.csv`, `paired.csv` (with `n`, "
        "`wilcoxon_p`, Holm-adjusted `p_holm` / `wilcoxon_p_holm`, and for `test` the bootstrap "
        f"`boot_ci_*`), `per_class.csv`, `{m}_per_arm.png` (means with intervals), `curves.png` "
        f"(validation {m} and training CE, mean and interval band over seeds), `comparison*/` "
        "(every completed run side by side: curves, per-class IoU bars).",
        "",
    ]
    return "\n".join(lines)


def _regime_markdown(study: Study, tables: dict[str, Any], regime: str, kind: str) -> list[str]:
    cfg = study.config
    m, ref, level = cfg.metric, cfg.reference, f"{100 * cfg.confidence:g} %"
    expected = len(study.seeds)
    title = f"## Regime `{regime}`" if regime else "## Results"
    over = study.regimes[regime]
    lines = [title, ""]
    if over:
        lines += ["Regime overrides: " + ", ".join(f"`{k}={v}`" for k, v in over.items()), ""]
    boot = kind == "test"
    lines += [
        f"| arm | overrides | seeds | {kind} {m} | {level} CI | best {m} | {level} CI "
        f"| Δ {kind} vs `{ref}` | {level} CI | paired n | p | p Holm | Wilcoxon p |"
        + (" boot CI |" if boot else ""),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if boot else ""),
    ]
    for a in (t for t in tables["arms"] if t["regime"] == regime):
        d = next(
            (
                p
                for p in tables["paired"]
                if p["regime"] == regime and p["arm"] == a["arm"] and p["value"] == kind
            ),
            None,
        )
        overrides = ", ".join(f"`{k}={v}`" for k, v in study.arms[a["arm"]].items()) or "(base)"
        if d is None:
            delta = ["(reference)", "", "", "", "", ""] + ([""] if boot else [])
        else:
            delta = [
                _pct(d["mean"], True),
                _interval(d["ci_low"], d["ci_high"], True),
                str(d["n"]),
                _p(d["p"]),
                _p(d.get("p_holm", math.nan)),
                _p(d.get("wilcoxon_p", math.nan)),
            ]
            if boot:
                delta.append(
                    _interval(d.get("boot_ci_low", math.nan), d.get("boot_ci_high", math.nan), True)
                )
        lines.append(
            f"| `{a['arm']}` | {overrides} | {a['n']}/{expected} | {_pct(a[f'{kind}_mean'])} ± "
            f"{_pct(a[f'{kind}_std'])} | {_interval(a[f'{kind}_ci_low'], a[f'{kind}_ci_high'])} | "
            f"{_pct(a['best_mean'])} ± {_pct(a['best_std'])} | "
            f"{_interval(a['best_ci_low'], a['best_ci_high'])} | {' | '.join(delta)} |"
        )
    lines += ["", *_flattening(tables, regime, m, level), ""]
    lines += _per_class_markdown(study, tables, regime, kind)
    return lines


def _per_class_markdown(study: Study, tables: dict[str, Any], regime: str, kind: str) -> list[str]:
    ref = study.config.reference
    pc = [t for t in tables["per_class"] if t["regime"] == regime and t["arm"] != ref]
    if not pc:
        return []
    classes = list(dict.fromkeys(t["class"] for t in pc))
    others = [a for a in study.arms if a != ref]
    lines = [
        f"Per-class IoU ({kind}): `{ref}` mean, and each arm's paired difference (arm − {ref}). "
        "* where the Holm-adjusted p (over this regime's arms x classes) is below 0.05; the "
        "unadjusted p-values are in `per_class.csv` and are not evidence on their own.",
        "",
        f"| class | `{ref}` | " + " | ".join(f"Δ `{a}`" for a in others) + " |",
        "|---|---|" + "---|" * len(others),
    ]
    for c in classes:
        base = next(
            (
                t
                for t in tables["per_class"]
                if t["regime"] == regime and t["arm"] == ref and t["class"] == c
            ),
            {},
        )
        cells = []
        for a in others:
            t = next((t for t in pc if t["arm"] == a and t["class"] == c), {})
            p_holm = t.get("p_holm", math.nan)
            star = "*" if math.isfinite(p_holm) and p_holm < 0.05 else ""
            cells.append(_pct(t.get("diff_mean", math.nan), True) + star)
        lines.append(f"| {c} | {_pct(base.get('mean', math.nan))} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _flattening(tables: dict[str, Any], regime: str, metric: str, level: str) -> list[str]:
    """One line per arm: the metric's change over the last evaluation interval, stated as a change
    only. Under a poly schedule the learning rate is near zero there, so a small change is forced by
    the schedule and says nothing about convergence; no convergence claim is made from it."""
    parts = [
        f"`{a['arm']}` {_pct(a['last_gain_mean'], True)} "
        f"{_interval(a['last_gain_ci_low'], a['last_gain_ci_high'], True)} "
        f"(from iteration {a['last_gain_from']})"
        for a in tables["arms"]
        if a["regime"] == regime and a.get("last_gain_n", 0) and a["last_gain_from"] is not None
    ]
    if not parts:
        return []
    return [
        f"Change of the validation {metric} over each run's last evaluation interval, mean and "
        f"{level} interval over seeds: " + "; ".join(parts) + ". With a poly learning-rate "
        "schedule the rate over this interval is a small fraction of its base, so a small change "
        "here does not show that training converged; only a longer run or a constant-rate control "
        "can."
    ]


def _test_split(study: Study) -> str:
    first = next(iter(study.regimes))
    return study.experiment(next(iter(study.arms)), first).data.test_split


def _val_split(study: Study) -> str:
    first = next(iter(study.regimes))
    return study.experiment(next(iter(study.arms)), first).data.val_split


def _frame(rows: list[dict[str, Any]]):
    import pandas as pd

    return pd.DataFrame(rows)


def write_results(study: Study) -> dict[str, Any]:
    """Collect the runs, compute the statistics and write every table, ``study.md`` and the plots."""
    rows = collect_runs(study)
    tables = analyse(study, rows)
    out = study.results_dir
    storage.makedirs(out)
    runs = _frame(rows)
    storage.write_bytes(storage.join(out, "runs.csv"), runs.to_csv(index=False).encode())
    storage.write_bytes(storage.join(out, "runs.parquet"), runs.to_parquet(index=False))
    for name, table in tables.items():
        storage.write_bytes(
            storage.join(out, f"{name}.csv"), _frame(table).to_csv(index=False).encode()
        )
    storage.write_bytes(
        storage.join(out, "study.yaml"),
        yaml.safe_dump(study_dict(study), sort_keys=False).encode(),
    )
    md = study_markdown(study, rows, tables)
    storage.write_bytes(storage.join(out, "study.md"), md.encode())
    storage.write_bytes(
        storage.join(out, "study.json"),
        json.dumps({"study": study_dict(study), **tables}, indent=2, default=str).encode(),
    )
    plots = _plots(study, rows, tables, out)
    for regime in study.regimes:
        done = [r for r in _ok(rows) if r["regime"] == regime]
        if done and not storage.is_uri(out):
            cmp = compare_runs(
                [study.run_dir(Cell(r["arm"], regime, r["seed"])) for r in done],
                Path(out) / ("comparison" + (f"-{regime}" if regime else "")),
                labels=[f"{r['arm']}-s{r['seed']}" for r in done],
            )
            plots += [str(p) for p in cmp.files if p.suffix == ".png"]
    print(md, flush=True)
    print(f"study results in {out}", flush=True)
    return {"results_dir": out, "rows": rows, **tables, "plots": plots}


def _save(fig, path: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    storage.write_bytes(path, buf.getvalue())
    return path


def _plots(study: Study, rows, tables, out: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = study.config
    m = cfg.metric
    regimes = list(study.regimes)
    written = []

    # means with intervals, one panel per regime; dots are the individual seeds
    fig, axes = plt.subplots(
        1, len(regimes), figsize=(1.6 + 1.4 * len(study.arms) * len(regimes), 3.8), squeeze=False
    )
    for ax, regime in zip(axes[0], regimes):
        entries = [t for t in tables["arms"] if t["regime"] == regime]
        for i, t in enumerate(entries):
            for kind, dx, colour in (("final", -0.12, "C0"), ("best", 0.12, "C1")):
                mean = t[f"{kind}_mean"]
                if not math.isfinite(mean):
                    continue
                lo, hi = t[f"{kind}_ci_low"], t[f"{kind}_ci_high"]
                err = [[100 * (mean - lo)], [100 * (hi - mean)]] if math.isfinite(lo) else None
                ax.errorbar(
                    i + dx, 100 * mean, yerr=err, fmt="o", color=colour, capsize=4,
                    label=f"{kind} {m}" if i == 0 else None,
                )  # fmt: skip
                seeds = [
                    r[f"{kind}_{m}"]
                    for r in _ok(rows)
                    if r["regime"] == regime and r["arm"] == t["arm"]
                ]
                ax.scatter([i + dx + 0.05] * len(seeds), [100 * v for v in seeds], s=8,
                           color=colour, alpha=0.4)  # fmt: skip
        ax.set_xticks(range(len(entries)), [t["arm"] for t in entries], rotation=20)
        ax.set_ylabel(f"{m} (%)")
        ax.set_title(f"{regime or cfg.name}: mean, {100 * cfg.confidence:g}% CI")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(_save(fig, storage.join(out, f"{m}_per_arm.png")))
    plt.close(fig)
    written.append(_plot_curves(study, out))
    return written


def _plot_curves(study: Study, out: str) -> str:
    """Learning curves: validation metric and training CE, mean and interval band over seeds."""
    import matplotlib.pyplot as plt
    import numpy as np

    from raycontrast.tune._stats import summarize as summ

    cfg = study.config
    m = cfg.metric
    regimes = list(study.regimes)
    fig, axes = plt.subplots(2, len(regimes), figsize=(5.5 * len(regimes), 7), squeeze=False)
    for col, regime in enumerate(regimes):
        for i, arm in enumerate(study.arms):
            curves = {"val": {}, "ce": {}}
            for seed in study.seeds:
                record = load_record(study.run_dir(Cell(arm, regime, seed)))
                if record is None:
                    continue
                for key, rows_, field in (("val", record.val, m), ("ce", record.train, "ce")):
                    for r in rows_:
                        if r.get("iteration") is not None and r.get(field) is not None:
                            curves[key].setdefault(int(r["iteration"]), []).append(r[field])
            split = study.experiment(arm, regime).data.val_split
            panels = (("val", f"{m} on '{split}' (%)"), ("ce", "training CE"))
            for row, (key, label) in enumerate(panels):
                ax = axes[row][col]
                its = sorted(curves[key])
                if not its:
                    continue
                scale = 100 if key == "val" else 1
                stats = [summ(curves[key][it], cfg.confidence) for it in its]
                mean = np.array([s.mean for s in stats]) * scale
                lo = np.array([s.ci_low if math.isfinite(s.ci_low) else s.mean for s in stats])
                hi = np.array([s.ci_high if math.isfinite(s.ci_high) else s.mean for s in stats])
                ax.plot(its, mean, color=f"C{i}", label=arm, marker="o" if key == "val" else None,
                        markersize=3)  # fmt: skip
                ax.fill_between(its, lo * scale, hi * scale, color=f"C{i}", alpha=0.2)
                ax.set_ylabel(label)
                ax.set_xlabel("iteration")
                ax.set_title(f"{regime or cfg.name}: {label}")
        if axes[0][col].get_legend_handles_labels()[0]:
            axes[0][col].legend(fontsize=8)
    fig.tight_layout()
    path = _save(fig, storage.join(out, "curves.png"))
    plt.close(fig)
    return path
