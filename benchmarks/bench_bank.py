"""Memory-bank sharing benchmark: step time and traffic of the bank modes, in one run (CPU).

Trains the synthetic experiment (2 Train workers, fixed seeds, the same iterations each) with:
contrast off; the memory bank shared as ``local`` (no sharing), ``allgather``, ``actor`` and
``actor`` + ``overlap``; and ``actor`` / ``allgather`` at a 10x larger bank. Step time is the mean of
the logged per-window iteration times after the first window (start-up excluded); traffic is what the
bank sync counted (bytes sent + received per step per worker).

Usage: ``python benchmarks/bench_bank.py [--iterations 60] [--quick]``
(writes benchmarks/results/bank.json).
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
from _measure import machine, save, table

from raycontrast.config import load_config
from raycontrast.train import run_training

EXPERIMENT = "experiments/synthetic.yaml"
VARIANTS = {
    "contrast_off": ["contrast.enabled=false"],
    "local": ["bank.mode=local"],
    "allgather": ["bank.mode=allgather"],
    "actor": ["bank.mode=actor"],
    "actor_overlap": ["bank.mode=actor", "bank.overlap=true"],
}


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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument(
        "--quick", action="store_true", help="20 iterations (checks the script only)"
    )
    args = parser.parse_args()
    iterations = 20 if args.quick else args.iterations
    storage = tempfile.mkdtemp(prefix="raycontrast-bench-bank-")
    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False)
    small, large = 1000, 10000
    runs = {}
    for name, overrides in VARIANTS.items():
        print(f"== {name} (memory_size {small})", flush=True)
        runs[name] = run_variant(name, overrides, iterations, storage, small)
    for name in ("actor", "allgather"):
        print(f"== {name} (memory_size {large})", flush=True)
        runs[f"{name}@{large}"] = run_variant(name, VARIANTS[name], iterations, storage, large)
    ray.shutdown()

    t = {k: v["step_time_s"] for k, v in runs.items()}
    actor_over = t["actor"] - t["local"]
    allgather_over = t["allgather"] - t["local"]
    results = {
        "step_time_s": {k: t[k] for k in VARIANTS},
        "actor_overhead_vs_local": actor_over / t["local"],
        "actor_overlap_overhead_vs_local": (t["actor_overlap"] - t["local"]) / t["local"],
        "allgather_overhead_vs_local": allgather_over / t["local"],
        "actor_overhead_over_allgather_overhead": actor_over / allgather_over
        if allgather_over
        else None,
        "bytes_per_step": {
            "actor": {
                str(small): runs["actor"]["bytes_per_step"],
                str(large): runs[f"actor@{large}"]["bytes_per_step"],
            },
            "allgather": {
                str(small): runs["allgather"]["bytes_per_step"],
                str(large): runs[f"allgather@{large}"]["bytes_per_step"],
            },
        },
        "exchange_s_per_step": {k: v.get("exchange_s_per_step") for k, v in runs.items()},
        "targets": {
            "actor_overhead_vs_local": "<= 0.10",
            "actor_overhead_over_allgather_overhead": "<= 1.25",
            "bytes_per_step": "flat in bank size",
        },
        "raw": runs,
        "iterations": iterations,
        "machine": machine(),
        "command": "python benchmarks/bench_bank.py"
        + (" --quick" if args.quick else f" --iterations {iterations}"),
    }
    rows = [(f"step time {k} (s)", f"{v:.4f}") for k, v in results["step_time_s"].items()]
    rows += [
        (f"exchange {k} (ms/step)", f"{1e3 * (v or 0):.2f}")
        for k, v in results["exchange_s_per_step"].items()
    ]
    rows += [
        ("actor overhead vs local", f"{results['actor_overhead_vs_local']:+.3f}"),
        ("actor+overlap overhead vs local", f"{results['actor_overlap_overhead_vs_local']:+.3f}"),
        ("allgather overhead vs local", f"{results['allgather_overhead_vs_local']:+.3f}"),
        ("actor / allgather overhead", str(results["actor_overhead_over_allgather_overhead"])),
    ]
    for mode, sizes in results["bytes_per_step"].items():
        rows += [(f"bytes/step {mode} @{size}", f"{b:.0f}") for size, b in sizes.items()]
    print(table(rows))
    print(f"wrote {save('bank_quick.json' if args.quick else 'bank.json', results)}")


if __name__ == "__main__":
    main()
