"""One prepared command for the day a GPU is available (``make gpu-check``, about 8 minutes on one GPU).

On CUDA it runs, and writes benchmarks/results/gpu_check.json with a printed table:

1. ``kernel``: the memory contrast loss (forward + backward, ``memory_sampling: all``) against two
   cuBLAS matmuls of the same shapes (``Z Q^T`` and ``dS Q``: the floor of any exact kernel), at
   Cityscapes (19 x 2 x 5000) and ADE20K (150 x 2 x 5000) bank sizes, 1024 anchors, D = 256,
   bfloat16 store;
2. ``step``: the HRNet-W48 training step at 512x1024, batch 2, bf16 autocast, with and without the
   contrast terms (full bank), median of a few steps, peak GPU memory;
3. ``train``: a few iterations of ``experiments/cityscapes_hrnet48_memory.yaml`` through Ray Train
   on a fake Cityscapes tree at 2048x1024: ``train.use_gpu=true``, nccl, 2 ranks when 2+ GPUs are
   visible, ``train.sync_bn=true``, once with ``train.amp=bf16`` and once with ``fp16`` (grad
   scaler), checkpoint and evaluation included; per-phase step times and peak GPU memory per rank.

Without CUDA it prints one line saying it skipped and exits 0.

Usage: ``python benchmarks/gpu_check.py [--steps 6] [--force]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

REPO = Path(__file__).resolve().parent.parent
CONFIG = "experiments/cityscapes_hrnet48_memory.yaml"
BANKS = {"cityscapes": 19, "ade20k": 150}


def _cuda_time(fn, repeats: int = 5, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def _med(times: list[float]) -> dict:
    return {"median": statistics.median(times), "min": min(times), "max": max(times)}


def _kernel_case(classes: int, anchors: int, dim: int, size: int) -> dict:
    from raycontrast.contrast.loss import class_blocks, memory_contrast_loss_blocks

    dev = torch.device("cuda")
    torch.cuda.reset_peak_memory_stats()
    entries = 2 * classes * size
    labels = torch.arange(classes, device=dev).repeat_interleave(2 * size)
    store = torch.nn.functional.normalize(torch.randn(entries, dim, device=dev), dim=1)
    store = store.to(torch.bfloat16)
    blocks = class_blocks(labels)
    z = torch.nn.functional.normalize(torch.randn(anchors, dim, device=dev), dim=1)
    zl = torch.randint(0, classes, (anchors,), device=dev)
    q = store.float()

    def loss_step():
        zz = z.clone().requires_grad_()
        memory_contrast_loss_blocks(zz, zl, store, blocks, tau=0.07, tau_base=0.07).backward()

    def matmuls():
        (z @ q.T) @ q

    loss_t, mm_t = _cuda_time(loss_step), _cuda_time(matmuls)
    return {
        "entries": entries,
        "anchors": anchors,
        "loss_fwd_bwd_s": _med(loss_t),
        "two_matmuls_s": _med(mm_t),
        "ratio": statistics.median(loss_t) / statistics.median(mm_t),
        "peak_gpu_gb": torch.cuda.max_memory_allocated() / 1024**3,
    }


def check_kernel(anchors: int = 1024, dim: int = 256, size: int = 5000) -> dict:
    """Contrast loss fwd+bwd vs two matmuls of its shapes, per bank size."""
    return {name: _kernel_case(c, anchors, dim, size) for name, c in BANKS.items()}


def _step_arm(weights: str, enabled: bool, steps: int) -> dict:
    from raycontrast.config import load_config
    from raycontrast.contrast import MemoryBank, PixelContrastLoss, memory_kinds
    from raycontrast.models import build_segmentor
    from raycontrast.train._losses import step_losses
    from raycontrast.train.phases import full_bank_state

    dev = torch.device("cuda")
    overrides = [
        f"model.pretrained={weights}",
        f"contrast.enabled={str(enabled).lower()}",
        "contrast.warmup_iters=0",
    ]
    cfg = load_config(str(REPO / CONFIG), overrides)
    model = build_segmentor(cfg.model, 19, projection=enabled).to(dev).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    crit, bank = None, None
    if enabled:
        crit = PixelContrastLoss(cfg.contrast)
        kinds = memory_kinds(cfg.contrast)
        bank = MemoryBank(19, cfg.model.proj_dim, cfg.contrast.memory_size, kinds=kinds,
                          dtype=cfg.contrast.memory_dtype, device=dev)  # fmt: skip
        bank.load_state_dict(full_bank_state(bank))
    images = torch.randn(2, 3, 512, 1024, device=dev)
    labels = torch.randint(0, 19, (2, 512, 1024), device=dev)
    gen = torch.Generator().manual_seed(0)
    torch.cuda.reset_peak_memory_stats()

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            o = model(images)
        losses = step_losses(cfg, o, labels, 10, crit, bank, generator=gen)
        opt.zero_grad(set_to_none=True)
        losses.total.backward()
        opt.step()

    times = _cuda_time(step, repeats=steps)
    return {"step_s": _med(times), "peak_gpu_gb": torch.cuda.max_memory_allocated() / 1024**3}


def check_step(weights: str, steps: int) -> dict:
    """HRNet-W48 step (bf16 autocast, batch 2, 512x1024) with and without contrast (full bank)."""
    out = {}
    for arm, enabled in (("ce", False), ("full", True)):
        out[arm] = _step_arm(weights, enabled, steps)
        torch.cuda.empty_cache()
    out["ratio_full_over_ce"] = out["full"]["step_s"]["median"] / out["ce"]["step_s"]["median"]
    return out


def check_train(weights: str, root: str, tmp: Path, steps: int, amp: str) -> dict:
    """A few Ray Train iterations of the shipped config on GPU(s), timed by phase."""
    from raycontrast.config import load_config
    from raycontrast.train import run_training

    ranks = 2 if torch.cuda.device_count() >= 2 else 1
    name = f"gpu_{amp}"
    cfg = load_config(
        str(REPO / CONFIG),
        [
            f"name={name}",
            f"storage_path={tmp / 'runs'}",
            f"data.root={root}",
            f"model.pretrained={weights}",
            f"train.iterations={steps}",
            f"train.eval_every={steps}",
            f"train.num_workers={ranks}",
            f"train.batch_size={2 * ranks}",
            "train.use_gpu=true",
            "train.sync_bn=true",
            f"train.amp={amp}",
            "train.log_every=1",
            "contrast.warmup_iters=2",
            f"train.cpus_per_worker={max(1, (os.cpu_count() or 2) // (2 * ranks))}",
            "data.loader_workers=2",
            "eval.max_images=2",
        ],
    )
    t0 = time.perf_counter()
    summary = run_training(cfg)
    wall = time.perf_counter() - t0
    reports = [json.loads(p.read_text()) for p in (tmp / "phases").glob(f"{name}-rank*.json")]
    rows = [r for rep in reports if rep["rank"] == 0 for r in rep["steps"][2:]]
    return {
        "ranks": ranks,
        "backend": "nccl",
        "amp": amp,
        "iterations": summary["iterations"],
        "mIoU": summary["mIoU"],
        "step_s": {
            k: statistics.median(r.get(k, 0.0) for r in rows)
            for k in ("data", "forward", "backward", "contrast", "exchange", "step")
        }
        if rows
        else None,
        "peak_gpu_gb_per_rank": [rep.get("peak_gpu_gb") for rep in reports],
        "wall_s": wall,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="training iterations per amp mode")
    parser.add_argument(
        "--force", action="store_true", help="write results/gpu_check.json even if loaded"
    )
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu-check: skipped (no CUDA device: torch.cuda.is_available() is False)")
        return 0
    from _measure import machine, save, table

    info = machine() | {"device": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count()}
    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="rc-gpu-check-"))
    os.environ["RAYCONTRAST_PHASES"] = str(tmp / "phases")
    import ray
    import timm

    from raycontrast.data.fake import write_fake_dataset

    weights = str(tmp / "hrnet_w48.pth")
    torch.save(timm.create_model("hrnet_w48").state_dict(), weights)
    root = str(write_fake_dataset("cityscapes", tmp / "cityscapes", n=16, n_val=2).root)
    result = {"kernel": check_kernel(), "step": check_step(weights, steps=5)}
    ray.init(
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},
        include_dashboard=True,
        dashboard_host="127.0.0.1",
    )
    try:
        result["train"] = {
            amp: check_train(weights, root, tmp, args.steps, amp) for amp in ("bf16", "fp16")
        }
    finally:
        ray.shutdown()
    result["wall_s"] = time.perf_counter() - t_start
    result["machine"] = info
    path = save("gpu_check.json", result, force=args.force)
    rows = [
        (
            f"kernel {k}",
            f"loss fwd+bwd {v['loss_fwd_bwd_s']['median'] * 1e3:.1f} ms vs 2 matmuls "
            f"{v['two_matmuls_s']['median'] * 1e3:.1f} ms (x{v['ratio']:.2f}), peak {v['peak_gpu_gb']:.1f} GB",
        )
        for k, v in result["kernel"].items()
    ]
    s = result["step"]
    rows.append(
        (
            "HRNet-W48 step ce / full",
            f"{s['ce']['step_s']['median']:.3f} / "
            f"{s['full']['step_s']['median']:.3f} s (x{s['ratio_full_over_ce']:.3f}), peak "
            f"{s['full']['peak_gpu_gb']:.1f} GB",
        )
    )
    for amp, t in result["train"].items():
        step = t["step_s"]["step"] if t["step_s"] else float("nan")
        rows.append(
            (
                f"train {amp} x{t['ranks']} nccl",
                f"{t['iterations']} its, step {step:.3f} s, peak GB {t['peak_gpu_gb_per_rank']}",
            )
        )
    rows.append(("wall s", f"{result['wall_s']:.0f}"))
    print(table(rows))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
