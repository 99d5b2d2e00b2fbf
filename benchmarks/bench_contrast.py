"""Contrast-loss and enqueue benchmark (CPU): ours vs the dense original formulation.

Measured in one run, each loss variant in its own subprocess (peak RSS above the inputs):
- Cityscapes scale: 1024 anchors vs 19 classes x (5000 pixel + 5000 region) entries, D=256,
  forward + backward w.r.t. the anchors; dense (materialised N x M similarity and masks, as the original
  code) vs ours; the max abs difference of the two losses; and the FLOP floor of any exact method:
  the two ``anchors @ memory.T``-sized matmuls of a forward and its anchor gradient
  (``S = A @ M.T``, then ``S @ M``), measured bare; and ours with ``compute_dtype=bfloat16`` (memory
  kept in float32, and kept in bfloat16 as ``contrast.memory_dtype=bfloat16`` does), over that fp32
  floor, with its loss's relative error against fp32.
- Enqueue of one batch (B=8, 128x256 features, D=256): a Python loop over images x classes (the original
  style, with the bugs fixed) vs ours (``select_records`` + ``MemoryBank.write``), and the memory
  floor of any enqueue: one pass reading the embeddings (what the region means must read).
- ADE20K scale, ours alone: 150 classes x (5000 + 5000) entries.

Every time is the median of ``--repeats`` (>= 3) runs, reported with its range; ratios are ratios of
medians, with the range the repeats allow.

Usage: ``python benchmarks/bench_contrast.py [--quick] [--force]`` (writes
benchmarks/results/contrast.json; a run started on a loaded machine goes to contrast_loaded.json
unless --force, see docs/benchmarks-notes.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn.functional as F
from _measure import (
    add_force_flag,
    fmt_spread,
    machine,
    peak_rss,
    ratio_spread,
    reset_peak_rss,
    run_isolated,
    save,
    table,
    timed,
)

from raycontrast.contrast import MemoryBank, select_records
from raycontrast.contrast.loss import class_blocks, memory_contrast_loss_blocks

SCALES = {
    "cityscapes": {"anchors": 1024, "classes": 19, "per_class": 10000, "dim": 256},
    "ade20k": {"anchors": 1024, "classes": 150, "per_class": 10000, "dim": 256},
    # --quick: a small smoke configuration for checking the script itself
    "quick": {"anchors": 256, "classes": 19, "per_class": 1000, "dim": 64},
}
TAU, TAU_BASE = 0.1, 0.07


def make_inputs(scale: str, seed: int = 0):
    """Anchors (requiring grad) and a class-sorted memory, built in place to keep RSS tight."""
    s = SCALES[scale]
    g = torch.Generator().manual_seed(seed)
    n, c, per, d = s["anchors"], s["classes"], s["per_class"], s["dim"]
    anchors = F.normalize(torch.randn(n, d, generator=g), dim=1).requires_grad_()
    anchor_labels = torch.randint(0, c, (n,), generator=g)
    memory = torch.randn(c * per, d, generator=g)
    memory.div_(memory.norm(dim=1, keepdim=True))
    memory_labels = torch.arange(c).repeat_interleave(per)
    return anchors, anchor_labels, memory, memory_labels


def dense_loss(anchors, anchor_labels, memory, memory_labels):
    """The original formulation: the full similarity matrix and float masks, materialised."""
    logits = anchors @ memory.T / TAU
    logits = logits - logits.max(1, keepdim=True).values.detach()
    mask = (anchor_labels[:, None] == memory_labels[None, :]).float()
    neg_mask = 1 - mask
    exp_logits = torch.exp(logits)
    neg_sum = (exp_logits * neg_mask).sum(1, keepdim=True)
    log_prob = logits - torch.log(exp_logits + neg_sum)
    mean_log_prob_pos = (mask * log_prob).sum(1) / mask.sum(1)
    return -(TAU / TAU_BASE) * mean_log_prob_pos.mean()


def ours_loss(anchors, anchor_labels, memory, memory_labels, compute_dtype=None):
    blocks = class_blocks(memory_labels)
    return memory_contrast_loss_blocks(
        anchors,
        anchor_labels,
        memory,
        blocks,
        tau=TAU,
        tau_base=TAU_BASE,
        compute_dtype=compute_dtype,
    )


def ours_bf16_loss(anchors, anchor_labels, memory, memory_labels):
    return ours_loss(anchors, anchor_labels, memory, memory_labels, compute_dtype="bfloat16")


LOSSES = {
    "dense": dense_loss,
    "ours": ours_loss,
    "ours_bf16": ours_bf16_loss,  # memory in float32: each chunk is cast
    "ours_bf16_bank": ours_bf16_loss,  # memory stored in bfloat16 (contrast.memory_dtype)
}


def measure_loss(variant: str, scale: str, repeats: int) -> dict:
    anchors, alabels, memory, mlabels = make_inputs(scale)
    if variant == "ours_bf16_bank":
        memory = memory.bfloat16()
    fn = LOSSES[variant]
    base = reset_peak_rss()
    value = None

    def step():
        nonlocal value
        anchors.grad = None
        loss = fn(anchors, alabels, memory, mlabels)
        loss.backward()
        value = float(loss.detach())

    median, times = timed(step, repeats=repeats, warmup=1 if repeats > 1 else 0)
    return {
        "time_s": median,
        "times_s": times,
        "peak_above_inputs_bytes": peak_rss() - base,
        "loss": value,
        "entries": int(memory.shape[0]),
    }


def measure_floor(scale: str, repeats: int) -> dict:
    """The FLOP floor: a forward similarity matmul and the gradient-sized one after it."""
    anchors, _, memory, _ = make_inputs(scale)
    a = anchors.detach()
    one, one_times = timed(lambda: a @ memory.T, repeats=repeats)
    floor, times = timed(lambda: (a @ memory.T) @ memory, repeats=repeats)
    return {"time_s": floor, "times_s": times, "one_matmul_s": one, "one_matmul_times_s": one_times}


def _enqueue_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    b, d, h, w, c = 8, 256, 128, 256, 19
    embed = F.normalize(torch.randn(b, d, h, w, generator=g), dim=1)
    # blocky label maps (16x16 cells) so that most classes appear in every image
    cells = torch.randint(0, c, (b, h // 16, w // 16), generator=g)
    labels = cells.repeat_interleave(16, 1).repeat_interleave(16, 2)
    labels[:, :8] = 255
    return embed, labels, c


def _ring_write(bank: MemoryBank, kind: int, c: int, vecs: torch.Tensor) -> None:
    """Write ``vecs`` at the queue pointer as one or two slices (FIFO wrap-around)."""
    vecs = vecs[-bank.size :]
    p, k = int(bank.ptr[kind, c]), vecs.shape[0]
    first = min(k, bank.size - p)
    bank.data[kind, c, p : p + first] = vecs[:first]
    bank.data[kind, c, : k - first] = vecs[first:]
    bank.ptr[kind, c] = (p + k) % bank.size
    bank.count[kind, c] = min(int(bank.count[kind, c]) + k, bank.size)


def loop_enqueue(bank: MemoryBank, embed, labels, num_classes, freq=10):
    """Original-style enqueue: a Python loop over images and classes, slice writes per class
    (with the original's bugs fixed: pixels drawn among the class, pointer advanced by K, true FIFO)."""
    for i in range(embed.shape[0]):
        feats = embed[i].reshape(embed.shape[1], -1)
        lab = labels[i].reshape(-1)
        for c in torch.unique(lab).tolist():
            if c == 255:
                continue
            idx = (lab == c).nonzero().squeeze(1)
            class_feats = feats[:, idx]
            region = F.normalize(class_feats.mean(1), dim=0)[None]
            _ring_write(bank, 1, c, region)
            pick = torch.randperm(idx.numel())[: min(idx.numel(), freq)]
            _ring_write(bank, 0, c, F.normalize(class_feats[:, pick].T, dim=1))


def read_floor(embed: torch.Tensor) -> torch.Tensor:
    """One pass reading every embedding: what the region means (one per image and class) cost at
    least, whatever computes them."""
    return embed.sum((2, 3))


def measure_enqueue(repeats: int) -> dict:
    embed, labels, c = _enqueue_inputs()
    floor_t, floor_times = timed(lambda: read_floor(embed), repeats=repeats)
    loop_bank = MemoryBank(c, embed.shape[1], 5000)
    ours_bank = MemoryBank(c, embed.shape[1], 5000)
    loop_t, loop_times = timed(lambda: loop_enqueue(loop_bank, embed, labels, c), repeats=repeats)
    ours_t, ours_times = timed(
        lambda: ours_bank.write(select_records(embed, labels, c, pixel_update_freq=10)),
        repeats=repeats,
    )
    # where the enqueue's time goes: the region means alone (one pass over the embeddings plus the
    # one-hot of the labels) and the pixel choice alone (a random order of every valid pixel)
    region_t, region_times = timed(
        lambda: select_records(embed, labels, c, kinds=("region",)), repeats=repeats
    )
    pixel_t, pixel_times = timed(
        lambda: select_records(embed, labels, c, kinds=("pixel",), pixel_update_freq=10),
        repeats=repeats,
    )
    return {
        "loop_time_s": loop_t,
        "loop_times_s": loop_times,
        "ours_time_s": ours_t,
        "ours_times_s": ours_times,
        "region_only_time_s": region_t,
        "region_only_times_s": region_times,
        "pixel_only_time_s": pixel_t,
        "pixel_only_times_s": pixel_times,
        "read_floor_time_s": floor_t,
        "read_floor_times_s": floor_times,
        "embed_bytes": embed.numel() * embed.element_size(),
        "entries_per_batch": len(select_records(embed, labels, c)),
    }


def bf16_support() -> dict:
    """Whether this CPU has AVX-512 BF16 / AMX (``lscpu`` flags) and the ISA torch dispatches to."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return {
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn": torch.backends.mkldnn.is_available(),
    }


def run_measure(name: str, scale: str, repeats: int) -> dict:
    if name in LOSSES:
        return measure_loss(name, scale, repeats)
    if name == "floor":
        return measure_floor(scale, repeats)
    if name == "enqueue":
        return measure_enqueue(repeats)
    raise SystemExit(f"unknown measurement {name}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (checks the script only)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure (>= 3)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--scale", default="cityscapes", help=argparse.SUPPRESS)
    add_force_flag(parser)
    args = parser.parse_args()
    if args.repeats < 3 and not args.measure:
        parser.error("--repeats must be >= 3 (medians with a spread)")
    if args.measure:
        print(json.dumps(run_measure(args.measure, args.scale, args.repeats)))
        return

    state = machine()  # the load average before anything runs
    script = str(Path(__file__).resolve())
    city = "quick" if args.quick else "cityscapes"
    ade = "quick" if args.quick else "ade20k"
    r = str(args.repeats)
    print(f"loss at {city} scale: dense ...", flush=True)
    dense = run_isolated(script, "dense", "--scale", city, "--repeats", r)
    print("ours ...", flush=True)
    ours = run_isolated(script, "ours", "--scale", city, "--repeats", r)
    print("ours, bf16 kernel (memory fp32, then memory bf16) ...", flush=True)
    bf16 = run_isolated(script, "ours_bf16", "--scale", city, "--repeats", r)
    bf16_bank = run_isolated(script, "ours_bf16_bank", "--scale", city, "--repeats", r)
    print("FLOP floor (two bare matmuls) ...", flush=True)
    floor = run_isolated(script, "floor", "--scale", city, "--repeats", r)
    print("enqueue ...", flush=True)
    enqueue = run_isolated(script, "enqueue", "--repeats", r)
    print(f"ours at {ade} scale ...", flush=True)
    ade_run = run_isolated(script, "ours", "--scale", ade, "--repeats", "3")

    gb = 1024**3
    ratios = {
        "loss_time_ratio_dense_over_ours": ratio_spread(dense["times_s"], ours["times_s"]),
        "loss_time_over_floor": ratio_spread(ours["times_s"], floor["times_s"]),
        "loss_time_over_one_matmul": ratio_spread(ours["times_s"], floor["one_matmul_times_s"]),
        "loss_bf16_time_over_floor": ratio_spread(bf16["times_s"], floor["times_s"]),
        "loss_bf16_bank_time_over_floor": ratio_spread(bf16_bank["times_s"], floor["times_s"]),
        "enqueue_time_ratio_loop_over_ours": ratio_spread(
            enqueue["loop_times_s"], enqueue["ours_times_s"]
        ),
        "enqueue_time_over_read_floor": ratio_spread(
            enqueue["ours_times_s"], enqueue["read_floor_times_s"]
        ),
    }
    results = {
        **{k: v["median"] for k, v in ratios.items()},
        "loss_peak_mem_ratio_dense_over_ours": dense["peak_above_inputs_bytes"]
        / max(ours["peak_above_inputs_bytes"], 1),
        "loss_max_abs_diff": abs(dense["loss"] - ours["loss"]),
        "loss_bf16_rel_err": abs(bf16["loss"] - ours["loss"]) / abs(ours["loss"]),
        "loss_bf16_bank_rel_err": abs(bf16_bank["loss"] - ours["loss"]) / abs(ours["loss"]),
        "bf16_matmul": bf16_support(),
        "ade20k_peak_mem_gb": ade_run["peak_above_inputs_bytes"] / gb,
        "ratio_ranges": ratios,
        "repeats": args.repeats,
        "scale": {"cityscapes": SCALES[city], "ade20k": SCALES[ade]},
        "targets": {
            "loss_time_ratio_dense_over_ours": ">= 5",
            "loss_peak_mem_ratio_dense_over_ours": ">= 10",
            "loss_time_over_floor": "<= 2 (1.0 = as fast as the two bare matmuls)",
            "enqueue_time_ratio_loop_over_ours": ">= 10",
            "loss_bf16_time_over_floor": "<= 0.6 (bf16 loss over the fp32 two-matmul floor)",
            "loss_bf16_rel_err": "<= 1e-3 (relative to the fp32 loss)",
            "enqueue_time_over_read_floor": "<= 1.5 (one pass reading the embeddings)",
            "ade20k_peak_mem_gb": "< 2",
        },
        "raw": {
            "dense": dense,
            "ours": ours,
            "ours_bf16": bf16,
            "ours_bf16_bank": bf16_bank,
            "floor": floor,
            "enqueue": enqueue,
            "ade20k_ours": ade_run,
        },
        "machine": state,
        "command": "python benchmarks/bench_contrast.py" + (" --quick" if args.quick else ""),
    }
    rows = [
        ("time: median [min-max] of repeats", ""),
        ("dense fwd+bwd (s)", fmt_spread(dense["times_s"])),
        ("ours fwd+bwd (s)", fmt_spread(ours["times_s"])),
        ("ours bf16 fwd+bwd (s)", fmt_spread(bf16["times_s"])),
        ("ours bf16, bf16 bank (s)", fmt_spread(bf16_bank["times_s"])),
        ("floor: 2 bare matmuls (s)", fmt_spread(floor["times_s"])),
        ("1 bare matmul (s)", fmt_spread(floor["one_matmul_times_s"])),
        ("enqueue loop (ms)", fmt_spread(enqueue["loop_times_s"], 1e3, 1)),
        ("enqueue ours (ms)", fmt_spread(enqueue["ours_times_s"], 1e3, 1)),
        ("enqueue read floor (ms)", fmt_spread(enqueue["read_floor_times_s"], 1e3, 1)),
        ("  region means only (ms)", fmt_spread(enqueue["region_only_times_s"], 1e3, 1)),
        ("  pixel choice only (ms)", fmt_spread(enqueue["pixel_only_times_s"], 1e3, 1)),
        ("ADE20K ours fwd+bwd (s)", fmt_spread(ade_run["times_s"])),
        ("dense peak above inputs (GB)", f"{dense['peak_above_inputs_bytes'] / gb:.3f}"),
        ("ours peak above inputs (GB)", f"{ours['peak_above_inputs_bytes'] / gb:.3f}"),
        ("loss dense / ours", f"{dense['loss']:.6f} / {ours['loss']:.6f}"),
        ("---", "---"),
    ]
    rows += [(k, f"{v['median']:.3g} [{v['min']:.3g}-{v['max']:.3g}]") for k, v in ratios.items()]
    rows += [
        (k, f"{results[k]:.4g}")
        for k in (
            "loss_peak_mem_ratio_dense_over_ours",
            "loss_max_abs_diff",
            "loss_bf16_rel_err",
            "loss_bf16_bank_rel_err",
            "ade20k_peak_mem_gb",
        )
    ]
    rows.append(("bf16 matmul on this CPU", str(results["bf16_matmul"])))
    print(table(rows))
    name = "contrast_quick.json" if args.quick else "contrast.json"
    print(f"wrote {save(name, results, force=args.force)}")


if __name__ == "__main__":
    main()
