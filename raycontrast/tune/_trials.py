"""Tune plumbing shared by sweeps and studies: one trial layout, trial resources, retries, resume."""

from __future__ import annotations

from typing import Any

from raycontrast import storage
from raycontrast.config import ExperimentConfig

__all__ = ["absolute_paths", "concurrency", "fit_trials", "raise_if_incomplete"]


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


def saved_trials(root: str) -> list[tuple[str, str]]:
    """``(status, name)`` of every trial in the experiment state Tune saved under ``root`` last
    (``name``: a study's run, else Tune's trial name).

    Not what ``Tuner.fit`` returns: on Ctrl-C Tune saves its state, then marks the trials it was
    running TERMINATED while it stops them, and a trial restored by ``--resume`` lost the ``done``
    flag of its last result. The saved state is what a resume continues from.
    """
    from ray.tune import ExperimentAnalysis

    trials = ExperimentAnalysis(storage.resolve(root)).trials
    return [(t.status, str((t.config or {}).get("run") or t)) for t in trials]


def unfinished_trials(statuses: list[str], expected: int = 0) -> int:
    """Trials that neither finished (TERMINATED) nor failed for good (ERROR); ``expected`` counts
    trials Tune had not created yet (it creates them lazily), 0 for only the created ones."""
    ended = sum(1 for s in statuses if s in ("TERMINATED", "ERROR"))
    return max(len(statuses), expected) - ended


def raise_if_incomplete(root: str, what: str, results_dir: str, expected: int = 0) -> None:
    """Raise when Tune returned before every trial succeeded, so that the command does not exit 0.

    On Ctrl-C Tune saves its state and *returns* (it does not raise): without this a stopped study
    or sweep would exit 0 and a script running several would go on to the next. A trial that
    failed after its retries is left out of the results just as silently.

    Args:
        root: the Tune experiment directory (:func:`fit_trials`' ``root``).
        what: names the study / sweep in the message.
        results_dir: where the partial results were written.
        expected: trials the grid holds when complete; 0: only count the created ones.

    Raises:
        ~raycontrast.train.TrainingInterrupted: some trials had not ended (exit 130).
        ~raycontrast.train.TrialsFailed: every trial ended, some in error (exit 1).
    """
    from raycontrast.train.launcher import TrainingInterrupted, TrialsFailed

    try:
        trials = saved_trials(root)
    except Exception as err:  # Tune only logs a failed save of its state; say what that means
        print(
            f"raycontrast: {what}: cannot read the state Tune saved in {root} ({err}); whether "
            "every trial ended is unknown: check the results, and rerun with --resume if not",
            flush=True,
        )
        return
    total = max(len(trials), expected)
    unfinished = unfinished_trials([status for status, _ in trials], expected)
    if unfinished > 0:
        raise TrainingInterrupted(
            f"{what}: interrupted (Ctrl-C) with {unfinished} of {total} trials "
            f"unfinished; partial results in {results_dir}. Rerun the same command with --resume "
            "to continue: finished trials are kept, the others resume from their last checkpoint"
        )
    failed = sorted(name for status, name in trials if status == "ERROR")
    if failed:
        raise TrialsFailed(
            f"{what}: {len(failed)} of {total} trials failed after their retries "
            f"({', '.join(failed)}); the results in {results_dir} lack them. Each one's error is "
            f"in its trial folder under {root} (error.txt); fix the cause and rerun the same "
            "command with --resume: finished trials are kept, the failed ones are retried"
        )


def absolute_paths(cfg: ExperimentConfig, cwd: str) -> ExperimentConfig:
    """Relative dataset and weight paths made absolute against ``cwd`` (the command's directory).

    Tune runs each trial in its own directory, where ``data.root=data/mri`` would name nothing.
    """
    import os

    def fix(path: str) -> str:
        if not path or storage.is_uri(path) or os.path.isabs(path):
            return path
        return os.path.normpath(os.path.join(cwd, os.path.expanduser(path)))

    cfg.data.root = fix(cfg.data.root)
    cfg.data.parquet_dir = fix(cfg.data.parquet_dir)
    if isinstance(cfg.model.pretrained, str) and cfg.model.pretrained.lower() not in (
        "",
        "true",
        "false",
        "none",
        "null",
    ):
        cfg.model.pretrained = fix(cfg.model.pretrained)
    return cfg
