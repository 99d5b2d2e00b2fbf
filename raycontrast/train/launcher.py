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
from raycontrast.train.elastic import worker_groups
from raycontrast.train.logger import write_plots
from raycontrast.train.loop import NonFiniteLoss, train_loop_per_worker

__all__ = [
    "ClusterUnreachable",
    "TrainingInterrupted",
    "WorkerFailure",
    "check_data",
    "check_storage",
    "connect",
    "dry_run",
    "run_dir_of",
    "run_training",
]

CONNECT_TIMEOUT_S = 10.0
"""How long the driver tries to reach a cluster's address before giving up with an error."""

_started_local = False  # connect() started a local Ray instance in this process


class TrainingInterrupted(RuntimeError):
    """The run was aborted before finishing (e.g. Ctrl-C in the driver); rerunning resumes it."""


class WorkerFailure(RuntimeError):
    """A Train worker failed (after ``train.max_failures`` restarts); the message is one line: the
    cause, the run directory and where the worker logs are."""


class ClusterUnreachable(ConfigError):
    """``--address`` / ``$RAY_ADDRESS`` names a cluster that cannot be reached."""


def _check_reachable(address: str, source: str) -> None:
    """A TCP connection to ``host:port`` of ``address`` within :data:`CONNECT_TIMEOUT_S` (``ray.init``
    itself retries for minutes); ``auto``/``local`` and addresses without a port are left to Ray."""
    import socket
    from urllib.parse import urlsplit

    target = address if "://" in address else f"tcp://{address}"
    try:
        parts = urlsplit(target)
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if not host or port is None:
        if address.strip() in ("auto", "local"):
            return
        raise ClusterUnreachable(
            f"{source}={address!r} is not a Ray address: expected host:port (the head's GCS, e.g. "
            "10.0.0.5:6379), ray://host:10001, or auto"
        )
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        reason = "timed out" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise ClusterUnreachable(
            f"cannot reach the Ray cluster at {source}={address} ({reason} after at most "
            f"{CONNECT_TIMEOUT_S:g}s): check the head's address and port and that the cluster is "
            "up, or leave the address unset to start a local Ray instance"
        ) from None


def _address(address: str | None) -> tuple[str | None, str]:
    """The cluster address to use and where it came from (``--address`` or ``$RAY_ADDRESS``)."""
    if address:
        return address, "--address"
    return os.environ.get("RAY_ADDRESS") or None, "$RAY_ADDRESS"


def check_address(address: str | None = None) -> None:
    """Fail fast (within :data:`CONNECT_TIMEOUT_S`) when ``address`` / ``$RAY_ADDRESS`` names a host
    that does not answer; a no-op without an address or when Ray is already initialised."""
    address, source = _address(address)
    if address and not ray.is_initialized():
        _check_reachable(address, source)


def connect(address: str | None = None) -> None:
    """Attach to ``address`` / ``$RAY_ADDRESS`` (a cluster, or the job's cluster under ``ray job
    submit``), else start a local Ray instance. No-op when Ray is already initialised.

    Raises:
        ClusterUnreachable: the address cannot be reached within :data:`CONNECT_TIMEOUT_S` (or Ray
            finds no cluster there).
    """
    global _started_local
    if ray.is_initialized():
        return
    address, source = _address(address)
    if address:
        _check_reachable(address, source)
        try:
            ray.init(address=address)
        except (ConnectionError, TimeoutError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ClusterUnreachable(
                f"cannot attach to the Ray cluster at {source}={address}: {first}"
            ) from None
    else:
        _start_local()
        _started_local = True


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_local() -> None:
    """A Ray instance of this run's own: its own temp dir and dashboard port, never another instance
    on the machine. The dashboard (loopback only) serves the state API that Ray Train's controller
    and placement-group cleaner poll; they find it through ``$RAY_API_SERVER_ADDRESS`` (inherited by
    every worker), where they would otherwise look for "the" local instance and, finding two, fail
    (the cleaner's thread dies, and with it the freeing of placement groups)."""
    port = _free_port()
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    temp_dir = os.path.join(tempfile.gettempdir(), "raycontrast-ray", str(os.getpid()))
    print("[raycontrast] starting Ray (a local instance of this run's own)", flush=True)
    ray.init(
        address="local",
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=port,
        _temp_dir=temp_dir,
    )


def shutdown_local() -> None:
    """Stop the local Ray instance :func:`connect` started (flushing its actors' log lines to the
    console); instances started or attached elsewhere are left alone."""
    global _started_local
    if _started_local and ray.is_initialized():
        ray.shutdown()
    if _started_local:
        os.environ.pop("RAY_API_SERVER_ADDRESS", None)
    _started_local = False


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
    registered = _registered_dir(run_dir)
    if registered is not None and not (registered / "state.pt").is_file():
        from raycontrast.models import CheckpointError

        what = "is missing" if not registered.exists() else "has no state.pt"
        raise CheckpointError(
            f"{registered}: the checkpoint a rerun of {cfg.name!r} resumes from {what} (registered "
            f"in {Path(run_dir) / 'checkpoint_manager_snapshot.json'}); restore it, or choose "
            "another name for a new run"
        )
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


def _registered_dir(run_dir: str) -> Path | None:
    """The latest checkpoint directory Ray Train registered for the run in ``run_dir`` (whether or
    not it still holds a checkpoint), if any."""
    snapshot = Path(run_dir) / "checkpoint_manager_snapshot.json"
    try:
        latest = json.loads(snapshot.read_text())["latest_checkpoint_result"]
        return Path(run_dir) / latest["checkpoint_dir_name"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # nothing registered (yet): nothing to resume


def _registered_checkpoint(run_dir: str) -> Path | None:
    """The latest registered checkpoint directory, if it holds a ``state.pt``."""
    path = _registered_dir(run_dir)
    return path if path is not None and (path / "state.pt").exists() else None


def run_dir_of(cfg: ExperimentConfig) -> str:
    """``<storage_path>/<name>``, absolute (or a URI)."""
    return storage.join(storage.resolve(cfg.storage_path), cfg.name)


def check_data(cfg: ExperimentConfig) -> None:
    """Fail on the driver, before any worker starts, on a missing dataset root or split."""
    dataset_info(cfg.data)
    if cfg.data.test_split in (cfg.data.train_split, cfg.data.val_split):
        raise ConfigError(
            f"data.test_split={cfg.data.test_split!r} is also the training or validation split; "
            "the test split must be one no run trains on or selects by (e.g. test), or '' for none"
        )
    for split in (cfg.data.train_split, cfg.data.val_split, cfg.data.test_split):
        if split:
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
    from ray.train import (
        CheckpointConfig,
        FailureConfig,
        RunConfig,
        TrainingFailedError,
    )
    from ray.train.torch import TorchConfig

    from raycontrast.train.failures import Trainer, patient_start
    from raycontrast.train.preflight import check_resources, preflight

    t0 = time.perf_counter()
    check_address(address)  # an unreachable cluster fails in seconds, before the other checks
    print(f"[{cfg.name}] checking config, data, model and trackers", flush=True)
    checked = preflight(cfg, cluster=False)  # every check that needs no cluster, before connecting
    for warning in checked.warnings:
        print(f"[{cfg.name}] warning: {warning}", flush=True)
    storage_path = storage.resolve(cfg.storage_path)
    run_dir = storage.join(storage_path, cfg.name)
    finished = _finished_summary(cfg, run_dir)
    if finished is not None and not callbacks:
        return _print_finished(cfg, run_dir, finished)
    connect(address)
    check_resources(cfg)
    storage.makedirs(run_dir)

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
            world_size=max(cfg.train.max_workers, 1),  # each worker group sets its own
            snapshot_uri=storage.join(run_dir, "bank", "snapshot.pt"),
            snapshot_every=cfg.bank.snapshot_every,
            wait=False,
            shards=cfg.bank.shards,
        )

    datasets = {}
    if cfg.data.ingest == "ray_data":
        from raycontrast.data import read_parquet_ray

        datasets["train"] = read_parquet_ray(cfg.data.parquet_dir, cfg.data.train_split)

    patient_start()  # a slow worker-group start is waited for, not failed
    trainer = Trainer(
        train_loop_per_worker,
        train_loop_config={
            "experiment": config_to_dict(cfg),
            "run_dir": run_dir,
            "bank_actor": actor_name,
        },
        scaling_config=scaling_config(cfg),
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
        f"[{cfg.name}] training {cfg.train.iterations} iterations on {_describe_workers(cfg)}, "
        f"bank {cfg.bank.mode if uses_bank else 'off'}; run dir {run_dir}",
        flush=True,
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
    del actor
    if trainer.interrupted:
        raise _interrupted(cfg, run_dir)
    if result.error is not None and result.return_value is None:
        _raise_user_error(result.error)
        raise WorkerFailure(_failure_line(cfg, run_dir, result.error))
    if finished is not None:  # a Tune trial of a finished run: keep its record
        return _print_finished(cfg, run_dir, finished)
    if result.return_value is None and result.error is None:
        raise _interrupted(cfg, run_dir)
    out = result.return_value or {}
    if str(out.get("status", "")).startswith("stopped"):
        raise NonFiniteLoss(
            f"{cfg.name}: {out['status']}; set train.on_nonfinite=skip to skip such steps"
        )
    summary = _summarise(cfg, run_dir, out, result, time.perf_counter() - t0)
    return summary


def _interrupted(cfg: ExperimentConfig, run_dir: str) -> TrainingInterrupted:
    """The one line a Ctrl-C gets: the run is kept, and how to resume it."""
    latest = _registered_checkpoint(run_dir) if not storage.is_uri(run_dir) else None
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


def dry_run(cfg: ExperimentConfig, address: str | None = None) -> Any:
    """``raycontrast train --dry-run``: every check of a run, then print the resolved config and the
    resources it would take. Attaches to ``address`` / ``$RAY_ADDRESS`` when given (to compare with
    that cluster), else compares with what a local Ray instance would offer, without starting one.

    Returns:
        The :class:`~raycontrast.train.preflight.Preflight` report.
    """
    from raycontrast.train.preflight import check_resources, local_capacity, preflight

    check_address(address)
    print(
        f"[{cfg.name}] checking config, storage, data, model, checkpoint and trackers", flush=True
    )
    report = preflight(cfg, cluster=False)
    if address or os.environ.get("RAY_ADDRESS") or ray.is_initialized():
        connect(address)
        report.resources, report.cluster = check_resources(cfg)
    else:
        report.resources, report.cluster = check_resources(cfg, available=local_capacity())
    print(report.describe(), flush=True)
    print(f"[{cfg.name}] dry run: every check passed; run dir {run_dir_of(cfg)}", flush=True)
    return report


def _summarise(
    cfg: ExperimentConfig, run_dir: str, out: dict, result, wall_s: float
) -> dict[str, Any]:
    from raycontrast.eval import format_table

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
    _plots(run_dir, names, metrics.get("IoU"))
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
