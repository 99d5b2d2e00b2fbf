"""Exit codes of interrupts and closed pipes, in a fresh interpreter (signals reach the real process)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
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


@pytest.mark.slow
def test_ctrl_c_after_the_first_checkpoint_exits_130_and_says_how_to_resume(tmp_path):
    from tests.train.conftest import TINY

    argv = [*TINY, "train.num_workers=1", "train.iterations=400", "train.eval_every=2",
            "contrast.memory=none", "name=stopme", f"storage_path={tmp_path}"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "raycontrast.cli", "train", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=_env(),
        cwd=tmp_path,
    )
    snapshot = tmp_path / "stopme" / "checkpoint_manager_snapshot.json"
    deadline = time.monotonic() + 240
    while not snapshot.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert snapshot.exists(), "no checkpoint was registered in time"
    proc.send_signal(signal.SIGINT)
    try:
        err = proc.communicate(timeout=120)[1].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("raycontrast: stopme: interrupted")]
    assert len(lines) == 1, err[-3000:]
    assert "Rerun the same command to resume from" in lines[0] and "checkpoint_" in lines[0]
