"""Shared Tune plumbing of sweeps and studies (raycontrast/tune/_trials.py)."""

import os
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from raycontrast.train.launcher import TrainingInterrupted
from raycontrast.tune._trials import fit_trials, raise_if_interrupted


def _grid(done: int, errors: int, running: int) -> list[SimpleNamespace]:
    """What ``Tuner.fit`` returns after a Ctrl-C, as far as it matters here: Tune marks the trials it
    was running TERMINATED too, so only an error or a ``done`` last result says a trial ended."""
    return (
        [SimpleNamespace(error=None, metrics={"iteration": 4, "done": True})] * done
        + [SimpleNamespace(error=RuntimeError("boom"), metrics={"iteration": 2})] * errors
        + [SimpleNamespace(error=None, metrics={"iteration": 2})] * running
    )


@pytest.mark.parametrize(
    "done, errors, running, expected, stopped",
    [
        (6, 0, 0, 6, False),  # every trial ended
        (4, 2, 0, 6, False),  # errors are failures (exit 1 elsewhere), not an interrupt
        (5, 0, 1, 6, True),  # one trial was still running when Tune returned
        (4, 0, 0, 6, True),  # Tune creates trials lazily: two were never created
        (4, 0, 0, 0, False),  # a sweep: only the created trials count
    ],
)
def test_an_early_return_of_tune_is_an_interrupt(done, errors, running, expected, stopped):
    grid = _grid(done, errors, running)
    if not stopped:
        raise_if_interrupted(grid, "study 's'", "/r", expected=expected)
        return
    with pytest.raises(
        TrainingInterrupted, match=r"study 's': interrupted .* /r\. Rerun .*--resume"
    ):
        raise_if_interrupted(grid, "study 's'", "/r", expected=expected)


def _counting(config, marks: str):
    from ray import tune

    for i in range(config["steps"]):
        tune.report({"iteration": i + 1})
        Path(marks, f"{config['steps']}-{i}").touch()
        time.sleep(config["sleep"])


def _fit(tmp_path, name: str, steps: list[int], sleep: float):
    """A Tune run of ``_counting`` trials through the plumbing sweeps and studies use."""
    from ray import tune

    marks = tmp_path / f"{name}-marks"
    marks.mkdir()
    return fit_trials(
        _counting,
        root=str(tmp_path / name),
        name=name,
        storage_path=str(tmp_path),
        param_space={"steps": tune.grid_search(steps), "sleep": sleep},
        trial_cpus=0.25,
        metric="iteration",
        mode="max",
        max_concurrent_trials=2,
        max_failures=0,
        resume=False,
        marks=str(marks),
    )


def test_a_real_tune_run_stopped_by_a_signal_is_an_interrupt(ray_session, tmp_path):
    """Against Ray itself: a run stopped (SIGUSR1, which Tune treats as Ctrl-C) while a trial trains
    is an interrupt, though Tune reports that trial TERMINATED (``grid.num_terminated`` is 2 here).
    That a run which ends is not one, the study and sweep end-to-end tests show."""

    def interrupt():  # once the short trial has ended and the long one trains
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            marks = tmp_path / "stopped-marks"
            if (marks / "1-0").exists() and (marks / "10000-3").exists():
                time.sleep(1.0)  # the short trial's last result reaches Tune
                break
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGUSR1)

    threading.Thread(target=interrupt, daemon=True).start()
    grid = _fit(tmp_path, "stopped", [1, 10000], 0.05)
    assert sorted(r.metrics.get("done", False) for r in grid) == [False, True]
    with pytest.raises(TrainingInterrupted, match=r"with 1 of 2 trials unfinished"):
        raise_if_interrupted(grid, "sweep 'stopped'", "/r")
