"""The console filter: Ray's known-harmless lines hidden, trouble and raycontrast's own lines kept."""

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from raycontrast.console import LineFilter, hidden, install

REPO = Path(__file__).resolve().parents[1]

# Lines as Ray 2.60 printed them on this machine (shortened where they repeat).
NOISE = [
    "(RayTrainWorker pid=4242) Reporting training result 1: TrainingReport(checkpoint=None, "
    "metrics={'iteration': 2, 'mIoU': 0.12}, validation_spec=None) from rank 1",
    "(RayTrainWorker pid=4242) Matplotlib is building the font cache; this may take a moment.",
    "(RayTrainWorker pid=4242) INFO font_manager.py:1639 -- generated new fontManager",
    "2026-12-03 16:32:49,023\tWARNING authentication_token_setup.py:85 -- Token authentication is "
    "enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out.",
    "(PlacementGroupCleaner pid=77) Failed to query Ray Train Controller actor state. State API may "
    "be temporarily unavailable. Continuing to monitor.",
    "(raylet) [2026-12-03 16:32:50,100 E 4242 4250] core_worker_process.cc:837: Failed to establish "
    "connection to the metrics exporter agent. Metrics will not be exported. Exporter agent status: "
    "RpcError: Running out of retries to initialize the metrics agent.",
]
KEPT = [
    "[tiny] it 2/4 | loss 2.1 (ce 2.0) | lr 1.0e-02 | 3.1 it/s | ETA 1s",
    "[tiny] eval at it 2: mIoU 12.00 | mAcc 20.00 | aAcc 50.00",
    "(RayTrainWorker pid=4242) Traceback (most recent call last):",
    "(RayTrainWorker pid=4242) RuntimeError: boom",
    "ERROR worker.py:2121 -- Unhandled error (suppress with 'RAY_IGNORE_UNHANDLED_ERRORS=1')",
    # a known line that also names an error is trouble, and shown
    "Reporting training result 3: TrainingReport(...) raised OSError: disk full",
]


@pytest.mark.parametrize("line", NOISE)
def test_known_noise_is_hidden(line):
    assert hidden(line)


@pytest.mark.parametrize("line", KEPT)
def test_own_lines_and_trouble_pass(line):
    assert not hidden(line)


def test_filter_stream_keeps_order_and_joins_partial_writes():
    sink = io.StringIO()
    stream = LineFilter(sink)
    text = "\n".join([KEPT[0], NOISE[0], KEPT[1], NOISE[3], KEPT[2]]) + "\n"
    for i in range(0, len(text), 7):  # Ray writes in arbitrary pieces
        stream.write(text[i : i + 7])
    stream.write("no newline yet")
    stream.flush()
    assert sink.getvalue() == "\n".join([KEPT[0], KEPT[1], KEPT[2]]) + "\nno newline yet"
    assert stream.dropped == 2


def test_install_filters_streams_and_log_records_and_verbose_shows_all(monkeypatch, capsys):
    import sys

    monkeypatch.delenv("RAYCONTRAST_VERBOSE", raising=False)
    monkeypatch.setattr(sys, "stdout", sys.stdout)
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    handler = logging.StreamHandler(io.StringIO())
    logger = logging.getLogger("ray.train")
    monkeypatch.setattr(logger, "handlers", [handler])
    assert install() is True
    print(NOISE[0])
    print(KEPT[0])
    logger.warning("Reporting training result 2: TrainingReport(metrics={}) from rank 0")
    logger.warning("Worker group failed")
    sys.stdout.flush()
    assert capsys.readouterr().out == KEPT[0] + "\n"
    assert handler.stream.getvalue() == "Worker group failed\n"
    monkeypatch.setattr(sys, "stdout", sys.__stdout__)
    monkeypatch.setenv("RAYCONTRAST_VERBOSE", "1")
    assert install() is False


@pytest.mark.ray
@pytest.mark.slow
def test_default_console_of_a_training_run_is_raycontrasts_own(ray_session, tmp_path):
    """A ``raycontrast train`` process while another Ray instance (the test session's) runs: its
    own instance, no Ray report lines, no traceback, and its placement groups freed."""
    from tests.train.conftest import TINY

    script = (
        "import sys, time, ray\n"
        "from raycontrast.cli import main\n"
        "rc = main(sys.argv[1:])\n"
        "for _ in range(40):\n"
        "    states = {g['state'] for g in ray.util.placement_group_table().values()}\n"
        "    if states <= {'REMOVED'}: break\n"
        "    time.sleep(0.5)\n"
        "print('PLACEMENT_GROUPS', sorted(states), flush=True)\n"
        "sys.exit(rc)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAYCONTRAST_VERBOSE")}
    env["PYTHONPATH"] = str(REPO)
    args = ["train", *TINY, "train.num_workers=1", "name=console"]
    args.append(f"storage_path={tmp_path / 'runs'}")
    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    for phase in ("starting Ray", "workers starting", "loading data", "eval at it 4", "done: mIoU"):
        assert phase in out, phase
    assert "Reporting training result" not in out
    assert "Traceback" not in out and "Found multiple active Ray instances" not in out
    assert "PLACEMENT_GROUPS ['REMOVED']" in out or "PLACEMENT_GROUPS []" in out
