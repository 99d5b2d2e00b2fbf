"""The CPU-runnable parts of what benchmarks/gpu_check.py exercises on a GPU: low-precision anchors
and stores, and the fp16 grad scaler when the contrast loss is exactly zero (warm-up, empty bank)."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from raycontrast.config import ContrastConfig, load_config
from raycontrast.contrast import MemoryBank, PixelContrastLoss, select_records
from raycontrast.models import build_segmentor
from raycontrast.train._losses import step_losses
from raycontrast.train.loop import Trainer
from tests.train.conftest import TINY


def _batch(seed=0, d=8):
    g = torch.Generator().manual_seed(seed)
    embed = F.normalize(torch.randn(2, d, 8, 8, generator=g), dim=1)
    labels = torch.randint(0, 3, (2, 32, 32), generator=g)
    return embed, labels, torch.randn(2, 3, 8, 8, generator=g)


@pytest.mark.parametrize("embed_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("store_dtype", ["bfloat16", "float16"])
def test_low_precision_anchors_and_store_give_the_float32_loss(embed_dtype, store_dtype):
    """Embeddings as autocast leaves them, a low-precision bank: the loss is float32 and equals the
    loss of the same (rounded) values in float64, gradients included."""
    embed, labels, logits = _batch()
    embed = embed.to(embed_dtype)
    cfg = ContrastConfig(warmup_iters=0, max_views=4, max_samples=64, memory="both", memory_size=16)
    crit = PixelContrastLoss(cfg)
    bank = MemoryBank(3, 8, 16, kinds=crit.kinds, dtype=store_dtype)
    first = crit(embed, labels, logits, 0, bank=bank)
    records = select_records(
        embed.float(), first.labels_small, 3, kinds=crit.kinds, dtype=bank.dtype
    )
    assert records.vec.dtype == bank.dtype
    bank.write(records)
    norms = bank.features()[0].float().norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms), atol=5e-3, rtol=0)

    low = embed.clone().requires_grad_()
    ref = embed.double().requires_grad_()
    ref_bank = MemoryBank(3, 8, 16, kinds=crit.kinds, dtype="float32")
    ref_bank.load_state_dict({**bank.state_dict(), "data": bank.data.float()})
    out = crit(low, labels, logits, 0, bank=bank, generator=torch.Generator().manual_seed(3))
    expect = crit(ref, labels, logits, 0, bank=ref_bank, generator=torch.Generator().manual_seed(3))
    assert out.loss.dtype == torch.float32 and out.terms["memory"] > 0
    torch.testing.assert_close(
        out.loss.double(), expect.loss.detach().double(), atol=1e-4, rtol=1e-4
    )
    out.loss.backward()
    expect.loss.backward()
    assert low.grad.dtype == embed_dtype
    torch.testing.assert_close(low.grad.double(), ref.grad, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("iteration", [0, 5])  # warm-up (zero with a graph); then an empty bank
def test_grad_scaler_steps_when_the_contrast_loss_is_zero(iteration):
    """Trainer._apply_gradients with an enabled (fp16) grad scaler: a zero contrast term gives zero,
    finite gradients to the projection head, so the scaler neither skips the step nor backs off."""
    cfg = load_config(
        "experiments/synthetic.yaml",
        [*TINY, "contrast.warmup_iters=2", "contrast.inbatch=false", "contrast.memory=pixel"],
    )
    model = build_segmentor(cfg.model, 7)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=True, init_scale=2.0**10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    fake = SimpleNamespace(
        device=torch.device("cpu"),
        optimizer=opt,
        scaler=scaler,
        scheduler=sched,
        cfg=cfg,
        core=model,
        totals={"skipped_steps": 0},
        rank=0,
    )
    out = model(torch.randn(2, 3, 64, 64))
    bank = MemoryBank(7, cfg.model.proj_dim, 10, kinds=("pixel",))
    crit = PixelContrastLoss(cfg.contrast)
    losses = step_losses(cfg, out, torch.randint(0, 7, (2, 64, 64)), iteration, crit, bank)
    assert float(losses.terms["contrast"]) == 0.0 and losses.total.requires_grad
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert Trainer._apply_gradients(fake, iteration, losses)
    assert scaler.get_scale() == 2.0**10  # no inf/NaN found: no back-off
    proj = [p for n, p in model.named_parameters() if n.startswith("proj")]
    assert proj and all(p.grad is not None and torch.all(p.grad == 0) for p in proj)
    changed = [n for n, p in model.named_parameters() if not torch.equal(before[n], p)]
    assert any(n.startswith("backbone") for n in changed)


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the check runs for minutes")
def test_gpu_check_skips_without_cuda():
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines() == [
        "gpu-check: skipped (no CUDA device: torch.cuda.is_available() is False)"
    ]
