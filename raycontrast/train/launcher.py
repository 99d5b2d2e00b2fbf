"""Driver side of a training run: connect to Ray, start the bank actor, fit, summarise.

The same code path serves a local run (a Ray instance started here), ``ray job submit`` (the job's
driver attaches to the cluster) and Tune trials (the trial's driver function calls :func:`run_training`
with Tune's report callback).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray

from raycontrast import storage
from raycontrast.config import ConfigError, ExperimentConfig, config_to_dict
from raycontrast.contrast import memory_kinds
from raycontrast.data import build_dataset, dataset_info
from raycontrast.train.logger import write_plots
from raycontrast.train.loop import NonFiniteLoss, train_loop_per_worker

__all__ = [
    "TrainingInterrupted",
    "check_data",
    "check_storage",
    "connect",
    "run_dir_of",
    "run_training",
]


class TrainingInterrupted(RuntimeError):
    """The run was aborted before finishing (e.g. Ctrl-C in the driver); rerunning resumes it."""


def connect(address: str | None = None) -> None:
    """Attach to ``address`` / ``$RAY_ADDRESS`` (a cluster, or the job's cluster under ``ray job
    submit``), else start a local Ray instance. No-op when Ray is already initialised."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        # the dashboard (loopback only) serves the state API that Ray Train's controller polls
        ray.init(include_dashboard=True, dashboard_host="127.0.0.1")


def check_storage(storage_path: str) -> None:
    """Under ``ray job submit`` the entrypoint runs in a temporary copy of the working dir: a relative
    ``storage_path`` would put checkpoints there, where they are deleted with the job."""
    if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") and not (
        storage.is_uri(storage_path) or os.path.isabs(storage_path)
    ):
        raise ConfigError(
            f"storage_path={storage_path!r} is relative, and this runs as a Ray job whose working "
            f"dir ({os.getcwd()}) is temporary: results would be lost. Pass an absolute path on "
            "shared storage (NFS) or a URI, e.g. storage_path=s3://bucket/runs"
        )


def check_resume(cfg: ExperimentConfig, run_dir: str) -> None:
    """A rerun resumes the run's latest checkpoint: refuse, before any worker starts, when that
    checkpoint holds another architecture or class count (local and NFS run dirs).

    The checkpoint is the one Ray Train registered in ``checkpoint_manager_snapshot.json``, which is
    what it resumes from: a newer directory may hold a checkpoint cut short by an interrupt.
    """
    if storage.is_uri(run_dir):
        return  # checked by the workers when they load it
    latest = _registered_checkpoint(run_dir)
    if latest is None:
        return
    from raycontrast.models import check_compatible, load_checkpoint

    state = load_checkpoint(latest)
    check_compatible(
        state,
        cfg,
        dataset_info(cfg.data).num_classes,
        f"{latest} (rerunning {cfg.name!r} resumes it; choose another name for a new run)",
    )


def _registered_checkpoint(run_dir: str) -> Path | None:
    """The latest checkpoint directory Ray Train registered for the run in ``run_dir``, if any."""
    snapshot = Path(run_dir) / "checkpoint_manager_snapshot.json"
    try:
        latest = json.loads(snapshot.read_text())["latest_checkpoint_result"]
        path = Path(run_dir) / latest["checkpoint_dir_name"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # nothing registered (yet): nothing to resume
    return path if (path / "state.pt").exists() else None


def run_dir_of(cfg: ExperimentConfig) -> str:
    """``<storage_path>/<name>``, absolute (or a URI)."""
    return storage.join(storage.resolve(cfg.storage_path), cfg.name)


def check_data(cfg: ExperimentConfig) -> None:
    """Fail on the driver, before any worker starts, on a missing dataset root or split."""
    dataset_info(cfg.data)
    for split in (cfg.data.train_split, cfg.data.val_split):
        build_dataset(cfg.data, split, train=split == cfg.data.train_split)


def run_training(
    cfg: ExperimentConfig,
    address: str | None = None,
    callbacks: Sequence[Any] = (),
) -> dict[str, Any]:
    """Train ``cfg`` on Ray Train; returns the summary (also written to ``<run dir>/summary.json``).

    Rerunning with the same ``name`` and ``storage_path`` resumes from the latest checkpoint.

    Args:
        cfg: the experiment.
        address: Ray cluster address (default: ``$RAY_ADDRESS``, else a local instance).
        callbacks: extra Ray Train callbacks (Tune passes its report callback).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    t0 = time.perf_counter()
    check_storage(cfg.storage_path)
    check_data(cfg)
    connect(address)
    storage_path = storage.resolve(cfg.storage_path)
    run_dir = storage.join(storage_path, cfg.name)
    storage.makedirs(run_dir)
    check_resume(cfg, run_dir)

    actor_name = actor = None  # the handle must stay referenced while training runs
    uses_bank = cfg.contrast.enabled and memory_kinds(cfg.contrast)
    if uses_bank and cfg.bank.mode == "actor":
        from raycontrast.bank import bank_actor_name, create_bank_actor

        info = dataset_info(cfg.data)
        spec = {
            "num_classes": info.num_classes,
            "dim": cfg.model.proj_dim,
            "size": cfg.contrast.memory_size,
            "kinds": memory_kinds(cfg.contrast),
            "dtype": cfg.contrast.memory_dtype,
        }
        actor_name = bank_actor_name(cfg.name)
        actor = create_bank_actor(
            cfg.name,
            spec,
            world_size=max(cfg.train.num_workers, 1),
            snapshot_uri=storage.join(run_dir, "bank", "snapshot.pt"),
            snapshot_every=cfg.bank.snapshot_every,
            wait=False,
        )

    datasets = {}
    if cfg.data.ingest == "ray_data":
        from raycontrast.data import read_parquet_ray

        datasets["train"] = read_parquet_ray(cfg.data.parquet_dir, cfg.data.train_split)

    resources = {"CPU": cfg.train.cpus_per_worker}
    if cfg.train.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "experiment": config_to_dict(cfg),
            "run_dir": run_dir,
            "bank_actor": actor_name,
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.train.num_workers,
            use_gpu=cfg.train.use_gpu,
            resources_per_worker=resources,
        ),
        run_config=RunConfig(
            name=cfg.name,
            storage_path=storage_path,
            checkpoint_config=CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute="mIoU", checkpoint_score_order="max"
            ),
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            callbacks=list(callbacks),
        ),
        torch_config=TorchConfig(
            backend="nccl" if cfg.train.use_gpu else "gloo",
            timeout_s=cfg.train.collective_timeout_s,
        ),
        datasets=datasets or None,
    )
    print(
        f"[{cfg.name}] training {cfg.train.iterations} iterations on {cfg.train.num_workers} "
        f"worker(s), bank {cfg.bank.mode if uses_bank else 'off'}; run dir {run_dir}",
        flush=True,
    )
    result = trainer.fit()
    del actor
    if result.return_value is None and result.error is None:
        raise TrainingInterrupted(
            f"{cfg.name}: training was aborted (Ctrl-C); rerun the same command to resume from the "
            f"last checkpoint registered in {run_dir}"
        )
    out = result.return_value or {}
    if str(out.get("status", "")).startswith("stopped"):
        raise NonFiniteLoss(
            f"{cfg.name}: {out['status']}; set train.on_nonfinite=skip to skip such steps"
        )
    summary = _summarise(cfg, run_dir, out, result, time.perf_counter() - t0)
    return summary


def _summarise(
    cfg: ExperimentConfig, run_dir: str, out: dict, result, wall_s: float
) -> dict[str, Any]:
    from raycontrast.eval import format_table

    metrics = out.get("metrics") or {}
    names = out.get("class_names") or []
    per_class = dict(zip(names, metrics.get("IoU") or []))
    summary = {
        "name": cfg.name,
        "status": out.get("status", "completed"),
        "mIoU": metrics.get("mIoU"),
        "mAcc": metrics.get("mAcc"),
        "aAcc": metrics.get("aAcc"),
        "fwIoU": metrics.get("fwIoU"),
        "iterations": out.get("iterations"),
        "wall_s": wall_s,
        "train_wall_s": out.get("train_wall_s"),
        "per_class_IoU": per_class,
        "best": out.get("best"),
        "skipped_samples": out.get("skipped_samples"),
        "skipped_steps": out.get("skipped_steps"),
        "bank": out.get("bank"),
        "checkpoint": result.checkpoint.path if result.checkpoint is not None else None,
        "best_checkpoint": _best_path(result),
        "run_dir": run_dir,
    }
    storage.write_bytes(
        storage.join(run_dir, "summary.json"), json.dumps(summary, indent=2).encode()
    )
    _plots(run_dir, names, metrics.get("IoU"))
    if metrics:
        print(format_table(metrics, names), flush=True)
    print(
        f"[{cfg.name}] done: mIoU {100 * (summary['mIoU'] or 0):.2f} after {summary['iterations']} "
        f"iterations in {wall_s:.0f}s; summary at {storage.join(run_dir, 'summary.json')}",
        flush=True,
    )
    return summary


def _best_path(result) -> str | None:
    best = result.best_checkpoints or []
    scored = [(m.get("mIoU", -1), c.path) for c, m in best]
    return max(scored)[1] if scored else None


def _plots(run_dir: str, names, per_class) -> None:
    if not storage.is_uri(run_dir):
        write_plots(Path(run_dir), names, per_class)
        return
    tmp = Path(tempfile.mkdtemp(prefix="raycontrast-plots-"))
    try:
        for name in ("metrics.csv", "val.csv"):
            uri = storage.join(run_dir, name)
            if storage.exists(uri):
                (tmp / name).write_bytes(storage.read_bytes(uri))
        for path in write_plots(tmp, names, per_class):
            storage.write_bytes(storage.join(run_dir, "plots", path.name), path.read_bytes())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
