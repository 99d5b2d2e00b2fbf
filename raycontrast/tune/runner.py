"""Run a sweep with Ray Tune and turn its results into a table, plots and a best-trial config.

Tune drives Train through a function trainable (Ray 2.60): each trial's driver function builds the trial's
experiment and calls :func:`raycontrast.train.run_training` with Tune's report callback, so every
evaluation reaches Tune (and ASHA) as it happens.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from raycontrast import storage
from raycontrast.config import save_config
from raycontrast.tune.sweep import Sweep, load_sweep

__all__ = ["run_sweep", "summarise_results"]


def _trial(config: dict[str, Any], sweep: Sweep) -> None:
    """One trial: its experiment, trained with metrics forwarded to Tune."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from raycontrast.train import run_training

    trial_id = tune.get_context().get_trial_id()
    cfg = sweep.trial_config(config, trial_id)
    run_training(cfg, callbacks=[TuneReportCallback()])


def _trainable(sweep: Sweep):
    from ray import tune

    return tune.with_resources(
        tune.with_parameters(_trial, sweep=sweep), {"cpu": sweep.config.trial_cpus}
    )


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
    from ray import tune

    from raycontrast.train import check_data, check_storage, connect

    sweep = load_sweep(path, list(overrides))
    check_storage(sweep.config.storage_path)
    check_data(sweep.trial_config({}, "probe"))  # a missing dataset fails here, not in every trial
    connect(address)
    cfg = sweep.config
    if resume:
        if not storage.exists(sweep.root):
            raise FileNotFoundError(f"nothing to resume: no sweep at {sweep.root}")
        tuner = tune.Tuner.restore(sweep.root, trainable=_trainable(sweep), resume_errored=True)
    else:
        tuner = tune.Tuner(
            _trainable(sweep),
            param_space=sweep.tune_space(),
            tune_config=tune.TuneConfig(
                metric=cfg.metric,
                mode=cfg.mode,
                scheduler=_scheduler(sweep),
                num_samples=cfg.num_samples,
                max_concurrent_trials=cfg.max_concurrent_trials,
            ),
            run_config=tune.RunConfig(
                name=cfg.name,
                storage_path=storage.resolve(cfg.storage_path),
                failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
            ),
        )
    grid = tuner.fit()
    return summarise_results(sweep, grid)


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
