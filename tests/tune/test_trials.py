"""Shared Tune plumbing of sweeps and studies (raycontrast/tune/_trials.py)."""

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from raycontrast.train import TrainingInterrupted, TrialsFailed
from raycontrast.tune._trials import fit_trials, raise_if_incomplete, unfinished_trials


@pytest.mark.parametrize(
    "statuses, expected, unfinished",
    [
        (["TERMINATED"] * 6, 6, 0),  # every trial ended
        (["TERMINATED"] * 4 + ["ERROR"] * 2, 6, 0),  # failed, not interrupted
        (["TERMINATED"] * 5 + ["RUNNING"], 6, 1),  # one trial was still running when Tune returned
        (["TERMINATED"] * 4 + ["PENDING"], 6, 2),  # one waiting; one never created (Tune is lazy)
        (["TERMINATED"] * 4, 0, 0),  # a sweep: only the created trials count
    ],
)
def test_unfinished_trials_counts_what_neither_finished_nor_failed(statuses, expected, unfinished):
    assert unfinished_trials(statuses, expected) == unfinished


def _counting(config, marks: str):
    from ray import tune

    for i in range(config["steps"]):
        tune.report({"iteration": i + 1})
        Path(marks, f"{config['steps']}-{i}").touch()
        time.sleep(config["sleep"])


def _fit(fn, tmp_path, name: str, param_space: dict, resume: bool = False, **params):
    """A Tune run of ``fn`` trials, two at once, through the plumbing sweeps and studies use."""
    return fit_trials(
        fn,
        root=str(tmp_path / name),
        name=name,
        storage_path=str(tmp_path),
        param_space=param_space,
        trial_cpus=0.25,
        metric="iteration",
        mode="max",
        max_concurrent_trials=2,
        max_failures=0,
        resume=resume,
        **params,
    )


def _fit_counting(tmp_path, name: str, steps: list[int], sleep: float, resume: bool = False):
    from ray import tune

    marks = tmp_path / f"{name}-marks"
    marks.mkdir(exist_ok=True)
    space = {"steps": tune.grid_search(steps), "sleep": sleep}
    return _fit(_counting, tmp_path, name, space, resume=resume, marks=str(marks))


def test_a_real_tune_run_stopped_by_a_signal_is_an_interrupt_until_resumed(ray_session, tmp_path):
    """Against Ray itself: a run stopped (SIGUSR1, which Tune treats as Ctrl-C) while a trial trains
    is an interrupt, though ``Tuner.fit`` reports that trial TERMINATED; once resumed to the end it
    is not, though the trial that had finished before the stop comes back without its ``done``."""

    root = tmp_path / "stopped"
    test_over = threading.Event()

    def interrupt():  # once the short trial has ended and the long one trains
        marks = tmp_path / "stopped-marks"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not test_over.is_set():
            if (marks / "1-0").exists() and (marks / "200-3").exists():
                # time for Tune to take the short trial's return (nothing on disk says when it
                # has); the long one has about 20 s left
                time.sleep(3.0)
                break
            time.sleep(0.1)
        if not test_over.is_set():
            os.kill(os.getpid(), signal.SIGUSR1)

    threading.Thread(target=interrupt, daemon=True).start()
    try:
        grid = _fit_counting(tmp_path, "stopped", [1, 200], 0.1)
    finally:
        test_over.set()
    assert grid.num_terminated == 2  # what Tune returns says nothing was cut short
    with pytest.raises(TrainingInterrupted, match=r"with 1 of 2 trials unfinished"):
        raise_if_incomplete(str(root), "sweep 'stopped'", "/r")

    resumed = _fit_counting(tmp_path, "stopped", [1, 200], 0.0, resume=True)
    assert sorted(r.metrics.get("iteration") for r in resumed) == [1, 200]
    raise_if_incomplete(str(root), "sweep 'stopped'", "/r")  # ended: no interrupt


def _failing(config):
    from ray import tune

    if config["run"] == "bad":
        raise ValueError("this run fails")
    tune.report({"iteration": 1})


def test_a_trial_that_failed_for_good_fails_the_command(ray_session, tmp_path, capsys, monkeypatch):
    """Against Ray itself: every trial ended, one in error after its retries; that is not an
    interrupt, but the command must not exit 0 with a trial missing from the results."""
    from ray import tune

    from raycontrast.cli import main

    root = tmp_path / "failing"
    _fit(_failing, tmp_path, "failing", {"run": tune.grid_search(["good", "bad"])})
    with pytest.raises(TrialsFailed, match=r"1 of 2 trials failed after their retries \(bad\)"):
        raise_if_incomplete(str(root), "study 'failing'", "/r", expected=2)
    assert len(list(root.rglob("error.txt"))) == 1  # where the message sends the user

    def run_study(*args, **kwargs):  # the study's last step, on this Tune state
        raise_if_incomplete(str(root), "study 'failing'", "/r", expected=2)

    import raycontrast.tune

    monkeypatch.setattr(raycontrast.tune, "run_study", run_study)
    assert main(["study", str(tmp_path / "study.yaml"), "--verbose"]) == 1
    assert "failed after their retries (bad)" in capsys.readouterr().err
