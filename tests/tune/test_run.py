"""Sweeps end to end on Ray Tune (tiny synthetic trials, one Train worker each)."""

import os
import signal
import subprocess
import sys
import threading

import pandas as pd
import pytest

from raycontrast.config import load_config
from raycontrast.train import run_training
from raycontrast.tune import run_sweep
from tests.train.conftest import logged_iterations, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_sweep_survives_a_failing_trial_and_an_interrupted_driver(
    ray_session, write_sweep, tmp_path
):
    # Both trials run at once. One trial's Train run dies at iteration 3 (train.max_failures=0), so
    # Tune retries the trial, which resumes from its own checkpoint. The sweep's driver is interrupted
    # when the other trial has finished (the retried one is still running: it needs a second start)
    # and `--resume` finishes the sweep.
    path = write_sweep(
        "two",
        {"debug.fail_at_iteration": {"grid": [3, -1]}},
        "train.max_failures=0",
        "train.cpus_per_worker=0.5",  # two trials of 0.25 + 0.5 CPUs fit on 2 cores
        max_failures=1,
        max_concurrent_trials=2,
    )
    env = dict(
        os.environ, PYTHONUNBUFFERED="1", RAY_ADDRESS=ray_session.get_runtime_context().gcs_address
    )
    cmd = [sys.executable, "-m", "raycontrast.cli", "tune", str(path)]
    root = tmp_path / "sweeps" / "two"
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        # interrupt once Tune has recorded a trial as completed (not merely its run as finished:
        # a trial whose function has not returned yet reruns on resume, which costs a Train start)
        wait_for(lambda: any(" completed after " in line for line in lines), 300, "a trial")
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    out = "".join(lines)
    finished = [p.parent for p in root.glob("runs/*/summary.json")]
    assert len(finished) == 1, out[-3000:]
    assert not (finished[0] / "debug" / "worker_failed_at_3").exists()  # the retried one is left

    resumed = subprocess.run(
        [*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    table = pd.read_parquet(root / "results" / "trials.parquet")
    assert sorted(table["debug.fail_at_iteration"]) == [-1, 3]
    assert list(table["status"]) == ["completed", "completed"]
    assert (table["iterations"] == 4).all()
    assert pd.read_csv(root / "results" / "trials.csv").shape[0] == 2
    assert (root / "results" / "best_mIoU_vs_debug_fail_at_iteration.png").exists()
    failed = [d for d in (root / "runs").iterdir() if (d / "debug" / "worker_failed_at_3").exists()]
    assert len(failed) == 1  # the failing trial did fail once ...
    for run_dir in (root / "runs").iterdir():
        assert logged_iterations(run_dir) == [1, 2, 3, 4]  # ... and resumed without repeats

    best_path = root / "results" / "best_config.yaml"
    best = load_config(best_path)  # validates
    best_row = table.iloc[0]
    assert best.debug.fail_at_iteration == best_row["debug.fail_at_iteration"]
    # the reproduced setup trains (here briefly, in Train's local mode)
    short = load_config(
        best_path,
        [f"storage_path={tmp_path / 'best'}", "train.num_workers=0", "train.iterations=2"],
    )
    assert run_training(short)["iterations"] == 2


def test_asha_stops_a_clearly_worse_trial(ray_session, write_sweep, tmp_path):
    path = write_sweep(
        "asha",
        {"optim.lr": {"grid": [0.02, 1.0e-9]}},  # the second trial barely moves from its init
        "train.iterations=8",
        "train.eval_every=2",
        # one rung at iteration 6, where the working trial has left its initial mIoU behind
        scheduler={"type": "asha", "grace_period": 6, "max_t": 12, "reduction_factor": 2},
    )
    run_sweep(str(path))
    table = pd.read_parquet(tmp_path / "sweeps" / "asha" / "results" / "trials.parquet")
    status = dict(zip(table["optim.lr"], table["status"]))
    assert status == {0.02: "completed", 1.0e-9: "stopped early"}
    assert int(table.loc[table["optim.lr"] == 1.0e-9, "iterations"].iloc[0]) < 8
