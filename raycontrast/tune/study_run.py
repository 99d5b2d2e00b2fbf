"""Run a study: every arm x regime x seed as a Tune trial, then its results (tables, tests, plots).

Loading and checking a study live in :mod:`raycontrast.tune.study`, its analysis in
:mod:`raycontrast.tune._study_results`.
"""

from __future__ import annotations

from typing import Any

import yaml

from raycontrast import storage
from raycontrast.errors import ConfigError
from raycontrast.tune._study_results import load_record, write_results
from raycontrast.tune._trials import concurrency, fit_trials, raise_if_incomplete
from raycontrast.tune.study import Cell, Study, check_study, load_study, per_run_cpus, study_dict

__all__ = ["finished", "run_study"]


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
    run_dir = study.run_dir(cell)
    if storage.is_uri(run_dir) or not storage.exists(storage.join(run_dir, "summary.json")):
        return False
    record = load_record(run_dir)
    its = [r["iteration"] for r in (record.val if record else []) if r.get("iteration") is not None]
    cfg = study.run_config(cell)
    if cfg.data.test_split and not storage.exists(storage.join(run_dir, "test.json")):
        return False  # rerun: it resumes at its last iteration and evaluates the test split
    return bool(its) and max(its) >= cfg.train.iterations


def _check_same_grid(study: Study) -> None:
    """Refuse ``--resume`` of a study whose arms, regimes or seeds changed since it started.

    Tune resumes the grid it saved, so a run added to the file would never start (and one removed
    would still run); the study would stay unfinished however often it is resumed.

    Raises:
        ConfigError: naming the study file, what was added and removed, and what to do.
    """
    saved_path = storage.join(study.results_dir, "study.yaml")
    if not storage.exists(saved_path):
        return
    saved = yaml.safe_load(storage.read_bytes(saved_path)) or {}
    now = study_dict(study)
    changes = []
    for key in ("arms", "regimes", "seeds"):
        before, after = set(saved.get(key) or ()), set(now[key] or ())
        if before != after:
            added, removed = sorted(after - before, key=str), sorted(before - after, key=str)
            changes.append(f"{key}: added {added}, removed {removed}")
    if changes:
        raise ConfigError(
            f"{study.path}: cannot --resume study {study.config.name!r}: its grid changed since it "
            f"started ({'; '.join(changes)}; the started grid is in {saved_path}). Resume runs "
            "only the grid it started with: restore the file to resume, or start the changed "
            "study under a new name (name=...)"
        )


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

    from raycontrast.train._cluster import connect

    study = load_study(path, list(overrides))
    if analyse_only:
        return write_results(study)
    cfg = study.config
    check_study(study, address)  # a mistake in any arm fails here, before any run starts
    if resume:
        _check_same_grid(study)
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
    raise_if_incomplete(
        study.root, f"study {cfg.name!r} ({study.path})", study.results_dir, expected=len(runs)
    )
    return results
