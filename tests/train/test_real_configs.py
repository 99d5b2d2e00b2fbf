"""The shipped Cityscapes and ADE20K memory configs train, checkpoint, resume and evaluate, reduced in
size (small fake trees, HRNet-W18-small, a small bank), on fake data in the real layouts; with the
opt-in phase timing of benchmarks/bench_real_scale.py switched on."""

import json

import pytest
import torch

from raycontrast.config import load_config
from raycontrast.eval import run_eval
from raycontrast.models import load_checkpoint
from raycontrast.train import run_training
from raycontrast.train.phases import ENV, PREFILL_ENV, full_bank_state

pytestmark = [pytest.mark.ray, pytest.mark.slow]

CONFIGS = {
    "cityscapes": "experiments/cityscapes_hrnet48_memory.yaml",
    "ade20k": "experiments/ade20k_hrnet48_memory.yaml",
}
SMALL = [
    "model.backbone=hrnet_w18_small",  # same family, head and projection inputs as HRNet-W48
    "model.head_channels=16",
    "model.proj_dim=16",
    "data.crop_size=[64,64]",
    "data.loader_workers=0",
    "contrast.memory_size=40",
    "contrast.max_samples=64",
    "contrast.max_views=8",
    "contrast.warmup_iters=1",
    "train.batch_size=2",
    "train.use_gpu=false",
    "train.sync_bn=false",
    "train.cpus_per_worker=0.5",
    "train.iterations=2",
    "train.eval_every=2",
    "eval.max_images=1",
]


def _base(like, tmp_path):
    from raycontrast.data.fake import write_fake_dataset

    root = write_fake_dataset(like, tmp_path / "data", n=4, n_val=1, scale=1 / 16).root
    return [*SMALL, f"data.root={root}", f"storage_path={tmp_path / 'runs'}", f"name={like}"]


@pytest.mark.parametrize("like", ["cityscapes", "ade20k"])
def test_shipped_memory_config_trains_resumes_and_evaluates(ray_session, tmp_path, like):
    base = [*_base(like, tmp_path), "train.num_workers=1"]
    summary = run_training(load_config(CONFIGS[like], base))
    assert summary["iterations"] == 2 and summary["bank"]["mode"] == "actor"
    assert summary["bank"]["bank_matches_actor"]
    state = load_checkpoint(summary["checkpoint"])
    classes = 19 if like == "cityscapes" else 150
    assert state["bank"]["data"].shape == (2, classes, 40, 16)
    assert state["bank"]["data"].dtype == torch.bfloat16  # memory_dtype as shipped
    saved = state["bank"]["count"].clone()

    resumed = run_training(load_config(CONFIGS[like], [*base, "train.iterations=3"]))
    assert resumed["iterations"] == 3 and resumed["bank"]["bank_matches_actor"]
    after = load_checkpoint(resumed["checkpoint"])["bank"]["count"]
    # the resumed bank started from the checkpoint's (a fresh one would hold one step's entries)
    assert bool((after >= saved).all()) and int(after.sum()) > int(saved.sum()) > 0

    result = run_eval(
        load_config(CONFIGS[like], [*base, "eval.mode=slide", "eval.crop_size=[32,64]"]),
        resumed["checkpoint"],
        out=str(tmp_path / f"eval_{like}.json"),
    )
    assert result["num_images"] == 1 and 0.0 <= result["metrics"]["mIoU"] <= 1.0


def test_phase_timing_and_prefilled_bank(ray_session, tmp_path, monkeypatch):
    """What bench_real_scale.py reads: per-step phases, checkpoint size and the bank's digests."""
    phases = tmp_path / "phases"
    monkeypatch.setenv(ENV, str(phases))  # local mode: the loop runs in this process
    monkeypatch.setenv(PREFILL_ENV, "1")
    base = [*_base("cityscapes", tmp_path), "train.num_workers=0", "train.iterations=3"]
    summary = run_training(load_config(CONFIGS["cityscapes"], base))
    assert summary["iterations"] == 3
    (report,) = [json.loads(p.read_text()) for p in phases.glob("cityscapes-rank0-*.json")]
    assert report["prefilled_bank"] and report["bank_bytes"] == 2 * 19 * 40 * 16 * 2
    assert report["bank_digest_after_start"] != report["bank_digest_end"]  # steps wrote to it
    assert report["bank_digest_at_checkpoint"][-1] == report["bank_digest_end"]
    assert report["checkpoints"][-1]["bytes"] > 0 and report["peak_rss_gb"] > 0
    assert [r["iteration"] for r in report["steps"]] == [1, 2, 3]
    for row in report["steps"][1:]:  # contrast active: every phase was timed
        assert {"data", "forward", "backward", "sampling", "contrast", "selection"} <= set(row)
        assert {"exchange", "optimizer"} <= set(row)
        assert row["step"] >= row["forward"] + row["contrast"] + row["backward"] > 0
    # the wrappers are removed afterwards (local mode shares this process)
    import raycontrast.train.loop as loop
    from raycontrast.contrast import select_records

    assert loop.select_records is select_records


def test_full_bank_state_fills_every_slot_with_unit_vectors():
    from raycontrast.contrast import MemoryBank

    bank = MemoryBank(3, 8, 5, dtype="float16")
    bank.load_state_dict(full_bank_state(bank, seed=1))
    assert len(bank) == 3 * 2 * 5 and bank.data.dtype == torch.float16
    norms = bank.data.float().norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms), atol=2e-3, rtol=0)
