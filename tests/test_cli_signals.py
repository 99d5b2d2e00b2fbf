"""A closed pipe is quiet, in a fresh interpreter (Ctrl-C: tests/train/test_reliability.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


@pytest.mark.parametrize("argv", [["config", "--keys"], ["config"]])
def test_a_closed_pipe_is_quiet(argv):
    proc = subprocess.Popen(
        [sys.executable, "-m", "raycontrast.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
        cwd=REPO,
    )
    proc.stdout.close()  # the reader went away, as `| head` does after its lines
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
