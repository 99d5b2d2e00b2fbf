"""Ray Tune sweeps over any experiment config key.

A sweep file names a base experiment, fixed overrides, a search space over dotted config keys, the
metric, a scheduler (ASHA or FIFO) and the trial resources. Every trial is one Ray Train run (with its own
bank actor) whose name is ``<sweep>_<trial id>``, so a failed trial resumes from its own checkpoint.

Example sweep file::

    base: ../synthetic.yaml
    name: smoke
    overrides: [train.iterations=60]
    search_space:
      contrast.memory_size: {grid: [100, 500]}
      contrast.loss_weight: {loguniform: [0.01, 1.0]}
    num_samples: 1
    scheduler: {type: asha, grace_period: 20, max_t: 60}
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from raycontrast import storage
from raycontrast.config import (
    ConfigError,
    ExperimentConfig,
    coerce_key,
    config_from_dict,
    config_keys,
    did_you_mean,
    load_config,
    param,
    read_yaml_mapping,
    save_config,
)
from raycontrast.outputs import check_run_dir
from raycontrast.tune._trials import absolute_paths, fit_trials, raise_if_incomplete

__all__ = [
    "SPACE_KINDS",
    "SchedulerConfig",
    "Sweep",
    "SweepConfig",
    "check_sweep",
    "load_sweep",
    "run_sweep",
    "summarise_results",
]

SPACE_KINDS = ("grid", "choice", "uniform", "loguniform", "randint")


@dataclass
class SchedulerConfig:
    """Trial scheduler. ASHA stops weak trials at rungs measured in ``time_attr`` (training iterations)."""

    type: str = param(
        "fifo",
        "fifo runs every trial to the end; asha stops weak ones early.",
        choices=("fifo", "asha"),
    )
    time_attr: str = param("iteration", "Reported metric that measures progress.")
    max_t: int | None = param(
        None, "ASHA: the longest a trial runs (default: train.iterations).", ge=1
    )
    grace_period: int = param(1, "ASHA: progress before a trial can be stopped.", ge=1)
    reduction_factor: float = param(2.0, "ASHA: halving rate.", gt=1.0)


@dataclass
class SweepConfig:
    """A sweep file (``raycontrast tune SWEEP.yaml``)."""

    base: str = param("", "Experiment YAML every trial starts from (relative to the sweep file).")
    name: str = param("sweep", "Sweep name: results go to <storage_path>/<name>/.")
    storage_path: str = param(
        "runs/sweeps", "Where sweeps go (local folder, NFS path or s3:// URI)."
    )
    overrides: list[str] = param([], "key=value overrides applied to every trial.")
    num_samples: int = param(1, "Samples of the random parts of the space (times the grid).", ge=1)
    metric: str = param("mIoU", "Metric reported by training that the sweep optimises.")
    mode: str = param("max", "Optimisation direction.", choices=("max", "min"))
    scheduler: SchedulerConfig = field(
        default_factory=SchedulerConfig, metadata={"help": "Scheduler."}
    )
    max_concurrent_trials: int = param(1, "Trials at once (1 on a small machine).", ge=1)
    trial_cpus: float = param(
        0.25, "CPUs of each trial's driver (Train workers take train.cpus_per_worker each).", ge=0.0
    )
    max_failures: int = param(
        1, "Retries of a failed trial (it resumes from its checkpoint).", ge=0
    )


@dataclass
class Sweep:
    """A validated sweep: its config, search space and where it came from."""

    config: SweepConfig
    space: dict[str, dict[str, list[Any]]]
    path: Path
    base_path: Path
    extra_overrides: list[str] = dataclasses.field(default_factory=list)

    @property
    def root(self) -> str:
        """``<storage_path>/<name>``: Tune's experiment folder; trial runs go to ``runs/`` inside."""
        return storage.join(storage.resolve(self.config.storage_path), self.config.name)

    def trial_config(self, values: dict[str, Any], trial_id: str) -> ExperimentConfig:
        """The experiment of one trial: base + fixed overrides + the trial's values."""
        overrides = [*self.config.overrides, *self.extra_overrides]
        overrides += [
            f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
            for k, v in values.items()
        ]
        overrides += [
            f"name={self.config.name}_{trial_id}",
            f"log.group={self.config.name}",  # trials nest under the sweep's tracked run
            f"storage_path={storage.join(self.root, 'runs')}",
        ]
        return load_config(self.base_path, overrides)

    def metrics(self) -> list[tuple[str, str]]:
        """``(name, field)`` of what the sweep reads from the trials' reports: its metric and, with
        ASHA, the progress measure."""
        out = [(self.config.metric, "metric")]
        if self.config.scheduler.type == "asha":
            out.append((self.config.scheduler.time_attr, "scheduler.time_attr"))
        return out

    def num_trials(self) -> int:
        """Trials Tune runs for this sweep: every grid combination, ``num_samples`` times."""
        n = self.config.num_samples
        for spec in self.space.values():
            ((kind, values),) = spec.items()
            if kind == "grid":
                n *= len(values)
        return n

    def tune_space(self) -> dict[str, Any]:
        """The search space as Ray Tune domains (keys are the dotted config keys)."""
        from ray import tune

        out = {}
        for key, spec in self.space.items():
            ((kind, values),) = spec.items()
            if kind == "grid":
                out[key] = tune.grid_search(list(values))
            elif kind == "choice":
                out[key] = tune.choice(list(values))
            elif kind == "uniform":
                out[key] = tune.uniform(*values)
            elif kind == "loguniform":
                out[key] = tune.loguniform(*values)
            else:
                out[key] = tune.randint(*values)
        return out


def _check_space(space: Any, source: str) -> dict[str, dict[str, list[Any]]]:
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{source}: search_space must be a non-empty mapping of config keys")
    leaves = set(config_keys())
    for key, spec in space.items():
        where = f"{source}: search_space.{key}"
        if key not in leaves:
            hint = did_you_mean(key, sorted(leaves))
            raise ConfigError(f"{where}: {key!r} is not a config key{hint}")
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in SPACE_KINDS:
            raise ConfigError(
                f"{where}: expected one of {{{', '.join(SPACE_KINDS)}: [...]}}, got {spec!r}"
            )
        ((kind, values),) = spec.items()
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.{kind}: expected a non-empty list, got {values!r}")
        # typed as the key's field: [1e-4, 1e-1] arrives from YAML 1.1 as text
        values = [_typed(key, v, f"{where}.{kind}") for v in values]
        space[key] = {kind: values}
        if kind in ("uniform", "loguniform", "randint"):
            numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
            if len(values) != 2 or not numeric or not values[0] < values[1]:
                raise ConfigError(
                    f"{where}.{kind}: expected [low, high] with low < high, got {values!r}"
                )
            if kind == "loguniform" and values[0] <= 0:
                raise ConfigError(f"{where}.loguniform: bounds must be > 0, got {values!r}")
            if kind == "randint" and not all(isinstance(v, int) for v in values):
                raise ConfigError(f"{where}.randint: bounds must be integers, got {values!r}")
    return space


def _typed(key: str, value: Any, where: str) -> Any:
    """``value`` converted to the type of config key ``key`` (numeric strings of float keys become
    floats); a value of the wrong type is left for the trial-config probe to report."""
    try:
        return coerce_key(key, value)
    except ConfigError as err:
        if "finite" in str(err):
            raise ConfigError(f"{where}: {err}") from None
        return value


def _probe_values(kind: str, values: list[Any]) -> list[Any]:
    """Values whose validity implies the whole domain's (for ranges: the endpoints)."""
    if kind == "randint":
        return [values[0], values[1] - 1]
    if kind in ("uniform", "loguniform"):
        return [values[0], math.nextafter(values[1], values[0])]
    return list(values)


def load_sweep(path: str | Path, extra_overrides: list[str] | tuple[str, ...] = ()) -> Sweep:
    """Read and validate a sweep file; every searched value is checked against the config schema."""
    path = Path(path).expanduser().resolve()
    raw = read_yaml_mapping(path, "sweep")
    space = raw.pop("search_space", None)
    # `name=` / `storage_path=` on the command line name the sweep itself (its trials derive theirs)
    extra_overrides = list(extra_overrides)
    for item in list(extra_overrides):
        key, _, value = item.partition("=")
        if key.strip() in ("name", "storage_path"):
            raw[key.strip()] = value
            extra_overrides.remove(item)
    cfg = config_from_dict(SweepConfig, raw, source=str(path))
    check_run_dir(cfg.storage_path, cfg.name, f"{path}: name")
    if not cfg.base:
        raise ConfigError(f"{path}: 'base' (the experiment YAML trials start from) is required")
    base_path = (path.parent / cfg.base).resolve()
    space = _check_space(space, str(path))
    sweep = Sweep(cfg, space, path, base_path, list(extra_overrides))
    base = sweep.trial_config({}, "probe")
    for key, spec in space.items():
        ((kind, values),) = spec.items()
        for value in _probe_values(kind, values):
            try:
                sweep.trial_config({key: value}, "probe")
            except ConfigError as err:
                raise ConfigError(
                    f"{path}: search_space.{key}: value {value!r} is invalid: {err}"
                ) from None
    from raycontrast.train.preflight import check_metric

    for name, what in sweep.metrics():
        try:
            check_metric(name, base, what)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
    if cfg.scheduler.type == "asha" and cfg.scheduler.time_attr == "iteration":
        max_t = cfg.scheduler.max_t or base.train.iterations
        if cfg.scheduler.grace_period > max_t:
            raise ConfigError(
                f"{path}: scheduler.grace_period={cfg.scheduler.grace_period} exceeds max_t={max_t}"
            )
    return sweep


def check_sweep(sweep: Sweep, address: str | None = None, cluster: bool = True) -> Any:
    """Every check of a sweep before any trial starts (``raycontrast tune --dry-run`` and
    :func:`run_sweep`): the base trial's :func:`~raycontrast.train.preflight`
    (data, model on the meta device, storage), the metric, and the resources of one trial
    (``trial_cpus`` + its Train workers) against the cluster (``address`` / ``$RAY_ADDRESS`` when
    given, else what a local Ray instance would offer, without starting one).

    Returns:
        The base trial's :class:`~raycontrast.train.preflight.Preflight`.
    """
    from raycontrast.train._cluster import check_address
    from raycontrast.train.preflight import check_capacity, preflight

    check_address(address)
    report = preflight(
        sweep.trial_config({}, "probe"),
        metrics=sweep.metrics(),
        driver_cpus=sweep.config.trial_cpus,
        cluster=False,
    )
    if cluster:
        check_capacity([report], address, sweep.config.trial_cpus)
    return report


def _trial(config: dict[str, Any], sweep: Sweep, cwd: str) -> None:
    """One sweep trial: its experiment, trained with metrics forwarded to Tune."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from raycontrast.train import run_training

    trial_id = tune.get_context().get_trial_id()
    cfg = absolute_paths(sweep.trial_config(config, trial_id), cwd)
    run_training(cfg, callbacks=[TuneReportCallback()])


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
    from raycontrast.train._cluster import connect

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
    results_dir = storage.join(sweep.root, "results")
    finish_group(group, results_dir)
    raise_if_incomplete(
        sweep.root, f"sweep {cfg.name!r} ({path})", results_dir, expected=sweep.num_trials()
    )
    return summary


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
