"""Run sweeps and studies with Ray Tune; a sweep's results become a table, plots and a best config.

Tune drives Train through a function trainable (Ray 2.60): each trial's driver function builds the trial's
experiment and calls :func:`raycontrast.train.run_training` with Tune's report callback, so every
evaluation reaches Tune (and ASHA) as it happens.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import yaml

from raycontrast import storage
from raycontrast.config import ConfigError, save_config
from raycontrast.tune.study import (
    Cell,
    Study,
    absolute_paths,
    load_study,
    per_run_cpus,
    study_dict,
)
from raycontrast.tune.sweep import Sweep, load_sweep

__all__ = [
    "check_study",
    "concurrency",
    "describe_study",
    "fit_trials",
    "run_study",
    "run_sweep",
    "summarise_results",
]


def _trial(config: dict[str, Any], sweep: Sweep, cwd: str) -> None:
    """One sweep trial: its experiment, trained with metrics forwarded to Tune."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from raycontrast.train import run_training

    trial_id = tune.get_context().get_trial_id()
    cfg = absolute_paths(sweep.trial_config(config, trial_id), cwd)
    run_training(cfg, callbacks=[TuneReportCallback()])


def _study_trial(config: dict[str, Any], study: Study) -> None:
    """One study run (an arm in a regime with a seed), trained with metrics forwarded to Tune.

    A run that already finished (a study rerun with an added arm or seed) is not started again.
    """
    from ray.tune.integration.ray_train import TuneReportCallback

    from raycontrast.train import run_training

    cell = study.cell(config["run"])
    if finished(study, cell):
        print(f"[{study.config.name}] {cell.run_name}: finished before, kept", flush=True)
        return
    run_training(study.run_config(cell), callbacks=[TuneReportCallback()])


def finished(study: Study, cell: Cell) -> bool:
    """Whether the run has its summary and an evaluation at its last iteration."""
    from raycontrast.tune.study_results import load_record

    run_dir = study.run_dir(cell)
    if storage.is_uri(run_dir) or not storage.exists(storage.join(run_dir, "summary.json")):
        return False
    record = load_record(run_dir)
    its = [r["iteration"] for r in (record.val if record else []) if r.get("iteration") is not None]
    cfg = study.run_config(cell)
    if cfg.data.test_split and not storage.exists(storage.join(run_dir, "test.json")):
        return False  # rerun: it resumes at its last iteration and evaluates the test split
    return bool(its) and max(its) >= cfg.train.iterations


def _scheduler(sweep: Sweep):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    s = sweep.config.scheduler
    if s.type == "fifo":
        return FIFOScheduler()
    max_t = s.max_t or sweep.trial_config({}, "probe").train.iterations
    return ASHAScheduler(
        time_attr=s.time_attr,
        max_t=max_t,
        grace_period=s.grace_period,
        reduction_factor=s.reduction_factor,
    )


def concurrency(requested: int, cpus_per_trial: float) -> int:
    """``requested`` trials at once, or (0) as many as the cluster's CPUs fit, at least one.

    ``cpus_per_trial`` counts the trial's driver and its Train workers: Tune reserves only the
    driver's share, so without this bound it would start trials whose workers cannot be placed.
    """
    if requested > 0:
        return requested
    import ray

    total = float(ray.cluster_resources().get("CPU", 1.0))
    return max(1, int(total // cpus_per_trial + 1e-9)) if cpus_per_trial > 0 else 1


def fit_trials(
    fn,
    *,
    root: str,
    name: str,
    storage_path: str,
    param_space: dict[str, Any],
    trial_cpus: float,
    metric: str,
    mode: str,
    max_concurrent_trials: int,
    max_failures: int,
    resume: bool,
    scheduler=None,
    num_samples: int = 1,
    **params: Any,
):
    """Run ``fn(config, **params)`` as Tune trials (or, with ``resume``, continue them); the grid.

    Shared by sweeps and studies: one layout (``<storage_path>/<name>/``, Tune's experiment state,
    trial runs under ``runs/``), trial resources (``trial_cpus`` for the trial's driver; its Train
    workers request their own), retries (``max_failures``, a retried trial resumes from its own
    checkpoint) and ``Tuner.restore`` for an interrupted run.
    """
    from ray import tune

    trainable = tune.with_resources(tune.with_parameters(fn, **params), {"cpu": trial_cpus})
    if resume:
        if not storage.exists(root):
            raise FileNotFoundError(f"nothing to resume: no {name!r} at {root}")
        tuner = tune.Tuner.restore(root, trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                metric=metric,
                mode=mode,
                scheduler=scheduler,
                num_samples=num_samples,
                max_concurrent_trials=max_concurrent_trials,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage.resolve(storage_path),
                failure_config=tune.FailureConfig(max_failures=max_failures),
            ),
        )
    return tuner.fit()


def run_sweep(
    path: str,
    overrides: list[str] | tuple[str, ...] = (),
    resume: bool = False,
    address: str | None = None,
) -> dict[str, Any]:
    """Run (or with ``resume`` continue) the sweep in ``path``; returns the results summary.

    Args:
        path: sweep YAML.
        overrides: ``key=value`` overrides of the base experiment, applied to every trial.
        resume: continue an interrupted sweep (``Tuner.restore``), trials resuming from checkpoints.
        address: Ray cluster address (default: ``$RAY_ADDRESS``, else a local instance).
    """
    from raycontrast.train.launcher import connect
    from raycontrast.tune.sweep import check_sweep

    sweep = load_sweep(path, list(overrides))
    # trials run in their own directories: relative paths must mean what they meant here
    sweep.config.storage_path = storage.resolve(sweep.config.storage_path)
    # address, data, model (meta device), metric and one trial's resources fail here, not in trials
    check_sweep(sweep, address)
    connect(address)
    cfg = sweep.config
    from raycontrast.train.tracking import finish_group, start_group

    group = start_group(sweep.trial_config({}, "parent"), cfg.name, sweep.root, "sweep")
    grid = fit_trials(
        _trial,
        root=sweep.root,
        name=cfg.name,
        storage_path=cfg.storage_path,
        param_space=sweep.tune_space(),
        trial_cpus=cfg.trial_cpus,
        metric=cfg.metric,
        mode=cfg.mode,
        max_concurrent_trials=cfg.max_concurrent_trials,
        max_failures=cfg.max_failures,
        resume=resume,
        scheduler=_scheduler(sweep),
        num_samples=cfg.num_samples,
        sweep=sweep,
        cwd=os.getcwd(),
    )
    summary = summarise_results(sweep, grid)
    finish_group(group, storage.join(sweep.root, "results"))
    return summary


def run_study(
    path: str,
    overrides: list[str] | tuple[str, ...] = (),
    resume: bool = False,
    address: str | None = None,
    analyse_only: bool = False,
) -> dict[str, Any]:
    """Run (or continue) every arm x regime x seed of the study in ``path``, then write its results.

    Args:
        path: study YAML.
        overrides: ``key=value`` overrides of the base experiment, applied to every run
            (``name=`` / ``storage_path=`` name the study itself).
        resume: continue an interrupted study: finished runs are kept, the others resume from their
            own last checkpoint.
        address: Ray cluster address (default: ``$RAY_ADDRESS``, else a local instance).
        analyse_only: run nothing; recompute the tables and plots from the runs on disk.
    """
    from ray import tune

    from raycontrast.train.launcher import connect
    from raycontrast.tune.study_results import write_results

    study = load_study(path, list(overrides))
    if analyse_only:
        return write_results(study)
    cfg = study.config
    check_study(study, address)  # a mistake in any arm fails here, before any run starts
    connect(address)
    storage.makedirs(study.results_dir)
    storage.write_bytes(
        storage.join(study.results_dir, "study.yaml"),
        yaml.safe_dump(study_dict(study), sort_keys=False).encode(),
    )
    runs = [c.run_name for c in study.cells()]
    from raycontrast.train.tracking import finish_group, start_group

    group = start_group(study.run_config(study.cells()[0]), cfg.name, study.root, "study")
    limit = concurrency(cfg.max_concurrent_trials, per_run_cpus(study))
    print(
        f"[{cfg.name}] {len(runs)} runs ({len(study.arms)} arms x {len(study.regimes)} regime(s) "
        f"x {len(study.seeds)} seeds), {limit} at once; study dir {study.root}",
        flush=True,
    )
    fit_trials(
        _study_trial,
        root=study.root,
        name=cfg.name,
        storage_path=cfg.storage_path,
        param_space={"run": tune.grid_search(runs)},
        trial_cpus=cfg.trial_cpus,
        metric=cfg.metric,
        mode="max",
        max_concurrent_trials=limit,
        max_failures=cfg.max_failures,
        resume=resume,
        study=study,
    )
    results = write_results(study)
    finish_group(group, study.results_dir)
    return results


def check_study(study: Study, address: str | None = None, cluster: bool = True) -> list[Any]:
    """Every check of a study before any run starts (``raycontrast study --dry-run`` and
    :func:`run_study`): each arm x regime experiment's preflight (data, model on the meta device,
    storage, a rerun's checkpoint, the metric) and one run's resources against the cluster
    (``address`` / ``$RAY_ADDRESS`` when given, else what a local Ray instance would offer).

    Returns:
        One :class:`~raycontrast.train.preflight.Preflight` per arm x regime (empty on a tree
        without the preflight module, where only the data are checked).
    """
    import os

    from raycontrast.train.launcher import check_data, check_storage

    check_storage(study.config.storage_path)
    try:
        from raycontrast.train.preflight import check_resources, local_capacity, preflight
    except ImportError:
        for regime in study.regimes:
            for arm in study.arms:
                check_data(study.experiment(arm, regime))
        return []
    reports = []
    total = len(study.regimes) * len(study.arms)
    for regime in study.regimes:
        for arm in study.arms:
            where = f"arm {arm!r}" + (f" in regime {regime!r}" if regime else "")
            print(
                f"[{study.config.name}] checking {where} ({len(reports) + 1}/{total})", flush=True
            )
            try:
                reports.append(
                    preflight(
                        study.run_config(Cell(arm, regime, study.seeds[0])),
                        metrics=[(study.config.metric, "study metric")],
                        driver_cpus=study.config.trial_cpus,
                        cluster=False,
                    )
                )
            except ConfigError as err:
                raise type(err)(f"{study.path}: {where}: {err}") from None
    if cluster and reports:
        import ray

        available = None
        if address or os.environ.get("RAY_ADDRESS") or ray.is_initialized():
            from raycontrast.train.launcher import connect

            connect(address)
        else:
            available = local_capacity()
        for report in reports:
            report.resources, report.cluster = check_resources(
                report.config, study.config.trial_cpus, available
            )
    return reports


def describe_study(study: Study) -> str:
    """The plan ``--dry-run`` prints: arms, regimes, seeds, runs and where results go."""
    lines = [f"study {study.config.name!r}: base {study.base_path}"]
    for name, over in study.arms.items():
        ref = " (reference)" if name == study.config.reference else ""
        text = ", ".join(f"{k}={v}" for k, v in over.items()) or "the base experiment"
        lines.append(f"  arm {name}{ref}: {text}")
    for name, over in study.regimes.items():
        if name:
            text = ", ".join(f"{k}={v}" for k, v in over.items()) or "no overrides"
            lines.append(f"  regime {name}: {text}")
    cells = study.cells()
    lines.append(
        f"  seeds {study.seeds}: {len(cells)} runs of {per_run_cpus(study):g} CPUs each; "
        f"metric {study.config.metric} (final and best), results in {study.results_dir}"
    )
    return "\n".join(lines)


def _status(result, iterations: int) -> str:
    if result.error is not None:
        return "error"
    done = (result.metrics or {}).get("iteration", 0)
    return "completed" if done >= iterations else "stopped early"


def summarise_results(sweep: Sweep, grid) -> dict[str, Any]:
    """Table (console, CSV, Parquet), metric-vs-parameter plots and the best trial's config YAML."""
    import pandas as pd

    cfg = sweep.config
    keys = list(sweep.space)
    rows = []
    for result in grid:
        config = result.config or {}
        trial_id = Path(result.path).name.split("_")[1] if result.path else "?"
        trial_id = (result.metrics or {}).get("trial_id", trial_id)
        frame = result.metrics_dataframe
        values = frame[cfg.metric].dropna() if frame is not None and cfg.metric in frame else []
        best = (max(values) if cfg.mode == "max" else min(values)) if len(values) else math.nan
        iterations = sweep.trial_config(
            {k: config[k] for k in keys if k in config}, trial_id
        ).train.iterations
        rows.append(
            {
                "trial": trial_id,
                **{k: config.get(k) for k in keys},
                f"best_{cfg.metric}": best,
                "iterations": (result.metrics or {}).get("iteration", 0),
                "status": _status(result, iterations),
            }
        )
    table = pd.DataFrame(rows)
    score = f"best_{cfg.metric}"
    if len(table):
        table = table.sort_values(score, ascending=cfg.mode == "min", na_position="last")
    out_dir = storage.join(sweep.root, "results")
    storage.makedirs(out_dir)
    storage.write_bytes(storage.join(out_dir, "trials.csv"), table.to_csv(index=False).encode())
    storage.write_bytes(storage.join(out_dir, "trials.parquet"), table.to_parquet(index=False))
    print(table.to_string(index=False), flush=True)

    summary: dict[str, Any] = {
        "sweep": cfg.name,
        "metric": cfg.metric,
        "mode": cfg.mode,
        "trials": len(table),
    }
    finite = table[table[score].notna()] if len(table) else table
    if len(finite):
        best_row = finite.iloc[0]
        values = {k: _plain(best_row[k]) for k in keys}
        best_cfg = sweep.trial_config(values, "best")
        best_cfg.name = f"{cfg.name}_best"
        best_cfg.storage_path = sweep.trial_config({}, "probe").storage_path
        best_path = storage.join(out_dir, "best_config.yaml")
        if storage.is_uri(best_path):
            import yaml

            from raycontrast.config import config_to_dict

            storage.write_bytes(
                best_path, yaml.safe_dump(config_to_dict(best_cfg), sort_keys=False).encode()
            )
        else:
            save_config(best_cfg, best_path)
        summary.update(
            best_trial=str(best_row["trial"]),
            best_value=float(best_row[score]),
            best_values=values,
            best_config=best_path,
        )
        print(
            f"best trial {best_row['trial']}: {cfg.metric} {best_row[score]:.4f} with {values}; config: {best_path}",
            flush=True,
        )
    summary["plots"] = _plots(sweep, table, score, out_dir)
    storage.write_bytes(
        storage.join(out_dir, "summary.json"), json.dumps(summary, indent=2, default=str).encode()
    )
    return summary


def _plain(value: Any) -> Any:
    """numpy scalars -> Python scalars (for YAML overrides)."""
    return value.item() if hasattr(value, "item") else value


def _plots(sweep: Sweep, table, score: str, out_dir: str) -> list[str]:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for key, spec in sweep.space.items():
        ((kind, _),) = spec.items()
        if not len(table):
            continue
        fig, ax = plt.subplots(figsize=(5, 3.5))
        xs = table[key].tolist()
        ys = table[score].tolist()
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs):
            ax.scatter(xs, ys)
            if kind == "loguniform":
                ax.set_xscale("log")
        else:
            labels = [str(x) for x in xs]
            ax.scatter(range(len(labels)), ys)
            ax.set_xticks(range(len(labels)), labels, rotation=30)
        ax.set_xlabel(key)
        ax.set_ylabel(score)
        ax.set_title(f"{sweep.config.name}: {score} vs {key}")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        path = storage.join(out_dir, f"{score}_vs_{key.replace('.', '_')}.png")
        storage.write_bytes(path, buf.getvalue())
        written.append(path)
    return written
