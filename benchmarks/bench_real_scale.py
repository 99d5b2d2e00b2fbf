"""The paper's configurations at full resolution on CPU: step cost by phase, memory, checkpoints,
evaluation and data throughput, in one run (issue 19).

Runs ``experiments/cityscapes_hrnet48_memory.yaml`` and ``ade20k_hrnet48_memory.yaml`` as shipped --
HRNet-W48 with ImageNet-shaped weights from a local file (``model.pretrained=/path``), full crop
(512x1024, 520x520), full bank (19 / 150 classes x 2 kinds x 5000 entries x 256, bfloat16), the
real head -- on fake trees of the real layouts and sizes (``raycontrast fake-data``). Changed, as 2
cores and no GPU force: ``train.iterations``, ``train.num_workers=1``, ``train.batch_size=1``,
``contrast.warmup_iters=1``, and the CPU settings ``train.use_gpu=false``, ``train.cpus_per_worker``,
``train.amp=none``, ``train.sync_bn=false``, ``data.loader_workers=1``, ``eval.max_images=1`` (every one is recorded in the
JSON). The bank starts full (random unit vectors, ``$RAYCONTRAST_PREFILL_BANK``), so that a few
steps already contrast against the full memory, as every step after the first few thousand does.

Each dataset runs two arms in the same order of batches: CE only (``contrast.enabled=false``) and the
full method. Per-phase times come from :mod:`raycontrast.train.phases` (opt-in, set by this script);
medians and ranges are over the iterations after the first (warm-up of the contrast term and of the
allocator). The ADE20K memory run is then resumed for one more iteration: the resume time and
whether the bank after resume equals the checkpointed one. Evaluation times one 1024x2048 image at
``eval.mode=slide`` (512x1024 windows) and at multi-scale (0.5..1.75) + flip. Data throughput runs
the training transforms on 2048x1024 PNGs in one process (DataLoader path, per core) and through
Ray Data from Parquet shards (per CPU given to Ray).

The weights are those of ``timm.create_model("hrnet_w48")`` (random init here, no hub): timing and
memory do not depend on their values.

Usage: ``python benchmarks/bench_real_scale.py [--quick] [--force]``
(writes benchmarks/results/real_scale.json; ``--quick``: 2 steps per arm, one small eval, for
checking that the script works: its figures are not the benchmark's).
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

from _measure import add_force_flag, machine, save, table

REPO = Path(__file__).resolve().parent.parent
CONFIGS = {
    "cityscapes": "experiments/cityscapes_hrnet48_memory.yaml",
    "ade20k": "experiments/ade20k_hrnet48_memory.yaml",
}
PHASES = (
    "data",
    "forward",
    "backward",
    "sampling",
    "contrast",
    "selection",
    "exchange",
    "optimizer",
    "step",
)
CONTRAST_PHASES = ("sampling", "contrast", "selection")
MS_SCALES = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
TARGETS = {
    "step_ratio_full_over_ce_cityscapes": 1.05,
    "contrast_share_of_step_ade20k": 0.10,
    "wall_s": 25 * 60,
}


BACKBONE = "hrnet_w48"


def _overrides(dataset: str, root: str, storage: str, weights: str, steps: int) -> list[str]:
    """What this machine forces on the shipped config (recorded in the JSON)."""
    extra = [] if BACKBONE == "hrnet_w48" else [f"model.backbone={BACKBONE}"]
    return [
        *extra,
        f"data.root={root}",
        f"storage_path={storage}",
        f"model.pretrained={weights}",
        f"train.iterations={steps}",
        f"train.eval_every={steps}",
        "train.num_workers=1",
        "train.batch_size=1",
        "contrast.warmup_iters=1",
        "train.use_gpu=false",
        f"train.cpus_per_worker={os.cpu_count() or 1}",
        "train.amp=none",
        "train.sync_bn=false",
        "train.log_every=1",
        "data.loader_workers=1",
        "eval.max_images=1",
    ]


def _stats(values: list[float]) -> dict:
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def _read_phases(folder: Path, name: str) -> list[dict]:
    """Rank 0's timing files of run ``name``, oldest first (a resumed run writes a second one)."""
    files = sorted(folder.glob(f"{name}-rank0-*.json"), key=lambda p: p.stat().st_mtime)
    return [json.loads(p.read_text()) for p in files]


def _run(cfg_path: str, name: str, overrides: list[str], phases_dir: Path) -> dict:
    from raycontrast.config import load_config
    from raycontrast.train import run_training

    cfg = load_config(str(REPO / cfg_path), [f"name={name}", *overrides])
    t0 = time.perf_counter()
    summary = run_training(cfg)
    wall = time.perf_counter() - t0
    reports = _read_phases(phases_dir, name)
    return {"summary": summary, "wall_s": wall, "phases": reports[-1], "all": reports}


def _active(steps: list[dict]) -> list[dict]:
    return steps[1:] if len(steps) > 1 else steps


def _phase_table(steps: list[dict]) -> dict:
    active = _active(steps)
    return {p: _stats([s.get(p, 0.0) for s in active]) for p in PHASES}


def _arm_pair(dataset: str, ce: dict, full: dict) -> dict:
    ce_steps = [s["step"] for s in _active(ce["phases"]["steps"])]
    full_rows = _active(full["phases"]["steps"])
    full_steps = [s["step"] for s in full_rows]
    paired = [f / c for f, c in zip(full_steps, ce_steps)]
    shares = [sum(s.get(p, 0.0) for p in CONTRAST_PHASES) / s["step"] for s in full_rows]
    return {
        "ratio": statistics.median(full_steps) / statistics.median(ce_steps),
        "paired_ratios": _stats(paired),
        "share": statistics.median(shares),
        "share_range": _stats(shares),
    }


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _eval_times(checkpoint: str, root: str, quick: bool) -> dict:
    """Seconds per 1024x2048 image, slide and multi-scale + flip, on the checkpoint's model."""
    import torch

    from raycontrast.config import EvalConfig, load_config
    from raycontrast.data import build_dataset
    from raycontrast.eval.inference import infer_with
    from raycontrast.models import load_segmentor

    cfg = load_config(str(REPO / CONFIGS["cityscapes"]), [f"data.root={root}"])
    model, _ = load_segmentor(checkpoint)
    image = build_dataset(cfg.data, "val", train=False)[0]["image"][None]
    crop = list(cfg.data.crop_size)
    if quick:  # one window: checks the path, not the figure
        image = image[..., : crop[0], : crop[1]]
    settings = {
        "slide": EvalConfig(mode="slide", crop_size=crop),
        "ms_flip": EvalConfig(
            mode="multiscale", crop_size=crop, scales=[1.0] if quick else MS_SCALES, flip=True
        ),
    }
    size = tuple(image.shape[-2:])
    out = {"image_size": list(size), "crop": crop}
    with torch.no_grad():
        for key, ecfg in settings.items():
            t0 = time.perf_counter()
            logits = infer_with(model.predict, image, 19, ecfg)
            out[key] = time.perf_counter() - t0
            out[f"{key}_settings"] = {"scales": ecfg.scales, "flip": ecfg.flip, "mode": ecfg.mode}
            assert logits.shape[-2:] == size
    return out


def _data_throughput(root: str, parquet: str, n: int, step_s: float, batch_per_gpu: int) -> dict:
    """Training transforms on 2048x1024 PNGs: in process (one core) and through Ray Data."""
    import numpy as np
    import ray
    import torch

    from raycontrast.config import load_config
    from raycontrast.data import build_dataset, convert_dataset, read_parquet_ray
    from raycontrast.data.transforms import build_transforms, sample_rng

    cfg = load_config(str(REPO / CONFIGS["cityscapes"]), [f"data.root={root}"])
    torch.set_num_threads(1)
    ds = build_dataset(cfg.data, "train", train=True)
    ds[0]  # warm caches
    t0 = time.perf_counter()
    for i in range(n):
        ds[i % len(ds)]
    loader_ips = n / (time.perf_counter() - t0)

    convert_dataset("cityscapes", root, "train", parquet)
    transform = build_transforms(cfg.data, train=True)
    cores = float(ray.cluster_resources().get("CPU", 1))
    rows = read_parquet_ray(parquet, "train")

    def one_pass(seen: int) -> int:
        for batch in rows.iter_batches(batch_size=1, batch_format="numpy"):
            for image, label in zip(batch["image"], batch["label"]):
                transform(
                    np.asarray(image), np.asarray(label).astype(np.int64), sample_rng(0, 0, seen)
                )
                seen += 1
        return seen

    one_pass(0)  # start-up of the Ray Data workers, not throughput
    seen, t0 = 0, time.perf_counter()
    while seen < n:
        seen = one_pass(seen)
    ray_ips = seen / (time.perf_counter() - t0)
    torch.set_num_threads(os.cpu_count() or 1)
    per_core = {"dataloader": loader_ips, "ray_data": ray_ips / cores}
    need = batch_per_gpu / (step_s * per_core["dataloader"])
    return {
        "images_per_s_per_core": per_core,
        "images": n,
        "ray_data_cpus": cores,
        "cores_per_gpu_formula": "cores = images per GPU step / (GPU step s x images/s per core)",
        "cores_per_gpu_example": {
            "gpu_step_s": step_s,
            "images_per_gpu_step": batch_per_gpu,
            "cores_needed_dataloader": need,
        },
    }


def _weights(folder: Path) -> str:
    import timm
    import torch

    path = folder / f"{BACKBONE}.pth"
    torch.save(timm.create_model(BACKBONE, pretrained=False).state_dict(), path)
    return str(path)


def _fake_trees(folder: Path, quick: bool) -> dict[str, str]:
    from raycontrast.data.fake import write_fake_dataset

    n = 4 if quick else 8
    roots = {}
    for like in CONFIGS:
        tree = write_fake_dataset(like, folder / like, n=n, n_val=1)
        roots[like] = str(tree.root)
        print(
            f"[real-scale] fake {like}: {len(tree.files)} files in {tree.seconds:.1f} s", flush=True
        )
    return roots


def _dataset_runs(dataset: str, roots, tmp: Path, weights: str, steps: int, resume: bool) -> dict:
    phases_dir = tmp / "phases"
    storage = str(tmp / "runs")
    base = _overrides(dataset, roots[dataset], storage, weights, steps)
    ce = _run(CONFIGS[dataset], f"{dataset}_ce", [*base, "contrast.enabled=false"], phases_dir)
    print(f"[real-scale] {dataset} CE only: {ce['wall_s']:.0f} s", flush=True)
    full = _run(CONFIGS[dataset], f"{dataset}_full", base, phases_dir)
    print(f"[real-scale] {dataset} full method: {full['wall_s']:.0f} s", flush=True)
    out = {"ce": ce, "full": full}
    if resume:
        more = _overrides(dataset, roots[dataset], storage, weights, steps + 1)
        out["resumed"] = _run(CONFIGS[dataset], f"{dataset}_full", more, phases_dir)
        print(f"[real-scale] {dataset} resumed: {out['resumed']['wall_s']:.0f} s", flush=True)
    return out


def _checkpoint_figures(runs: dict, storage: Path) -> dict:
    full = runs["full"]["phases"]
    resumed = runs["resumed"]["phases"]
    saved = full.get("bank_digest_at_checkpoint", [None])[-1]
    return {
        "checkpoint_write_s": full["checkpoints"][-1]["write_s"],
        "checkpoint_bytes": full["checkpoints"][-1]["bytes"],
        "resume_s": resumed["resume_s"],
        "bank_equal_after_resume": saved is not None
        and resumed.get("bank_digest_after_start") == saved,
        "resumed_from_iteration": resumed["start"],
        "bank_snapshot_bytes": _dir_bytes(storage / "ade20k_full" / "bank"),
    }


def main() -> None:
    global BACKBONE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 steps per arm, small eval")
    parser.add_argument("--steps", type=int, default=None, help="iterations per arm")
    parser.add_argument("--keep", default=None, help="work folder to keep (default: a temp dir)")
    parser.add_argument(
        "--backbone", default=BACKBONE, help="another timm HRNet, only to check the script quickly"
    )
    parser.add_argument(
        "--object-store-gb",
        type=float,
        default=3.0,
        help="Ray object store (the ADE20K bank: 0.8 GB)",
    )
    add_force_flag(parser)
    args = parser.parse_args()
    BACKBONE = args.backbone
    steps = args.steps or (2 if args.quick else 5)
    info = machine()
    t_start = time.perf_counter()
    tmp = Path(args.keep or tempfile.mkdtemp(prefix="rc-real-scale-"))
    if (tmp / "phases").exists():
        parser.error(
            f"--keep {tmp}: holds a previous run (its runs would resume); use a new folder"
        )
    tmp.mkdir(parents=True, exist_ok=True)
    os.environ["RAYCONTRAST_PHASES"] = str(tmp / "phases")
    os.environ["RAYCONTRAST_PREFILL_BANK"] = "1"
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    import ray

    weights = _weights(tmp)
    roots = _fake_trees(tmp / "data", args.quick)
    ray.init(
        num_cpus=os.cpu_count() or 1,
        object_store_memory=int(args.object_store_gb * 1024**3),
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},
    )
    try:
        runs = {"ade20k": _dataset_runs("ade20k", roots, tmp, weights, steps, resume=True)}
        runs["cityscapes"] = _dataset_runs("cityscapes", roots, tmp, weights, steps, resume=False)
        ckpt = runs["cityscapes"]["full"]["summary"]["checkpoint"]
        evals = _eval_times(ckpt, roots["cityscapes"], args.quick)
        print(f"[real-scale] eval: slide {evals['slide']:.1f} s, ms+flip {evals['ms_flip']:.1f} s")
        cs_step = statistics.median(
            s["step"] for s in _active(runs["cityscapes"]["full"]["phases"]["steps"])
        )
        data = _data_throughput(
            roots["cityscapes"], str(tmp / "parquet"), 4 if args.quick else 12, 0.5, 2
        )
    finally:
        ray.shutdown()
    wall = time.perf_counter() - t_start
    payload = _payload(runs, evals, data, wall, info, steps, args, tmp)
    payload["cityscapes_full_step_s_here"] = cs_step
    payload["backbone"] = BACKBONE
    name = "real_scale_quick.json" if args.quick else "real_scale.json"
    if BACKBONE != "hrnet_w48":
        name = f"real_scale_{BACKBONE}.json"
    path = save(name, payload, force=args.force)
    _print(payload, path)


def _payload(runs, evals, data, wall, info, steps, args, tmp) -> dict:
    pairs = {d: _arm_pair(d, r["ce"], r["full"]) for d, r in runs.items()}
    step_s = {
        d: {arm: _phase_table(r[arm]["phases"]["steps"]) for arm in ("ce", "full")}
        for d, r in runs.items()
    }
    workers = [r[a]["phases"]["peak_rss_gb"] for r in runs.values() for a in ("ce", "full")]
    actors = [r["full"]["phases"].get("bank_actor_peak_rss_gb", 0.0) for r in runs.values()]
    ckpt = _checkpoint_figures(runs["ade20k"], tmp / "runs")
    ratio_cs = pairs["cityscapes"]["ratio"]
    share_ade = pairs["ade20k"]["share"]
    return {
        "quick": bool(args.quick),
        "steps_per_arm": steps,
        "active_steps_per_arm": max(steps - 1, 1),
        "configs": CONFIGS,
        "changed": _overrides("<dataset>", "<fake tree>", "<tmp>", "<hrnet_w48.pth>", steps),
        "step_ratio_full_over_ce": {d: p["ratio"] for d, p in pairs.items()},
        "step_ratio_paired": {d: p["paired_ratios"] for d, p in pairs.items()},
        "contrast_share_of_step": {d: p["share"] for d, p in pairs.items()},
        "contrast_share_range": {d: p["share_range"] for d, p in pairs.items()},
        "step_s": step_s,
        "peak_rss_gb": {"worker": max(workers), "bank_actor": max(actors)},
        "peak_rss_gb_by_run": {
            f"{d}_{a}": r[a]["phases"]["peak_rss_gb"]
            for d, r in runs.items()
            for a in ("ce", "full")
        },
        "bank_bytes": {d: r["full"]["phases"].get("bank_bytes") for d, r in runs.items()},
        "cityscapes_checkpoint": runs["cityscapes"]["full"]["phases"]["checkpoints"][-1],
        **ckpt,
        "checkpoint_measured_on": "ade20k_full (largest bank)",
        "eval_s_per_image": {"slide": evals["slide"], "ms_flip": evals["ms_flip"]},
        "eval": evals,
        "data_images_per_s_per_core": data["images_per_s_per_core"],
        "data": data,
        "run_wall_s": {f"{d}_{a}": r[a]["wall_s"] for d, r in runs.items() for a in r},
        "wall_s": wall,
        "targets": {
            "step_ratio_full_over_ce_cityscapes": {
                "target": f"<= {TARGETS['step_ratio_full_over_ce_cityscapes']}",
                "value": ratio_cs,
                "met": ratio_cs <= TARGETS["step_ratio_full_over_ce_cityscapes"],
            },
            "contrast_share_of_step_ade20k": {
                "target": f"<= {TARGETS['contrast_share_of_step_ade20k']}",
                "value": share_ade,
                "met": share_ade <= TARGETS["contrast_share_of_step_ade20k"],
            },
            "wall_s": {
                "target": f"<= {TARGETS['wall_s']}",
                "value": wall,
                "met": wall <= TARGETS["wall_s"],
            },
        },
        "machine": info,
    }


def _print(p: dict, path: Path) -> None:
    rows = []
    for d, arms in p["step_s"].items():
        for arm, phases in arms.items():
            text = ", ".join(
                f"{k} {v['median']:.2f}" for k, v in phases.items() if v["median"] is not None
            )
            rows.append((f"{d} {arm} step s (median)", text))
    for key, t in p["targets"].items():
        rows.append(
            (key, f"{t['value']:.3f} (target {t['target']}: {'met' if t['met'] else 'MISSED'})")
        )
    rows += [
        (
            "peak RSS GB worker / bank actor",
            f"{p['peak_rss_gb']['worker']:.2f} / {p['peak_rss_gb']['bank_actor']:.2f}",
        ),
        ("checkpoint write / resume s", f"{p['checkpoint_write_s']:.1f} / {p['resume_s']:.1f}"),
        ("bank equal after resume", str(p["bank_equal_after_resume"])),
        (
            "eval s/image slide / ms+flip",
            f"{p['eval_s_per_image']['slide']:.1f} / {p['eval_s_per_image']['ms_flip']:.1f}",
        ),
        (
            "data img/s/core loader / ray",
            "{dataloader:.2f} / {ray_data:.2f}".format(**p["data_images_per_s_per_core"]),
        ),
        ("wall s", f"{p['wall_s']:.0f}"),
    ]
    print(table(rows))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
