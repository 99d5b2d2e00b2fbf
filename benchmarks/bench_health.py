"""What watching the bank costs (CPU), against what a training step already pays.

Cityscapes scale: 19 classes x 5000 pixel + 5000 region entries, D=256, float32, full bank.
- baseline: one memory-loss forward + backward of 1024 anchors against the whole bank (every step);
- ``bank_health`` (with its class-balanced sample of ~4096 entries per kind) and ``pca_2d`` of the
  sample: once per evaluation;
- ``memory_loss_stats`` (256 anchors against every entry): once per evaluation;
- the write-step stamp added to ``MemoryBank.write`` (every step) against the whole write of a
  Cityscapes batch's records (8 images x 19 classes x (10 pixels + 1 region)).

Every time is the median of ``--repeats`` (>= 3) runs with its range; ratios are ratios of medians with
the range the repeats allow.

Usage: ``python benchmarks/bench_health.py [--quick] [--force]`` (writes
benchmarks/results/health.json; a loaded machine's run goes to health_loaded.json unless --force).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn.functional as F
from _measure import add_force_flag, fmt_spread, machine, ratio_spread, save, table, timed

from raycontrast.contrast import BankRecords, MemoryBank
from raycontrast.contrast.health import bank_health, memory_loss_stats, pca_2d, sample_bank
from raycontrast.contrast.loss import memory_contrast_loss_blocks

SCALES = {
    "cityscapes": {"classes": 19, "size": 5000, "dim": 256, "anchors": 1024, "images": 8},
    "quick": {"classes": 19, "size": 500, "dim": 64, "anchors": 256, "images": 2},
}


def batch_records(g, classes, dim, images, pixels=10):
    cls = torch.arange(classes).repeat(images)
    pix = cls.repeat_interleave(pixels)
    vec = F.normalize(torch.randn(len(pix) + len(cls), dim, generator=g), dim=1)
    kind = torch.cat([torch.zeros_like(pix), torch.ones_like(cls)])
    return BankRecords(torch.cat([pix, cls]), kind, vec)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    add_force_flag(parser)
    args = parser.parse_args()
    state = machine()  # the load average before anything runs
    if args.repeats < 3:
        parser.error("--repeats must be >= 3")
    s = SCALES["quick" if args.quick else "cityscapes"]
    g = torch.Generator().manual_seed(0)
    bank = MemoryBank(s["classes"], s["dim"], s["size"])
    steps = 0
    while int(bank.count.min()) < s["size"]:  # fill every queue through the real write path
        bank.write(batch_records(g, s["classes"], s["dim"], 64))
        steps += 1
    anchors = F.normalize(torch.randn(s["anchors"], s["dim"], generator=g), dim=1)
    labels = torch.randint(0, s["classes"], (s["anchors"],), generator=g)
    store, blocks = bank.memory()
    names = [f"class{c}" for c in range(s["classes"])]

    def step_loss():
        z = anchors.clone().requires_grad_()
        memory_contrast_loss_blocks(z, labels, store, blocks, tau=0.1, tau_base=0.07).backward()

    def health():
        sample = sample_bank(bank)
        bank_health(bank, names, sample=sample)
        pca_2d(sample.vec)

    records = batch_records(g, s["classes"], s["dim"], s["images"])

    def write():
        bank.write(records)

    nq = bank.ptr.numel()
    q = (records.kind * s["classes"] + records.cls).clone()
    slot = torch.randint(0, s["size"], (len(records),), generator=g)

    def stamp():
        bank.written.view(nq, s["size"])[q, slot] = bank.writes

    r = args.repeats
    _, t_step = timed(step_loss, r)
    _, t_health = timed(health, r)
    _, t_stats = timed(lambda: memory_loss_stats(anchors, labels, store, blocks), r)
    _, t_write = timed(write, r)
    _, t_stamp = timed(stamp, r)
    result = {
        "machine": state,
        "scale": s,
        "bank_entries": len(bank),
        "seconds": {
            "step_memory_loss_fwd_bwd": t_step,
            "bank_health_and_pca": t_health,
            "memory_loss_stats": t_stats,
            "bank_write": t_write,
            "write_step_stamp": t_stamp,
        },
        "ratios": {
            "health_and_pca_per_step_loss": ratio_spread(t_health, t_step),
            "loss_stats_per_step_loss": ratio_spread(t_stats, t_step),
            "stamp_per_write": ratio_spread(t_stamp, t_write),
        },
    }
    rows = [
        ("memory loss fwd+bwd (every step), s", fmt_spread(t_step)),
        ("bank_health + pca_2d (per eval), s", fmt_spread(t_health)),
        ("memory_loss_stats (per eval), s", fmt_spread(t_stats)),
        ("bank write of one batch, ms", fmt_spread(t_write, 1e3)),
        ("write-step stamp inside it, ms", fmt_spread(t_stamp, 1e3)),
    ]
    for key, value in result["ratios"].items():
        rows.append((key, f"{value['median']:.3f} [{value['min']:.3f}-{value['max']:.3f}]"))
    print(table(rows))
    name = "health_quick.json" if args.quick else "health.json"
    print("saved", save(name, result, force=args.force))


if __name__ == "__main__":
    main()
