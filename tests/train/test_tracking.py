"""Experiment tracking against real trackers: a local MLflow server (SQLite store) and W&B offline.

Skipped with the reason when the extra is not installed (``pip install raycontrast[mlflow]`` /
``[wandb]``; ``make test`` installs both through ``dev``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from raycontrast.config import ConfigError
from raycontrast.train.tracking import (
    IDS_FILE,
    MlflowTracker,
    Tracking,
    _Safe,
    check_trackers,
    flatten_params,
)

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` on 127.0.0.1 with a SQLite store and artifacts in a temp dir."""
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed (raycontrast[mlflow])")
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    exe = shutil.which("mlflow", path=os.path.dirname(sys.executable)) or "mlflow"
    proc = subprocess.Popen(
        [
            exe,
            "server",
            "--backend-store-uri",
            f"sqlite:///{root}/m.db",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=root,
        stdout=(root / "server.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240  # a loaded 2-core machine: the migrations take a while
    while True:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                log = (root / "server.log").read_text()[-2000:]
                pytest.fail(f"mlflow server did not start on {uri}:\n{log}")
            time.sleep(0.5)
    yield uri
    proc.terminate()
    proc.wait(timeout=30)


def _history(client, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def _artifacts(client, run_id: str, folder: str | None = None) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id, folder)}


@pytest.mark.ray
@pytest.mark.slow
def test_mlflow_run_logs_params_metrics_artifacts_and_resume_continues_it(
    ray_session, tiny, mlflow_server
):
    from mlflow.tracking import MlflowClient

    from raycontrast.train import run_training

    cfg = tiny(
        "tracked",
        "train.num_workers=1",
        f"log.mlflow.tracking_uri={mlflow_server}",
        "log.mlflow.experiment=tests",
    )
    summary = run_training(cfg)
    run_dir = Path(summary["run_dir"])
    run_id = json.loads((run_dir / IDS_FILE).read_text())["mlflow"]

    client = MlflowClient(mlflow_server)
    run = client.get_run(run_id)
    assert run.info.run_name == "tracked" and run.info.status == "FINISHED"
    # the resolved config as params
    assert run.data.params["model.backbone"] == "resnet18"
    assert run.data.params["train.iterations"] == "4"
    assert len(run.data.params) == len(flatten_params(cfg))
    # every metric the run writes: losses per logged iteration, evaluations, per-class IoU, bank
    assert sorted(_history(client, run_id, "train/loss")) == [1, 2, 3, 4]
    val_rows = {int(r["iteration"]): float(r["mIoU"]) for r in _csv(run_dir / "val.csv")}
    assert _history(client, run_id, "val/mIoU") == pytest.approx(val_rows)
    first_class = summary["per_class_IoU"] and next(iter(summary["per_class_IoU"]))
    assert set(_history(client, run_id, f"val/IoU/{first_class}")) == {2, 4}
    assert set(_history(client, run_id, "bank/pixel/fill")) == {2, 4}
    assert run.data.metrics["final/mIoU"] == pytest.approx(summary["mIoU"])
    # the summary and the PNGs
    assert "summary.json" in _artifacts(client, run_id)
    plots = {Path(p).name for p in _artifacts(client, run_id, "plots")}
    assert {"loss.png", "miou.png", "per_class_iou.png", "bank_health.png"} <= plots

    # a rerun with more iterations resumes the run, and the same tracked run
    cfg.train.iterations = 6
    run_training(cfg)
    assert json.loads((run_dir / IDS_FILE).read_text())["mlflow"] == run_id
    runs = client.search_runs(
        [run.info.experiment_id], filter_string="attributes.run_name = 'tracked'"
    )
    assert [r.info.run_id for r in runs] == [run_id]
    assert set(_history(client, run_id, "val/mIoU")) == {2, 4, 6}
    assert client.get_run(run_id).info.status == "FINISHED"


def _csv(path: Path) -> list[dict[str, str]]:
    import csv

    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.ray
@pytest.mark.slow
def test_wandb_offline_run_leaves_params_metrics_and_files(ray_session, tiny, monkeypatch):
    pytest.importorskip("wandb", reason="the wandb extra is not installed (raycontrast[wandb])")
    from raycontrast.train import run_training

    cfg = tiny("wb", "train.num_workers=1", "log.wandb.project=tests", "log.wandb.mode=offline")
    summary = run_training(cfg)
    run_dir = Path(summary["run_dir"])
    run_id = json.loads((run_dir / IDS_FILE).read_text())["wandb"]
    # one offline folder per process that wrote to the run (rank 0, then the driver), one run id
    folders = sorted((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(folders) == 2
    worker, driver = (_wandb_run(folder) for folder in folders)
    assert json.loads(worker["config"]["model.backbone"]) == "resnet18"
    assert json.loads(worker["config"]["train.iterations"]) == "4"  # params are text
    loss = {
        int(row["iteration"]): row["train/loss"] for row in worker["history"] if "train/loss" in row
    }
    assert sorted(loss) == [1, 2, 3, 4]
    val = {int(row["iteration"]): row["val/mIoU"] for row in worker["history"] if "val/mIoU" in row}
    val_rows = {int(r["iteration"]): float(r["mIoU"]) for r in _csv(run_dir / "val.csv")}
    assert val == pytest.approx(val_rows)
    assert any("bank/pixel/fill" in row for row in worker["history"])
    final = next(row for row in driver["history"] if "final/mIoU" in row)
    assert final["final/mIoU"] == pytest.approx(summary["mIoU"]) and final["iteration"] == 4
    assert {"summary.json", "plots/loss.png"} <= driver["files"]
    assert (folders[1] / "files" / "plots" / "loss.png").stat().st_size > 0


def _wandb_records(path: Path):
    """The protobuf records of a W&B offline ``run-<id>.wandb`` file: a ``:W&B`` header, then the
    LevelDB log format (32 KiB blocks; chunks with a 7-byte header: crc, length, type)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a W&B run file"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (kind == 0 and length == 0):  # block trailer / padding
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk  # full / first, else middle / last
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            yield record


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def _wandb_run(folder: Path) -> dict:
    """Config, history rows and saved files of one offline run folder, read from its run file."""
    (path,) = folder.glob("run-*.wandb")
    out: dict = {"config": {}, "history": [], "files": set()}
    for record in _wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "config":
            out["config"].update({_key(i): i.value_json for i in record.config.update})
        elif kind == "history":
            out["history"].append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "files":
            out["files"].update(f.path for f in record.files.files)
    return out


def test_preflight_names_a_tracker_that_is_down_or_not_logged_in(tiny, monkeypatch):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed (raycontrast[mlflow])")
    down = f"http://127.0.0.1:{_free_port()}"
    cfg = tiny("down", f"log.mlflow.tracking_uri={down}")
    with pytest.raises(ConfigError, match=rf"log.mlflow.tracking_uri={down}: .*does not answer"):
        check_trackers(cfg)
    pytest.importorskip("wandb", reason="the wandb extra is not installed (raycontrast[wandb])")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(Path(cfg.storage_path)))
    monkeypatch.setenv("NETRC", str(Path(cfg.storage_path) / "netrc"))
    cfg = tiny("nologin", "log.wandb.project=tests")
    with pytest.raises(ConfigError, match=r"log.wandb.project=tests .*needs a W&B login"):
        check_trackers(cfg)


def test_a_tracker_failing_mid_run_warns_once_and_logging_goes_on(tmp_path, capfd):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed (raycontrast[mlflow])")
    uri = f"sqlite:///{tmp_path}/m.db"
    tracker = MlflowTracker(uri, "tests")
    tracking = Tracking([_Safe(tracker, "mid")])
    run_id = tracker.start("mid")
    tracking.log_metrics({"train/loss": 1.0}, 1)
    tracker.client.delete_run(run_id)  # the store now refuses writes to this run
    tracking.log_metrics({"train/loss": 0.5}, 2)
    tracking.log_metrics({"train/loss": 0.25}, 3)
    out = capfd.readouterr().out
    assert out.count("warning: mlflow tracking at log.mlflow.tracking_uri=" + uri) == 1
    assert "training continues" in out
    assert not tracking  # switched off: no further calls to the failing store
    assert [m.step for m in tracker.client.get_metric_history(run_id, "train/loss")] == [1]


@pytest.mark.ray
@pytest.mark.slow
def test_a_study_logs_one_parent_run_with_its_trials_and_results(
    ray_session, tmp_path, mlflow_server
):
    from mlflow.tracking import MlflowClient

    from raycontrast.tune import run_study
    from tests.train.conftest import TINY

    doc = {
        "base": str(REPO / "experiments" / "synthetic.yaml"),
        "name": "tracked_study",
        "storage_path": str(tmp_path / "studies"),
        "overrides": [
            *TINY,
            "train.num_workers=1",
            "train.cpus_per_worker=0.75",
            "train.batch_size=2",
            "train.iterations=2",
            f"log.mlflow.tracking_uri={mlflow_server}",
            "log.mlflow.experiment=studies",
        ],
        "seeds": [0, 1],
        "reference": "ce",
        "arms": {"ce": {"contrast.enabled": False}, "contrast": {}},
        "trial_cpus": 0.25,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    run_study(str(path))

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("studies")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("raycontrast_role") == "parent"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.run_name == "tracked_study" and parent.info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == sorted(
        f"tracked_study_{arm}-s{seed}" for arm in ("ce", "contrast") for seed in (0, 1)
    )
    assert all("final/mIoU" in r.data.metrics for r in children)
    attached = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "results")}
    assert {"study.md", "runs.csv", "mIoU_per_arm.png"} <= attached
