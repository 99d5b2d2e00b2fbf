"""End-to-end training on Ray Train (tiny synthetic runs), including faults and resume.

Each Train run costs seconds of start-up on 2 cores, so one run checks several things.
"""

import json
import math
import os
import signal
import threading
from pathlib import Path

import pytest
import torch

from raycontrast.models import load_checkpoint
from raycontrast.train import run_training
from tests.train.conftest import logged_iterations, read_rows, wait_for, write_synthetic_folder

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_two_workers_survive_faults_and_checkpoint(ray_session, tiny):
    # The bank actor is killed when iteration 2 starts and rank 1 SIGKILLs itself at iteration 4
    # (the group restarts from the checkpoint at iteration 2); after that restart the test kills
    # rank 1 by pid at iteration 7 (the group restarts from iteration 6).
    cfg = tiny(
        "e2e",
        "train.iterations=8",
        "debug.kill_bank_at_iteration=2",
        "debug.fail_at_iteration=4",
        "debug.fail_rank=1",
    )
    run_dir = Path(cfg.storage_path) / cfg.name
    result = {}
    thread = threading.Thread(target=lambda: result.update(run_training(cfg)), daemon=True)
    thread.start()

    def restarted_and_at_7() -> bool:
        marker = run_dir / "debug" / "worker_failed_at_4"
        return marker.exists() and max(logged_iterations(run_dir), default=0) >= 7

    wait_for(restarted_and_at_7, 300, "iteration 7 after the first restart")
    os.kill(json.loads((run_dir / "workers" / "rank-1.json").read_text())["pid"], signal.SIGKILL)
    thread.join(timeout=400)
    summary = result
    assert summary["iterations"] == 8 and 0.0 <= summary["mIoU"] <= 1.0
    assert (run_dir / "debug" / "bank_killed_at_2").exists()
    # every iteration and evaluation is logged once: nothing lost or repeated
    rows = read_rows(run_dir)
    assert [int(r["iteration"]) for r in rows] == list(range(1, 9))
    assert logged_iterations(run_dir, "val.csv") == [2, 4, 6, 8]
    assert all(math.isfinite(float(r["loss"])) for r in rows)
    assert summary["bank"]["mode"] == "actor"
    assert summary["bank"]["bank_replicas_identical"] and summary["bank"]["bank_matches_actor"]
    saved = json.loads((run_dir / "summary.json").read_text())
    assert {"mIoU", "aAcc", "iterations", "wall_s", "per_class_IoU"} <= set(saved)
    assert "background" in saved["per_class_IoU"]
    # the last evaluation's bank health (issue: "a bank you can watch")
    assert 0.0 < saved["bank_health"]["bank/pixel/fill"] <= 1.0
    assert saved["bank_health"]["bank/loss/positive_share"] > 0.0
    pictures = ("plots/val_samples_000008.png", "plots/confusion.png", "confusion.csv")
    pictures += ("bank.csv", "plots/bank_health.png", "plots/bank_map_8.png")
    for artifact in (
        "plots/miou.png",
        "plots/loss.png",
        "plots/per_class_iou.png",
        "config.yaml",
        *pictures,
    ):
        assert (run_dir / artifact).exists(), artifact
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    state = load_checkpoint(summary["checkpoint"])
    assert state["iteration"] == 8 and len(state["rng"]) == 2
    assert int(state["bank"]["count"].sum()) == int(rows[-1]["bank_entries"]) > 0


def test_single_worker_on_a_folder_dataset_with_a_corrupt_image(ray_session, tiny, tmp_path):
    root = write_synthetic_folder(tmp_path / "folder", n_train=4, corrupt=2)  # 4 its = 2 epochs
    summary = run_training(
        tiny(
            "single",
            "data.dataset=folder",
            f"data.root={root}",
            "data.on_bad_sample=skip",
            "train.num_workers=1",
            "train.batch_size=2",
            "bank.mode=local",
        )
    )
    assert summary["skipped_samples"] >= 2  # the corrupt images were skipped and counted
    rows = read_rows(Path(summary["run_dir"]))
    contrast = [float(r["contrast"]) for r in rows]
    assert contrast[:2] == [0.0, 0.0]  # warm-up: zero (with a graph)
    assert all(c > 0 for c in contrast[2:])  # the contrast loss applies in 1-worker runs
    assert all(float(r["memory"]) > 0 for r in rows[2:])

    # the checkpoint serves `raycontrast eval` and `raycontrast export` ...
    from raycontrast.cli import main

    config = str(Path(summary["run_dir"]) / "config.yaml")
    out = tmp_path / "eval.json"
    assert main(["eval", config, summary["checkpoint"], "--out", str(out)]) == 0
    assert abs(json.loads(out.read_text())["metrics"]["mIoU"] - summary["mIoU"]) < 1e-9
    assert main(["export", summary["checkpoint"], "--out", str(tmp_path / "seg.pt")]) == 0
    # ... and a rerun of the same name with another model is refused before any worker starts
    from raycontrast.models import CheckpointError

    other = tiny(
        "single",
        f"data.root={root}",
        "data.dataset=folder",
        "data.on_bad_sample=skip",
        "model.backbone=resnet34",
    )
    with pytest.raises(
        CheckpointError, match=r"backbone 'resnet18'.*this config asks for backbone 'resnet34'"
    ):
        run_training(other)


def test_ray_data_ingest_from_parquet_shards(ray_session, tiny, tmp_path):
    from raycontrast.data import convert_dataset

    shards = tmp_path / "shards"
    data = [
        "data.synthetic.image_size=[64,64]",
        "data.synthetic.num_train=8",
        "data.synthetic.num_val=4",
    ]
    for split in ("train", "val"):
        convert_dataset("synthetic", "", split, str(shards), rows_per_shard=4, overrides=data)
    summary = run_training(
        tiny(
            "raydata",
            "data.source=parquet",
            f"data.parquet_dir={shards}",
            "data.ingest=ray_data",
            "train.num_workers=1",
            "train.batch_size=2",
            "train.iterations=3",
            "train.eval_every=3",
        )
    )
    assert summary["iterations"] == 3 and summary["mIoU"] is not None
    assert all(math.isfinite(float(r["loss"])) for r in read_rows(Path(summary["run_dir"])))


def test_a_short_run_learns(ray_session, tiny):
    """The loss falls and the model beats the best constant prediction (the majority class).

    Cheap on 2 cores: 8 training scenes, evaluated on those same scenes (without augmentation), so
    a few dozen iterations suffice; a loop that does not learn (no optimiser step, wrong labels,
    a broken evaluation) fails it.
    """
    from raycontrast.data import build_dataset
    from raycontrast.eval import SegMetrics

    cfg = tiny(
        "learns",
        "train.num_workers=0",  # local mode: no worker start-up
        "data.synthetic.num_train=8",
        "data.val_split=train",
        "train.iterations=48",
        "train.eval_every=48",
        "train.log_every=8",
        "optim.lr=0.05",
    )
    summary = run_training(cfg)
    losses = [float(r["ce"]) for r in read_rows(Path(summary["run_dir"]))]
    assert losses[-1] < 0.7 * losses[0], losses

    val = build_dataset(cfg.data, cfg.data.val_split, train=False)
    labels = [val[i]["label"] for i in range(len(val))]
    counts = torch.bincount(torch.cat([lab.flatten() for lab in labels]), minlength=7)[:7]
    constant = SegMetrics(7, cfg.data.ignore_index)
    for lab in labels:
        constant.update(torch.full_like(lab, int(counts.argmax())), lab)
    baseline = constant.compute()["mIoU"]
    assert summary["mIoU"] > baseline + 0.05, (summary["mIoU"], baseline)
