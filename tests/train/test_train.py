"""End-to-end training on Ray Train (synthetic data, tiny model)."""

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from raycontrast.models import load_checkpoint
from raycontrast.train import run_training

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _rows(run_dir: Path, name: str = "metrics.csv") -> list[dict[str, str]]:
    with (run_dir / name).open() as f:
        return list(csv.DictReader(f))


def test_two_workers_train_checkpoint_and_resume(ray_session, tiny):
    cfg = tiny("e2e")
    summary = run_training(cfg)
    run_dir = Path(summary["run_dir"])
    assert summary["iterations"] == 4 and 0.0 <= summary["mIoU"] <= 1.0
    assert set(summary["per_class_IoU"]) >= {"background"}
    rows = _rows(run_dir)
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4]
    assert all(math.isfinite(float(r["loss"])) for r in rows)
    saved = json.loads((run_dir / "summary.json").read_text())
    assert {"mIoU", "aAcc", "iterations", "wall_s", "per_class_IoU"} <= set(saved)
    assert (run_dir / "plots" / "miou.png").exists() and (run_dir / "config.yaml").exists()
    state = load_checkpoint(summary["checkpoint"])
    assert state["iteration"] == 4 and len(state["rng"]) == 2
    assert int(state["bank"]["count"].sum()) > 0
    entries_before = int(rows[-1]["bank_entries"])
    assert summary["bank"]["mode"] == "actor"
    assert summary["bank"]["bank_replicas_identical"] and summary["bank"]["bank_matches_actor"]

    resumed = run_training(tiny("e2e", "train.iterations=6"))
    assert resumed["iterations"] == 6
    rows = _rows(run_dir)
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4, 5, 6]  # nothing lost or repeated
    # the bank came back from the checkpoint: it holds more than one fresh step could write
    assert int(rows[4]["bank_entries"]) > entries_before
    assert [int(r["iteration"]) for r in _rows(run_dir, "val.csv")] == [2, 4, 6]


def test_contrast_term_is_nonzero_after_warmup_in_a_single_worker_run(ray_session, tiny):
    summary = run_training(
        tiny("single", "train.num_workers=1", "train.batch_size=2", "bank.mode=local")
    )
    rows = _rows(Path(summary["run_dir"]))
    contrast = [float(r["contrast"]) for r in rows]
    assert contrast[:2] == [0.0, 0.0]  # warm-up: zero (with a graph)
    assert all(c > 0 for c in contrast[2:])
    assert all(float(r["memory"]) > 0 for r in rows[2:])


def test_ray_data_ingest_from_parquet_shards(ray_session, tiny, tmp_path):
    from raycontrast.data import convert_dataset

    shards = tmp_path / "shards"
    for split in ("train", "val"):
        convert_dataset(
            "synthetic",
            "",
            split,
            str(shards),
            rows_per_shard=8,
            overrides=[
                "data.synthetic.image_size=[64,64]",
                "data.synthetic.num_train=16",
                "data.synthetic.num_val=4",
            ],
        )
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
    assert torch.isfinite(
        torch.tensor([float(r["loss"]) for r in _rows(Path(summary["run_dir"]))])
    ).all()
