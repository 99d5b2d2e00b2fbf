"""User errors stop a run at once; infrastructure failures are retried; slow starts are waited for."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from ray.train import FailureConfig
from ray.train.v2._internal.exceptions import UserExceptionWithTraceback
from ray.train.v2._internal.execution.failure_handling import FailureDecision
from ray.train.v2.api.exceptions import ControllerError, WorkerGroupError

from raycontrast.config import ConfigError
from raycontrast.data import DatasetError
from raycontrast.errors import UserError, is_user_error
from raycontrast.models import CheckpointError, ModelError
from raycontrast.train.failures import (
    DEFAULT_START_TIMEOUT_S,
    START_TIMEOUT_ENV,
    Trainer,
    UserErrorPolicy,
    patient_start,
    user_failure,
)
from tests.data.trees import write_png
from tests.test_bad_inputs import DRY, assert_kept, run_cli, snapshot


class _TaskError(Exception):
    """Stands for Ray's task errors, which carry the user's exception as ``cause``."""

    def __init__(self, cause):
        super().__init__("wrapped")
        self.cause = cause


@pytest.mark.parametrize(
    "exc",
    [
        DatasetError("a.png: corrupt"),
        ConfigError("k"),
        ModelError("w"),
        CheckpointError("c"),
        UserExceptionWithTraceback(DatasetError("x.png"), "Traceback ..."),
        _TaskError(ConfigError("deep")),
    ],
)
def test_user_errors_are_raised_at_once(exc):
    assert is_user_error(exc)
    policy = UserErrorPolicy(FailureConfig(max_failures=3))
    error = WorkerGroupError("boom", {1: RuntimeError("collateral"), 0: exc})
    assert policy.make_decision(error) == FailureDecision.RAISE
    rank, found = user_failure(error)
    assert rank == 0 and isinstance(found, UserError)


def test_infrastructure_failures_are_retried_as_before():
    policy = UserErrorPolicy(FailureConfig(max_failures=2))
    lost = WorkerGroupError("lost", {0: RuntimeError("node died"), 1: OSError("reset")})
    decisions = [policy.make_decision(lost) for _ in range(3)]
    assert decisions == [FailureDecision.RETRY, FailureDecision.RETRY, FailureDecision.RAISE]
    assert user_failure(lost) is None and not is_user_error(ValueError("plain"))
    assert policy.make_decision(ControllerError(DatasetError("d"))) == FailureDecision.RAISE


def test_the_trainer_installs_the_policy(monkeypatch):
    from ray.train.torch import TorchTrainer

    seen = {}
    monkeypatch.setattr(
        TorchTrainer, "_initialize_and_run_controller", lambda self, **kw: seen.update(kw)
    )
    trainer = Trainer.__new__(Trainer)
    trainer.run_config = type("RC", (), {"failure_config": FailureConfig(max_failures=1)})()
    trainer._initialize_and_run_controller(failure_policy=object())
    assert isinstance(seen["failure_policy"], UserErrorPolicy)
    assert seen["failure_policy"].failure_config.max_failures == 1


def test_slow_starts_are_waited_for_unless_the_user_chose():
    env = {}
    assert patient_start(env) == DEFAULT_START_TIMEOUT_S >= 600
    assert env[START_TIMEOUT_ENV] == f"{DEFAULT_START_TIMEOUT_S:g}"
    env = {START_TIMEOUT_ENV: "45"}
    assert patient_start(env) == 45.0 and env[START_TIMEOUT_ENV] == "45"


def test_failure_lines_are_not_truncated():
    from raycontrast.train.launcher import _one_line

    message = "x.png: " + "word " * 200 + "END"
    assert _one_line(RuntimeError(message)).endswith("END")


def test_user_error_is_reraised_in_the_driver():
    from raycontrast.train.launcher import _raise_user_error

    original = DatasetError("/d/m.png: label values 9 are not valid " + "x" * 500)
    with pytest.raises(DatasetError) as err:
        _raise_user_error(WorkerGroupError("w", {0: UserExceptionWithTraceback(original, "tb")}))
    assert str(err.value) == str(original)
    _raise_user_error(WorkerGroupError("w", {0: RuntimeError("lost")}))  # not a user error: no-op


# ------------------------------------------------------------ caught by preflight, in the driver


def test_checkpoint_without_state_is_refused_by_dry_run(capsys, tmp_path):
    run = tmp_path / "runs" / "synthetic"
    (run / "checkpoint_000002").mkdir(parents=True)
    snapshot_file = run / "checkpoint_manager_snapshot.json"
    snapshot_file.write_text(
        json.dumps({"latest_checkpoint_result": {"checkpoint_dir_name": "checkpoint_000002"}})
    )
    before = snapshot(tmp_path)
    start = time.perf_counter()
    code, msg = run_cli(capsys, *DRY, f"storage_path={tmp_path / 'runs'}")
    assert code == 2, msg
    assert f"{run / 'checkpoint_000002'}: the checkpoint a rerun of 'synthetic' resumes from" in msg
    assert "has no state.pt" in msg and str(snapshot_file) in msg
    assert time.perf_counter() - start < 60
    assert_kept(before, tmp_path)


@pytest.mark.parametrize("kind", ["list", "text"])
def test_pretrained_file_that_is_not_a_state_dict(capsys, tmp_path, kind):
    weights = tmp_path / "w.pth"
    if kind == "list":
        torch.save([1, 2, 3], weights)
    else:
        weights.write_text("not weights")
    before = snapshot(weights)
    code, msg = run_cli(
        capsys, *DRY, f"storage_path={tmp_path / 'runs'}", f"model.pretrained={weights}"
    )
    assert code == 2 and str(weights) in msg and "Traceback" not in msg, msg
    assert_kept(before, weights)


def test_pretrained_hub_without_network_or_cache(capsys, tmp_path, monkeypatch):
    import socket

    from raycontrast.models import hub

    def refuse(*args, **kwargs):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(hub, "cached_weights", lambda name: None)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    code, msg = run_cli(capsys, *DRY, f"storage_path={tmp_path / 'runs'}", "model.pretrained=true")
    assert code == 2, msg
    assert "model.pretrained=true downloads the ImageNet weights of 'resnet18'" in msg
    assert "Network is unreachable; no cached copy either" in msg
    error = next(line for line in msg.splitlines() if line.startswith("raycontrast: error:"))
    assert error.rstrip().endswith("model.pretrained=/path/to/file")  # whole, not cut off
    monkeypatch.setattr(hub, "cached_weights", lambda name: "/cache/model.safetensors")
    assert hub.check_hub_weights("resnet18") == "cached"


# --------------------------------------------------------------------------- one end-to-end run


@pytest.mark.ray
@pytest.mark.slow
def test_a_data_error_in_a_worker_is_not_retried(ray_session, capsys, tmp_path):
    """A mask corrupt past its header, not among the sampled files, fails inside the worker: the run
    stops at the first attempt (one worker group) with the file named, though max_failures=2."""
    from raycontrast.config import DEFAULT_EXPERIMENT
    from raycontrast.train._elastic import worker_groups
    from tests.train.conftest import TINY

    root = tmp_path / "D"
    rng = np.random.default_rng(0)
    for i in range(6):
        write_png(
            root / "images" / "train" / f"i{i}.png", rng.integers(0, 255, (64, 64, 3), np.uint8)
        )
        write_png(root / "masks" / "train" / f"i{i}.png", rng.integers(0, 3, (64, 64), np.uint8))
    (root / "classes.txt").write_text("a\nb\nc\n")
    bad = root / "masks" / "train" / "i5.png"
    bad.write_bytes(bad.read_bytes()[:-40])  # header intact, pixel data cut
    before = snapshot(root)
    code, msg = run_cli(
        capsys, "train", DEFAULT_EXPERIMENT, *TINY, "train.num_workers=1", "train.max_failures=2",
        "data.dataset=folder", f"data.root={root}", "data.val_split=train", "data.check_masks=0",
        "train.batch_size=6", "contrast.memory=none", "name=baddata", f"storage_path={tmp_path}",
    )  # fmt: skip
    assert code == 2, msg
    (line,) = [ln for ln in msg.splitlines() if ln.startswith("raycontrast: dataset error:")]
    assert f"{bad}: corrupt or unreadable label map" in line, msg
    assert len(worker_groups(str(tmp_path / "baddata"))) == 1  # no retry
    assert_kept(before, root)


@pytest.mark.parametrize("supported", [True, False])
def test_the_policy_is_injected_only_where_ray_has_the_hook(monkeypatch, caplog, supported):
    """Ray 2.60 has the private hook (pinned here); a Ray without it keeps its own policy, warned."""
    from ray.train.torch import TorchTrainer

    from raycontrast.train import failures

    assert failures.POLICY_SUPPORTED  # the installed Ray: the hook this project was tested with
    monkeypatch.setattr(failures, "POLICY_SUPPORTED", supported)
    seen = {}
    monkeypatch.setattr(
        TorchTrainer, "_initialize_and_run_controller", lambda self, **kw: seen.update(kw)
    )
    trainer = object.__new__(Trainer)
    trainer.run_config = type("RC", (), {"failure_config": FailureConfig(max_failures=2)})()
    with caplog.at_level("WARNING", logger=failures.__name__):
        trainer._initialize_and_run_controller(other=1)
    assert seen["other"] == 1
    assert isinstance(seen.get("failure_policy"), UserErrorPolicy) == supported
    assert ("failure-policy hook" in caplog.text) != supported
