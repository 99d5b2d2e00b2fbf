"""Pieces of the training loop that need no Ray."""

import math

import pytest
import torch

from raycontrast._progress import format_eta
from raycontrast.config import load_config
from raycontrast.contrast import MemoryBank, PixelContrastLoss
from raycontrast.models import build_segmentor
from raycontrast.train._data import ShardSampler, steps_per_epoch
from raycontrast.train._debug import DebugHooks, poison_contrast
from raycontrast.train._logger import RunLogger
from raycontrast.train._losses import cross_entropy, step_losses
from raycontrast.train.loop import _has_unused_parameters, _poly
from tests.train.conftest import TINY


def test_a_batch_of_only_ignore_pixels_gives_zero_loss_with_a_graph():
    cfg = load_config("experiments/synthetic.yaml", [*TINY, "contrast.warmup_iters=0"])
    model = build_segmentor(cfg.model, 7)
    out = model(torch.randn(2, 3, 64, 64))
    labels = torch.full((2, 64, 64), 255)
    bank = MemoryBank(7, cfg.model.proj_dim, 10)
    losses = step_losses(cfg, out, labels, 5, PixelContrastLoss(cfg.contrast), bank)
    assert losses.total.item() == 0.0 and losses.total.requires_grad
    losses.total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert losses.contrast.num_anchors == 0


def test_cross_entropy_averages_over_labelled_pixels_only():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    labels = torch.randint(0, 3, (1, 8, 8))
    labels[0, :4] = 255
    up = torch.nn.functional.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=False)
    expected = torch.nn.functional.cross_entropy(up, labels, ignore_index=255)
    torch.testing.assert_close(cross_entropy(logits, labels, 255), expected)


def test_poisoned_contrast_term_is_named():
    cfg = load_config("experiments/synthetic.yaml", [*TINY, "contrast.warmup_iters=0"])
    model = build_segmentor(cfg.model, 7)
    out = model(torch.randn(2, 3, 64, 64))
    labels = torch.randint(0, 7, (2, 64, 64))
    bank = MemoryBank(7, cfg.model.proj_dim, 10)
    clean = step_losses(cfg, out, labels, 0, PixelContrastLoss(cfg.contrast), bank)
    hooks = DebugHooks(cfg.debug, "unused", rank=0)
    assert hooks.after_losses(3, clean) is clean  # fault injection off: the losses pass untouched
    losses = poison_contrast(clean)
    assert math.isfinite(clean.total.item()) and not math.isfinite(losses.total.item())
    assert [k for k, v in losses.terms.items() if not torch.isfinite(v)] == ["contrast"]


@pytest.mark.parametrize(("overrides", "unused"), [
    (["model.backbone=resnet18", "model.head=fcn"], False),
    (["model.backbone=hrnet_w18_small", "model.output_stride=null", "model.head=fcn"], True),
    (["model.backbone=hrnet_w18_small", "model.output_stride=null", "model.head_input=concat",
      "model.proj_input=concat"], False),
])  # fmt: skip
def test_unused_parameters_are_detected_without_touching_the_model(overrides, unused):
    cfg = load_config(None, [*overrides, "model.head_channels=16", "model.proj_dim=8"])
    model = build_segmentor(cfg.model, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert _has_unused_parameters(model) is unused
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_shard_sampler_is_disjoint_per_epoch_and_resumable():
    world, batch = 2, 3
    full = [list(ShardSampler(20, r, world, batch, seed=1)) for r in range(world)]
    assert not set(full[0]) & set(full[1])
    assert all(len(f) == steps_per_epoch(20, world, batch) * batch for f in full)
    resumed = ShardSampler(20, 0, world, batch, seed=1)
    resumed.set_epoch(0, start_batch=2)
    assert list(resumed) == full[0][2 * batch :]
    other = ShardSampler(20, 0, world, batch, seed=1)
    other.set_epoch(1)
    assert list(other) != full[0]
    with pytest.raises(ValueError, match="too few"):
        steps_per_epoch(3, 2, 2)


def _global_steps(n: int, world: int, batch: int, epoch: int, start: int = 0) -> list[list[int]]:
    """Per step of one epoch, the samples all ranks of a ``world`` read (rank order)."""
    shares = []
    for rank in range(world):
        sampler = ShardSampler(n, rank, world, batch, seed=3)
        sampler.set_epoch(epoch, start_batch=start)
        share = list(sampler)
        assert len(share) == len(sampler)
        shares.append([share[i : i + batch] for i in range(0, len(share), batch)])
    return [[i for s in shares for i in s[k]] for k in range(len(shares[0]))]


@pytest.mark.parametrize("n", [24, 29])
def test_shard_sampler_steps_do_not_depend_on_the_world_size(n):
    # The reference: one shuffle of the epoch cut into global batches of 4, whatever the world.
    g = torch.Generator().manual_seed(3 * 100_003 + 1)
    perm = torch.randperm(n, generator=g).tolist()
    reference = [perm[k * 4 : (k + 1) * 4] for k in range(n // 4)]
    for world in (1, 2, 4):
        assert _global_steps(n, world, 4 // world, epoch=1) == reference
    # An elastic run: 2 steps with 2 workers, 1 step with 1, the rest with 4 workers (resumed at a
    # step boundary each time): every sample of the epoch exactly once, in the reference's steps.
    run = (
        _global_steps(n, 2, 2, 1)[:2]
        + _global_steps(n, 1, 4, 1, start=2)[:1]
        + _global_steps(n, 4, 1, 1, start=3)
    )
    assert run == reference
    seen = [i for step in run for i in step]
    assert len(seen) == len(set(seen)) == (n // 4) * 4
    assert _global_steps(n, 2, 2, epoch=2) != reference  # another epoch, another shuffle
    with pytest.raises(ValueError, match="rank 2"):
        ShardSampler(n, 2, 2, 2)


def test_poly_schedule_and_eta_format():
    f = _poly(100, 0.9)
    assert f(0) == 1.0 and f(100) == 0.0 and 0 < f(50) < 1
    assert (
        format_eta(3725) == "1h02m"
        and format_eta(65) == "1m05s"
        and format_eta(float("inf")) == "?"
    )


def test_logger_drops_rows_past_the_resume_point(tmp_path):
    log = RunLogger(str(tmp_path), "x", 0, 10, ["a", "b"])
    for it in (1, 2, 3):
        log.train({"iteration": it, "loss": 1.0, "ce": 1.0, "lr": 0.1, "it_per_s": 1.0})
    log.val(2, {"mIoU": 0.5, "mAcc": 0.5, "aAcc": 0.5, "fwIoU": 0.5, "IoU": [0.4, 0.6]})
    log.close()
    RunLogger(str(tmp_path), "x", 2, 10, ["a", "b"]).close()
    assert (tmp_path / "metrics.csv").read_text().count("\n") == 3  # header + iterations 1, 2
    assert "IoU/b" in (tmp_path / "val.csv").read_text()


def test_resume_check_reads_the_registered_checkpoint_not_a_newer_partial_one(tmp_path):
    import json

    from raycontrast.config import config_to_dict
    from raycontrast.models import CheckpointError, save_checkpoint
    from raycontrast.train.preflight import check_resume

    cfg = load_config("experiments/synthetic.yaml", TINY)
    run_dir = tmp_path / "run"
    state = {
        "config": config_to_dict(cfg),
        "num_classes": 7,
        "model": build_segmentor(cfg.model, 7).state_dict(),
    }
    save_checkpoint(run_dir / "checkpoint_a", state)
    partial = run_dir / "checkpoint_b"  # written later, cut short by an interrupt, not registered
    partial.mkdir()
    (partial / "state.pt").write_bytes(b"truncated")
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    snapshot.write_text(
        json.dumps({"latest_checkpoint_result": {"checkpoint_dir_name": "checkpoint_b"}})
    )
    with pytest.raises(CheckpointError, match="checkpoint_b"):  # the registered one is read
        check_resume(cfg, str(run_dir))
    snapshot.write_text(
        json.dumps({"latest_checkpoint_result": {"checkpoint_dir_name": "checkpoint_a"}})
    )
    check_resume(cfg, str(run_dir))  # compatible: resumes
    other = load_config("experiments/synthetic.yaml", [*TINY, "model.backbone=resnet34"])
    with pytest.raises(CheckpointError, match=r"checkpoint_a.*backbone 'resnet18'"):
        check_resume(other, str(run_dir))
    snapshot.write_text(json.dumps({"latest_checkpoint_result": None}))
    check_resume(other, str(run_dir))  # nothing registered yet: nothing to resume
