"""Memory-bank sharing benchmark: step time and traffic of the bank modes, in one run (CPU).

Trains the synthetic experiment (2 Train workers, fixed seeds, the same iterations each) with:
contrast off, and the memory bank shared as ``allgather``, ``actor`` (the object-store data plane),
``actor`` + ``overlap`` and ``actor_collective`` (the default: all_gather between the workers, the actor
fed asynchronously; ``--variants`` adds ``local``). Each variant runs ``--repeats`` times,
interleaved (variant order rotates every repeat, so slow drift of this shared VM spreads over all
variants); a run's step time is the mean of its logged per-window iteration times after the first
window (start-up excluded); figures are medians over repeats with their spread (min-max). Traffic is
what the bank sync counted (bytes sent + received per step per worker). The exchange on the critical
path (``exchange_s_per_step``) is the time a worker spends inside the sync's ``exchange`` per step
(for ``actor_collective``: the all_gather, the replica write and handing the batch to the actor).

Where the contrast time goes (in process, one thread, the synthetic experiment's per-worker batch and
a full bank): anchor sampling, the contrast loss forward + backward, record selection, next to a
contrast-off training step; the exchange comes from the training runs.

Usage: ``python benchmarks/bench_bank.py [--iterations 30] [--repeats 3] [--quick] [--force]``
(writes benchmarks/results/bank.json; a loaded machine's run goes to bank_loaded.json unless --force).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ray
from _measure import add_force_flag, machine, save, table

from raycontrast.config import load_config
from raycontrast.train import run_training

EXPERIMENT = "experiments/synthetic.yaml"
VARIANTS = {
    "contrast_off": ["contrast.enabled=false"],
    "local": ["bank.mode=local"],
    "allgather": ["bank.mode=allgather"],
    "actor": ["bank.mode=actor", "bank.data_plane=object_store"],
    "actor_overlap": ["bank.mode=actor", "bank.data_plane=object_store", "bank.overlap=true"],
    "actor_collective": ["bank.mode=actor", "bank.data_plane=collective"],
}
DEFAULT_VARIANTS = "contrast_off,allgather,actor,actor_overlap,actor_collective"


def _step_time(run_dir: Path) -> float:
    with (run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    speeds = [float(r["it_per_s"]) for r in rows[1:]]  # the first window includes start-up
    return statistics.mean(1.0 / s for s in speeds)


def run_variant(name: str, overrides: list[str], iterations: int, storage: str, size: int) -> dict:
    cfg = load_config(
        EXPERIMENT,
        [
            f"name={name}_{size}",
            f"storage_path={storage}",
            f"train.iterations={iterations}",
            f"train.eval_every={iterations}",
            "train.log_every=10",
            "train.seed=0",
            "contrast.warmup_iters=0",
            f"contrast.memory_size={size}",
            "data.synthetic.num_val=4",
            *overrides,
        ],
    )
    summary = run_training(cfg)
    out = {
        "step_time_s": _step_time(Path(summary["run_dir"])),
        "iterations": summary["iterations"],
        "mIoU": summary["mIoU"],
    }
    if summary.get("bank"):
        out.update({k: v for k, v in summary["bank"].items() if k != "mode"})
    return out


def _spread(values: list[float]) -> dict:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": values,
    }


def contrast_breakdown(repeats: int, steps: int = 10) -> dict:
    """Seconds per step of each contrast phase next to a contrast-off step (one thread, in process)."""
    import time

    import torch

    from raycontrast.contrast import (
        MemoryBank,
        PixelContrastLoss,
        memory_kinds,
        sample_anchors,
        select_records,
    )
    from raycontrast.contrast.sampling import resize_labels, resize_predictions
    from raycontrast.data import build_dataset, dataset_info
    from raycontrast.models import build_segmentor
    from raycontrast.train._losses import cross_entropy

    torch.set_num_threads(1)  # a Train worker has one CPU here
    torch.manual_seed(0)
    cfg = load_config(EXPERIMENT, ["contrast.warmup_iters=0", "train.seed=0"])
    c = cfg.contrast
    num_classes = dataset_info(cfg.data).num_classes
    model = build_segmentor(cfg.model, num_classes, projection=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    criterion = PixelContrastLoss(c, ignore_index=cfg.data.ignore_index)
    kinds = memory_kinds(c)
    bank = MemoryBank(num_classes, cfg.model.proj_dim, c.memory_size, kinds=kinds)
    dataset = build_dataset(cfg.data, cfg.data.train_split, train=True)
    local = cfg.train.batch_size // cfg.train.num_workers  # one worker's batch
    generator = torch.Generator().manual_seed(0)
    data = []
    for k in range(4):
        items = [dataset[k * local + i] for i in range(local)]
        data.append({key: torch.stack([x[key] for x in items]) for key in ("image", "label")})
    for _ in range(60):  # fill the bank as a long run would
        with torch.no_grad():
            out = model(data[0]["image"])
        small = resize_labels(data[0]["label"], tuple(out["embed"].shape[-2:]))
        bank.write(
            select_records(
                out["embed"].float(),
                small,
                num_classes,
                c.pixel_update_freq,
                kinds=kinds,
                ignore_index=cfg.data.ignore_index,
                generator=generator,
            )
        )
    phases = {k: [] for k in ("step_contrast_off", "anchor_sampling", "loss_fwd_bwd", "selection")}
    for _ in range(repeats):
        t = dict.fromkeys(phases, 0.0)
        for k in range(steps):
            batch = data[k % len(data)]
            images, labels = batch["image"], batch["label"]
            t0 = time.perf_counter()
            out = model(images)
            ce = cross_entropy(out["logits"].float(), labels, cfg.data.ignore_index)
            optimizer.zero_grad(set_to_none=True)
            ce.backward()
            optimizer.step()
            t["step_contrast_off"] += time.perf_counter() - t0
            embed = out["embed"].detach().float().requires_grad_()
            logits = out["logits"].detach().float()
            size = tuple(embed.shape[-2:])
            t0 = time.perf_counter()
            small = resize_labels(labels, size)
            preds = resize_predictions(logits, size)
            sample_anchors(
                embed.detach(),
                small,
                preds,
                max_samples=c.max_samples,
                max_views=c.max_views,
                ignore_index=cfg.data.ignore_index,
                generator=generator,
            )
            t["anchor_sampling"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            res = criterion(embed, labels, logits, iteration=10**6, bank=bank, generator=generator)
            res.loss.backward()
            t["loss_fwd_bwd"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            select_records(
                embed.detach(),
                res.labels_small,
                num_classes,
                c.pixel_update_freq,
                kinds=kinds,
                ignore_index=cfg.data.ignore_index,
                generator=generator,
            )
            t["selection"] += time.perf_counter() - t0
        for key in phases:
            phases[key].append(t[key] / steps)
    out = {k: _spread(v) for k, v in phases.items()}
    # the loss call samples its own anchors: the loss proper is the difference
    out["loss_only_median"] = out["loss_fwd_bwd"]["median"] - out["anchor_sampling"]["median"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default=DEFAULT_VARIANTS)
    parser.add_argument(
        "--quick", action="store_true", help="20 iterations, 1 repeat (checks the script only)"
    )
    add_force_flag(parser)
    args = parser.parse_args()
    state = machine()  # the load average before anything runs
    iterations = 20 if args.quick else args.iterations
    repeats = 1 if args.quick else args.repeats
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or "contrast_off" not in names:
        raise SystemExit(
            f"--variants: choose from {list(VARIANTS)} (with contrast_off), got {names}"
        )
    print("== contrast breakdown (in process)", flush=True)
    breakdown = contrast_breakdown(
        max(repeats, 3) if not args.quick else 1, 3 if args.quick else 10
    )
    storage = tempfile.mkdtemp(prefix="raycontrast-bench-bank-")
    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False)
    size = 1000
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for rep in range(repeats):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            print(f"== {name} (repeat {rep + 1}/{repeats})", flush=True)
            runs[name].append(
                run_variant(f"{name}_r{rep}", VARIANTS[name], iterations, storage, size)
            )
    ray.shutdown()

    step = {n: _spread([r["step_time_s"] for r in runs[n]]) for n in names}
    exchange = {
        n: _spread([r["exchange_s_per_step"] for r in runs[n]])
        for n in names
        if runs[n][0].get("exchange_s_per_step") is not None
    }
    off = step["contrast_off"]["median"]
    ratios = {n: step[n]["median"] / off for n in names if n != "contrast_off"}
    b = breakdown
    contrast_parts = {
        "anchor_sampling": b["anchor_sampling"]["median"],
        "loss_fwd_bwd": b["loss_only_median"],
        "selection": b["selection"]["median"],
        "exchange_actor": exchange.get("actor", {}).get("median"),
        "exchange_actor_overlap": exchange.get("actor_overlap", {}).get("median"),
        "exchange_allgather": exchange.get("allgather", {}).get("median"),
        "exchange_actor_collective": exchange.get("actor_collective", {}).get("median"),
    }
    critical = {n: v["median"] for n, v in exchange.items()}
    if "allgather" in critical:
        critical_over_allgather = {
            n: v / critical["allgather"] for n, v in critical.items() if n != "allgather"
        }
    else:
        critical_over_allgather = {}
    results = {
        "step_time_s": step,
        "step_ratio_over_contrast_off": ratios,
        "exchange_s_per_step": exchange,
        "exchange_on_critical_path_s": critical,
        "exchange_over_allgather": critical_over_allgather,
        "bytes_per_step": {
            n: statistics.median(r["bytes_per_step"] for r in runs[n])
            for n in names
            if "bytes_per_step" in runs[n][0]
        },
        "contrast_breakdown_s_per_step": contrast_parts,
        "contrast_breakdown_detail": breakdown,
        "step_contrast_off_in_process_s": b["step_contrast_off"]["median"],
        "targets": {
            "step_ratio_over_contrast_off": "<= 1.05 for the default (actor_collective): "
            "contrast + bank vs contrast off, same run",
            "exchange_over_allgather": "actor_collective <= 1.0 (exchange on the critical path)",
            "enqueue": ">= 10x the original loop: measured by bench_contrast.py (enqueue_time_ratio_loop_over_ours)",
        },
        "replicas": {
            n: {k: runs[n][-1].get(k) for k in ("bank_replicas_identical", "bank_matches_actor")}
            for n in names
            if n != "contrast_off"
        },
        "raw": runs,
        "iterations": iterations,
        "repeats": repeats,
        "memory_size": size,
        "machine": state,
        "command": "python benchmarks/bench_bank.py"
        + (" --quick" if args.quick else f" --iterations {iterations} --repeats {repeats}"),
    }
    rows = [
        (f"step time {k} (s)", f"{v['median']:.4f}  [{v['min']:.4f}-{v['max']:.4f}]")
        for k, v in step.items()
    ]
    rows += [(f"step {k} / contrast off", f"{v:.3f}") for k, v in ratios.items()]
    rows += [
        (
            f"exchange {k} (ms/step)",
            f"{1e3 * v['median']:.2f}  [{1e3 * v['min']:.2f}-{1e3 * v['max']:.2f}]",
        )
        for k, v in exchange.items()
    ]
    rows += [
        (f"contrast: {k} (ms/step)", "-" if v is None else f"{1e3 * v:.2f}")
        for k, v in contrast_parts.items()
    ]
    rows.append(
        ("contrast-off step in process (ms)", f"{1e3 * b['step_contrast_off']['median']:.1f}")
    )
    print(table(rows))
    name = "bank_quick.json" if args.quick else "bank.json"
    print(f"wrote {save(name, results, force=args.force)}")


if __name__ == "__main__":
    main()
