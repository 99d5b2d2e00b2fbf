"""Faults cost minutes, not runs: non-finite losses and driver interrupts (worker and bank-actor
deaths are exercised in test_train.py)."""

import os
import re
import signal
import subprocess
import sys

import pytest

from raycontrast.train import NonFiniteLoss, run_training
from tests.train.conftest import logged_iterations, read_rows, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_nonfinite_loss_stops_naming_the_term_or_skips_the_step(ray_session, tiny, policy):
    cfg = tiny(
        f"nan-{policy}",
        "train.num_workers=0",  # local mode: the loop runs in this process
        "debug.nonfinite_at_iteration=3",
        f"train.on_nonfinite={policy}",
    )
    if policy == "stop":
        with pytest.raises(
            NonFiniteLoss, match=r"non-finite loss in iteration 3 \(terms: contrast\)"
        ):
            run_training(cfg)
    else:
        summary = run_training(cfg)
        assert summary["iterations"] == 4 and summary["skipped_steps"] == 1
        # the skipped step (iteration 3) enqueued nothing; the others did
        entries = [int(r["bank_entries"]) for r in read_rows(summary["run_dir"])]
        assert entries[0] < entries[1] == entries[2] < entries[3], entries
        assert summary["bank"]["dropped_records"] == 0


def test_bf16_autocast_trains(ray_session, tiny):
    summary = run_training(
        tiny(
            "bf16",
            "train.num_workers=0",
            "train.amp=bf16",
            "train.iterations=2",
            "contrast.memory=none",
        )
    )
    assert summary["iterations"] == 2 and summary["mIoU"] is not None


def test_interrupted_driver_resumes_when_rerun(ray_session, tmp_path):
    from tests.train.conftest import TINY

    storage_path = tmp_path / "runs"
    cmd = [
        sys.executable, "-m", "raycontrast.cli", "train", "experiments/synthetic.yaml", *TINY,
        "train.iterations=40", "train.num_workers=1", "train.batch_size=2", "train.eval_every=3",
        f"storage_path={storage_path}", "name=sigint",
    ]  # fmt: skip
    # the driver attaches to the session's Ray instance (as under `ray job submit`), saving a start
    env = dict(
        os.environ, PYTHONUNBUFFERED="1", RAY_ADDRESS=ray_session.get_runtime_context().gcs_address
    )
    run_dir = storage_path / "sigint"
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        # Ray Train resumes from checkpoints its controller has registered in this snapshot
        snapshot = run_dir / "checkpoint_manager_snapshot.json"
        wait_for(snapshot.exists, 240, "a registered checkpoint")
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    # exit 130 with one line of ours that names the checkpoint the rerun resumes from
    assert proc.returncode == 130, out
    (line,) = [ln for ln in out.splitlines() if ln.startswith("raycontrast: sigint: interrupted")]
    assert f"Rerun the same command to resume from {run_dir}/checkpoint_" in line, out
    done_before = max(logged_iterations(run_dir))
    assert done_before < 40
    cmd[cmd.index("train.iterations=40")] = "train.iterations=5"
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    resumed = re.search(r"resumed from iteration (\d+)", rerun.stdout + rerun.stderr)
    assert resumed, rerun.stdout + rerun.stderr
    assert logged_iterations(run_dir) == list(range(1, 6))
    # the rerun's new bank actor was loaded from the checkpoint: the first step after resuming adds
    # to the entries held at the checkpoint (a fresh bank would hold one step's entries)
    at = int(resumed.group(1))
    entries = [int(r["bank_entries"]) for r in read_rows(run_dir)]
    assert 0 < entries[at - 1] < entries[at]
