"""Shared Tune plumbing of sweeps and studies (raycontrast/tune/_trials.py)."""

from types import SimpleNamespace

import pytest

from raycontrast.train.launcher import TrainingInterrupted
from raycontrast.tune._trials import raise_if_interrupted


class _Grid(SimpleNamespace):
    def __len__(self):
        return self.trials


@pytest.mark.parametrize(
    "trials, terminated, errors, expected, stopped",
    [
        (6, 6, 0, 6, False),  # every trial ended
        (6, 4, 2, 6, False),  # errors are failures (exit 1 elsewhere), not an interrupt
        (6, 5, 0, 6, True),  # one trial still running or pending when Tune returned
        (4, 4, 0, 6, True),  # Tune creates trials lazily: two were never created
        (4, 4, 0, 0, False),  # a sweep: only the created trials count
    ],
)
def test_an_early_return_of_tune_is_an_interrupt(trials, terminated, errors, expected, stopped):
    grid = _Grid(trials=trials, num_terminated=terminated, num_errors=errors)
    if not stopped:
        raise_if_interrupted(grid, "study 's'", "/r", expected=expected)
        return
    with pytest.raises(
        TrainingInterrupted, match=r"study 's': interrupted .* /r\. Rerun .*--resume"
    ):
        raise_if_interrupted(grid, "study 's'", "/r", expected=expected)
