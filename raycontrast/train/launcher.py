"""Driver side of a training run: connect to Ray, start the bank actor, fit, summarise.

The same code path serves a local run (a Ray instance started here), ``ray job submit`` (the job's
driver attaches to the cluster) and Tune trials (the trial's driver function calls :func:`run_training`
with Tune's report callback).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from raycontrast import storage
from raycontrast.config import ExperimentConfig, config_to_dict
from raycontrast.data import dataset_info
from raycontrast.eval._plots import plot_run
from raycontrast.train._cluster import check_address
from raycontrast.train._elastic import worker_groups
from raycontrast.train.loop import NonFiniteLoss, train_loop_per_worker
from raycontrast.train.preflight import (
    Preflight,
    check_capacity,
    preflight,
    registered_checkpoint,
    run_dir_of,
)

__all__ = [
    "TrainingInterrupted",
    "TrialsFailed",
    "WorkerFailure",
    "dry_run",
    "run_training",
    "scaling_config",
]


class TrainingInterrupted(RuntimeError):
    """The run was aborted before finishing (e.g. Ctrl-C in the driver); rerunning resumes it."""


class TrialsFailed(RuntimeError):
    """Every trial of a study or sweep ended, but some failed for good (after their retries): the
    results lack them, so the command exits non-zero; ``--resume`` retries them."""


class WorkerFailure(RuntimeError):
    """A Train worker failed (after ``train.max_failures`` restarts); the message is one line: the
    cause, the run directory and where the worker logs are."""


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
    t0 = time.perf_counter()
    check_address(address)  # an unreachable cluster fails in seconds, before the other checks
    print(f"[{cfg.name}] checking config, data, model and trackers", flush=True)
    checked = preflight(cfg, cluster=False)  # every check that needs no cluster, before connecting
    for warning in checked.warnings:
        print(f"[{cfg.name}] warning: {warning}", flush=True)
    run_dir = run_dir_of(cfg)
    finished = _finished_summary(cfg, run_dir)
    if finished is not None and not callbacks:
        return _print_finished(cfg, run_dir, finished)
    check_capacity([checked], address, start=True)
    storage.makedirs(run_dir)
    actor = _start_bank(cfg, run_dir)  # the handle must stay referenced while training runs
    print(
        f"[{cfg.name}] training {cfg.train.iterations} iterations on {_describe_workers(cfg)}, "
        f"bank {cfg.bank.mode if cfg.bank_kinds else 'off'}; run dir {run_dir}",
        flush=True,
    )
    result = _fit(cfg, run_dir, actor is not None, callbacks)
    del actor
    if finished is not None:  # a Tune trial of a finished run: keep its record
        return _print_finished(cfg, run_dir, finished)
    return _summarise(cfg, run_dir, result, time.perf_counter() - t0)


def _start_bank(cfg: ExperimentConfig, run_dir: str):
    """The run's bank actors (``bank.mode: actor`` with a bank), else ``None``."""
    if not cfg.bank_kinds or cfg.bank.mode != "actor":
        return None
    from raycontrast.bank import create_bank_actor

    spec = {
        "num_classes": dataset_info(cfg.data).num_classes,
        "dim": cfg.model.proj_dim,
        "size": cfg.contrast.memory_size,
        "kinds": cfg.bank_kinds,
        "dtype": cfg.contrast.memory_dtype,
    }
    return create_bank_actor(
        cfg.name,
        spec,
        world_size=max(cfg.train.max_workers, 1),  # each worker group sets its own
        snapshot_uri=storage.join(run_dir, "bank", "snapshot.pt"),
        snapshot_every=cfg.bank.snapshot_every,
        wait=False,
        shards=cfg.bank.shards,
    )


def _fit(cfg: ExperimentConfig, run_dir: str, bank_actor: bool, callbacks: Sequence[Any]):
    """Ray Train's ``TorchTrainer.fit()`` for the run; a failed or aborted fit raises one line."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, TrainingFailedError
    from ray.train.torch import TorchConfig

    from raycontrast.train.failures import Trainer, patient_start

    datasets = {}
    if cfg.data.ingest == "ray_data":
        from raycontrast.data import read_parquet_ray

        datasets["train"] = read_parquet_ray(cfg.data.parquet_dir, cfg.data.train_split)
    if bank_actor:
        from raycontrast.bank import bank_actor_name

    patient_start()  # a slow worker-group start is waited for, not failed
    trainer = Trainer(
        train_loop_per_worker,
        train_loop_config={
            "experiment": config_to_dict(cfg),
            "run_dir": run_dir,
            "bank_actor": bank_actor_name(cfg.name) if bank_actor else None,
        },
        scaling_config=scaling_config(cfg),
        run_config=RunConfig(
            name=cfg.name,
            storage_path=storage.resolve(cfg.storage_path),
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
    print(f"[{cfg.name}] workers starting", flush=True)
    try:
        result = trainer.fit()
    except TrainingFailedError as err:
        if trainer.interrupted:
            raise _interrupted(cfg, run_dir) from None
        _raise_user_error(err)
        raise WorkerFailure(_failure_line(cfg, run_dir, err)) from None
    except BaseException as err:  # after Ctrl-C Ray reports the aborted controller as dead
        if trainer.interrupted or isinstance(err, KeyboardInterrupt):
            raise _interrupted(cfg, run_dir) from None
        raise
    if trainer.interrupted:
        raise _interrupted(cfg, run_dir)
    if result.error is not None and result.return_value is None:
        _raise_user_error(result.error)
        raise WorkerFailure(_failure_line(cfg, run_dir, result.error))
    return result


def _interrupted(cfg: ExperimentConfig, run_dir: str) -> TrainingInterrupted:
    """The one line a Ctrl-C gets: the run is kept, and how to resume it."""
    latest = registered_checkpoint(run_dir) if not storage.is_uri(run_dir) else None
    where = (
        f"from {latest}"
        if latest is not None
        else "from the start (no checkpoint was registered yet)"
    )
    return TrainingInterrupted(
        f"{cfg.name}: interrupted (Ctrl-C); the run is kept in {run_dir}. Rerun the same command "
        f"to resume {where}"
    )


def _raise_user_error(err: BaseException) -> None:
    """Re-raise, in the driver, a user error a worker hit (the run stopped without a retry)."""
    from raycontrast.train.failures import user_failure

    found = user_failure(err)
    if found is not None:
        raise found[1] from None


def scaling_config(cfg: ExperimentConfig):
    """Ray Train's ``ScalingConfig`` for ``train.*``: ``num_workers: [min, max]`` is elastic (Ray
    starts once ``min`` workers fit, restarts smaller after a loss and grows back, checking every
    ``train.resize_interval_s``); an int is a fixed group (0: local mode)."""
    from ray.train import ScalingConfig

    t = cfg.train
    resources = {"CPU": t.cpus_per_worker}
    if t.use_gpu:
        resources["GPU"] = 1
    return ScalingConfig(
        num_workers=(t.min_workers, t.max_workers) if t.elastic else t.num_workers,
        use_gpu=t.use_gpu,
        resources_per_worker=resources,
        elastic_resize_monitor_interval_s=t.resize_interval_s,
    )


def _describe_workers(cfg: ExperimentConfig) -> str:
    t = cfg.train
    if t.elastic:
        return f"{t.min_workers}-{t.max_workers} workers (elastic)"
    return f"{t.num_workers} worker(s)"


def _registered_iteration(run_dir: str) -> int | None:
    """The iteration of the latest checkpoint Ray Train registered for the run, if any."""
    uri = storage.join(run_dir, "checkpoint_manager_snapshot.json")
    try:
        if not storage.exists(uri):
            return None
        latest = json.loads(storage.read_bytes(uri))["latest_checkpoint_result"]
        return int(latest["metrics"]["iteration"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _finished_summary(cfg: ExperimentConfig, run_dir: str) -> dict[str, Any] | None:
    """The ``summary.json`` of a run that already trained all ``train.iterations`` (else ``None``)."""
    done = _registered_iteration(run_dir)
    if done is None or done < cfg.train.iterations:
        return None
    uri = storage.join(run_dir, "summary.json")
    try:
        if not storage.exists(uri):
            return None
        summary = json.loads(storage.read_bytes(uri))
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def _print_finished(cfg: ExperimentConfig, run_dir: str, summary: dict[str, Any]) -> dict[str, Any]:
    """Rerunning a finished run changes nothing: print its record, leave ``summary.json`` as it is."""
    from raycontrast.eval import format_table

    per_class = summary.get("per_class_IoU") or {}
    if isinstance(per_class, dict) and per_class:
        metrics = {k: summary.get(k) for k in ("mIoU", "mAcc", "aAcc", "fwIoU")}
        print(format_table({**metrics, "IoU": list(per_class.values())}, list(per_class)))
    miou = summary.get("mIoU")
    print(
        f"[{cfg.name}] already finished ({summary.get('iterations')} iterations"
        + (f", mIoU {100 * miou:.2f}" if isinstance(miou, (int, float)) else "")
        + f"); nothing to do. Summary: {storage.join(run_dir, 'summary.json')} (kept). Raise "
        "train.iterations to train further, or choose another name for a new run",
        flush=True,
    )
    return summary


def _logs_dir() -> str:
    """This node's Ray log folder (worker stdout/stderr: ``worker-*.out/.err``)."""
    import ray

    try:
        return ray._private.worker._global_node.get_logs_dir_path()
    except Exception:  # not connected, or Ray internals moved
        return "the Ray session's logs folder (ray logs / the dashboard)"


def _failure_line(cfg: ExperimentConfig, run_dir: str, err: BaseException) -> str:
    """One line for a run that failed in its workers: the cause, the run dir, the worker logs."""
    failures = getattr(err, "worker_failures", None) or {}
    if failures:
        rank, exc = sorted(failures.items())[0]
        cause = f"rank {rank}: {_one_line(exc)}"
    else:
        cause = _one_line(getattr(err, "controller_failure", None) or err)
    return (
        f"{cfg.name}: training failed after {cfg.train.max_failures} restart(s) "
        f"(train.max_failures) - {cause.rstrip('.')}. Run dir: {run_dir} (workers/rank-N.json name each "
        f"worker's node and pid); worker logs: {_logs_dir()} (worker-*.err)"
    )


def _one_line(exc: BaseException) -> str:
    """``Type: message`` of the innermost error, on one line (no traceback)."""
    inner = getattr(exc, "cause", None)  # RayTaskError wraps the user's exception
    if isinstance(inner, BaseException):
        exc = inner
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # a traceback in the text: its last line is "Type: message"
    text = lines[-1] if lines and lines[0].startswith("Traceback") else (lines[0] if lines else "")
    name = type(exc).__name__
    return text if text.startswith(name) else f"{name}: {text}" if text else name


def dry_run(cfg: ExperimentConfig, address: str | None = None) -> Preflight:
    """``raycontrast train --dry-run``: every check of a run, then print the resolved config and the
    resources it would take. Attaches to ``address`` / ``$RAY_ADDRESS`` when given (to compare with
    that cluster), else compares with what a local Ray instance would offer, without starting one.

    Returns:
        The :class:`~raycontrast.train.preflight.Preflight` report.
    """
    check_address(address)
    print(
        f"[{cfg.name}] checking config, storage, data, model, checkpoint and trackers", flush=True
    )
    report = preflight(cfg, cluster=False)
    check_capacity([report], address)
    print(report.describe(), flush=True)
    print(f"[{cfg.name}] dry run: every check passed; run dir {run_dir_of(cfg)}", flush=True)
    return report


def _summarise(cfg: ExperimentConfig, run_dir: str, result, wall_s: float) -> dict[str, Any]:
    """The finished run's ``summary.json``, plots and table; an aborted or stopped run raises."""
    from raycontrast.eval import format_table

    if result.return_value is None and result.error is None:
        raise _interrupted(cfg, run_dir)
    out = result.return_value or {}
    if str(out.get("status", "")).startswith("stopped"):
        raise NonFiniteLoss(
            f"{cfg.name}: {out['status']}; set train.on_nonfinite=skip to skip such steps"
        )

    metrics = out.get("metrics") or {}
    names = out.get("class_names") or []
    # a resumed run: the segments before this one count too (their training time, from wall.json)
    this_segment = out.get("train_wall_s_this_segment")
    earlier = (out.get("train_wall_s") or 0.0) - (this_segment or 0.0)
    wall_s += max(earlier, 0.0)
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
        "train_wall_s_this_segment": this_segment,
        "per_class_IoU": per_class,
        "best": out.get("best"),
        "skipped_samples": out.get("skipped_samples"),
        "skipped_steps": out.get("skipped_steps"),
        "bank": out.get("bank"),
        "bank_health": out.get("bank_health"),  # the last evaluation's bank metrics
        "worker_groups": worker_groups(run_dir),  # every (re)start: iteration, world size, bank
        "checkpoint": result.checkpoint.path if result.checkpoint is not None else None,
        "best_checkpoint": _best_path(result),
        "run_dir": run_dir,
    }
    storage.write_bytes(
        storage.join(run_dir, "summary.json"), json.dumps(summary, indent=2).encode()
    )
    plot_run(run_dir, names, metrics.get("IoU"))
    from raycontrast.train.tracking import finish_run

    finish_run(cfg, run_dir, summary)
    if metrics:
        print(format_table(metrics, names), flush=True)
    segments = " (all segments of the resumed run)" if earlier > 0 else ""
    print(
        f"[{cfg.name}] done: mIoU {100 * (summary['mIoU'] or 0):.2f} after {summary['iterations']} "
        f"iterations in {wall_s:.0f}s{segments}; summary at {storage.join(run_dir, 'summary.json')}",
        flush=True,
    )
    if summary["checkpoint"]:
        print(
            f"[{cfg.name}] that mIoU is the last evaluation's (eval.mode {cfg.eval.mode}); "
            f"`raycontrast eval {storage.join(run_dir, 'config.yaml')} {summary['checkpoint']}` "
            "measures it again and says why if it differs",
            flush=True,
        )
    return summary


def _best_path(result) -> str | None:
    best = result.best_checkpoints or []
    scored = [(m.get("mIoU", -1), c.path) for c, m in best]
    return max(scored)[1] if scored else None
