"""Checks the driver runs before Ray Train starts any worker (and what ``--dry-run`` prints).

A mistake found inside the workers costs a worker-group start, ``train.max_failures`` retries and a
traceback; found here it is one line naming the key. :func:`preflight` runs every check:

* the config's warnings (valid settings that are probably a mistake);
* storage (a relative ``storage_path`` under ``ray job submit``), the run name (a plain folder name:
  the run stays inside ``storage_path``) and a run folder apart from every input;
* the dataset root and splits, and its files (:mod:`raycontrast.data.check`: every header, the
  first and some random samples decoded, Parquet schemas and row counts);
* the model, built on the ``meta`` device (no memory, no compute; well under a second for HRNet-W48):
  unknown backbone (with close timm names), an ``output_stride`` the backbone cannot produce, bad
  ``out_indices``, heads that do not fit, a ``model.pretrained`` file that is missing or whose keys or
  shapes do not fit the backbone;
* ``bank.shards`` against the class count (every shard must own a class);
* a rerun's checkpoint against the config (architecture and class count);
* the experiment trackers (``log.mlflow``, ``log.wandb``): installed, reachable, logged in;
* the metrics a sweep or study optimises, against what training reports;
* the resources: ``train.num_workers`` x (``train.cpus_per_worker`` CPUs, 1 GPU) (+ a trial driver's
  CPUs) against the cluster (``ray.cluster_resources()``, or an autoscaling cluster's maximum).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from raycontrast import storage
from raycontrast.config import (
    ConfigError,
    ExperimentConfig,
    config_to_dict,
    config_warnings,
    did_you_mean,
)
from raycontrast.data import build_dataset, dataset_info
from raycontrast.train._cluster import capacity, cluster_capacity

__all__ = [
    "BANK_METRICS",
    "REPORTED_METRICS",
    "Preflight",
    "check_bank",
    "check_capacity",
    "check_data",
    "check_metric",
    "check_model",
    "check_resources",
    "check_resume",
    "check_storage",
    "preflight",
    "requested_resources",
    "run_dir_of",
]

REPORTED_METRICS = ("iteration", "epoch", "mIoU", "mAcc", "aAcc", "fwIoU", "best_mIoU", "loss")
"""What every evaluation of a training run reports (``ray.train.report``, Tune)."""
BANK_METRICS = ("bank_bytes_per_step", "bank_entries", "bank_replicas_identical")
"""Reported in addition when the run has a shared memory bank."""
_TUNE_METRICS = ("training_iteration", "time_total_s", "time_this_iter_s")


@dataclass
class Preflight:
    """What the checks found: the resolved config, the model size and the resources a run takes.

    Args:
        config: the experiment.
        num_classes: classes of the dataset.
        parameters: trainable parameters of the model (with its projection head when used).
        resources: what the run asks for (``CPU``, ``GPU``; a Tune trial's driver CPUs included).
        cluster: what the cluster offers (``None`` when Ray was not consulted).
        warnings: the config's warnings.
    """

    config: ExperimentConfig
    num_classes: int
    parameters: int
    resources: dict[str, float]
    cluster: dict[str, float] | None = None
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """The resolved config (YAML) and the resources, as ``--dry-run`` prints them."""
        cfg = self.config
        t = cfg.train
        workers = (
            f"{t.min_workers}-{t.max_workers} workers, elastic"
            if t.elastic
            else f"{t.num_workers} worker(s)"
            if t.num_workers
            else "local mode: the loop runs in the driver"
        )
        lines = [
            yaml.safe_dump(config_to_dict(cfg), sort_keys=False).rstrip(),
            "",
            f"model: {cfg.model.backbone} + {cfg.model.head}, {self.num_classes} classes, "
            f"{self.parameters / 1e6:.2f}M parameters",
            f"resources: {_describe_resources(self.resources)} ({workers})"
            + (f"; cluster offers {_describe_resources(self.cluster)}" if self.cluster else ""),
        ]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _describe_resources(res: Mapping[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in res.items() if k in ("CPU", "GPU")) or "nothing"


def check_model(cfg: ExperimentConfig, num_classes: int) -> int:
    """Build the model on the ``meta`` device (no weights are allocated); returns its parameter count.

    A local ``model.pretrained`` file is read and its keys and shapes checked against the backbone.
    ``model.pretrained=true`` (the hub) is not downloaded here: it fails unless the weights are cached
    or the hub answers (``HF_HUB_OFFLINE`` set counts as no answer).

    Raises:
        ModelError: unknown backbone, unsupported ``output_stride`` or ``out_indices``, a head that
            does not fit the backbone, a missing or unfitting pretrained file.
    """
    import dataclasses

    from raycontrast.models import build_segmentor
    from raycontrast.models.hub import check_hub_weights

    model_cfg = cfg.model
    if model_cfg.pretrained is True:
        import timm

        if timm.is_model(model_cfg.backbone):  # an unknown name is reported by the build below
            check_hub_weights(model_cfg.backbone)
        model_cfg = dataclasses.replace(model_cfg, pretrained=False)
    with warnings.catch_warnings():
        # loading a weights file into meta tensors is a (wanted) no-op that torch warns about
        warnings.simplefilter("ignore", UserWarning)
        with torch.device("meta"):
            model = build_segmentor(model_cfg, num_classes, projection=cfg.contrast.enabled)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def check_metric(metric: str, cfg: ExperimentConfig | None = None, what: str = "metric") -> None:
    """Refuse a metric that training never reports (a sweep on it would record NaN for every trial).

    Args:
        metric: the metric name (``mIoU``, ...).
        cfg: the experiment (bank metrics count only when it has a bank).
        what: how the caller names the field in messages (``"sweep metric"``, ``"scheduler.time_attr"``).
    """
    known = [*REPORTED_METRICS, *_TUNE_METRICS]
    uses_bank = cfg is None or bool(cfg.bank_kinds)
    if uses_bank:
        known += BANK_METRICS
    if metric in known:
        return
    same = [k for k in known if k.lower() == str(metric).lower()]
    hint = f"; did you mean {same[0]!r}?" if same else did_you_mean(metric, known)
    raise ConfigError(
        f"{what} {metric!r} is never reported by training{hint} (reported: "
        f"{', '.join(REPORTED_METRICS)}{', ' + ', '.join(BANK_METRICS) if uses_bank else ''})"
    )


def requested_resources(cfg: ExperimentConfig, driver_cpus: float = 0.0) -> dict[str, float]:
    """CPUs and GPUs a run takes: its Train workers (``num_workers=0`` runs in the driver; an elastic
    ``[min, max]`` run needs ``min`` to start) plus ``driver_cpus`` (a Tune trial's driver)."""
    workers = cfg.train.min_workers
    res = {"CPU": workers * cfg.train.cpus_per_worker + driver_cpus}
    if cfg.train.use_gpu:
        res["GPU"] = float(max(workers, 1))
    return res


def check_resources(
    cfg: ExperimentConfig,
    driver_cpus: float = 0.0,
    available: Mapping[str, float] | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """Refuse a run the cluster can never place, naming the numbers.

    Args:
        cfg: the experiment.
        driver_cpus: CPUs of a Tune trial's driver, on top of the workers.
        available: the cluster's resources (default: asked from the connected Ray cluster).

    Returns:
        ``(requested, available)``.
    """
    need = requested_resources(cfg, driver_cpus)
    have = dict(available) if available is not None else cluster_capacity()
    t = cfg.train
    if t.use_gpu and have.get("GPU", 0.0) < need["GPU"]:
        raise ConfigError(
            f"train.use_gpu=true asks for {need['GPU']:g} GPU(s) (one per worker, "
            f"train.num_workers={t.num_workers}) but the cluster has {have.get('GPU', 0.0):g}; set "
            "train.use_gpu=false, or run on a cluster with GPUs (--address)"
        )
    if need["CPU"] > have.get("CPU", 0.0) + 1e-9:
        driver = f" + {driver_cpus:g} for the trial's driver" if driver_cpus else ""
        raise ConfigError(
            f"train.num_workers={t.num_workers} x train.cpus_per_worker={t.cpus_per_worker:g}"
            f"{driver} = {need['CPU']:g} CPUs, but the cluster has {have.get('CPU', 0.0):g}; lower "
            "train.num_workers or train.cpus_per_worker (fractions such as 0.5 work)"
        )
    return need, have


def check_capacity(
    reports: Sequence[Preflight],
    address: str | None = None,
    driver_cpus: float = 0.0,
    start: bool = False,
) -> None:
    """Each report's resources against what the cluster offers (:func:`~raycontrast.train._cluster.
    capacity`: attaching to ``address`` / ``$RAY_ADDRESS``, starting a local instance when ``start``,
    else measuring one); fills in ``resources`` and ``cluster``."""
    available = capacity(address, start=start)
    for report in reports:
        report.resources, report.cluster = check_resources(report.config, driver_cpus, available)


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


def check_bank(cfg: ExperimentConfig, num_classes: int) -> None:
    """Every bank shard must own at least one class: ``bank.shards`` <= the dataset's class count."""
    if cfg.bank_kinds and cfg.bank.mode == "actor" and cfg.bank.shards > num_classes:
        raise ConfigError(
            f"bank.shards={cfg.bank.shards} exceeds the dataset's {num_classes} classes (each shard "
            f"owns the classes c % shards == s, so some would own none): set bank.shards to at most "
            f"{num_classes}"
        )


def run_dir_of(cfg: ExperimentConfig) -> str:
    """``<storage_path>/<name>``, absolute (or a URI)."""
    return storage.join(storage.resolve(cfg.storage_path), cfg.name)


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
    latest = registered_checkpoint(run_dir)
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


def registered_checkpoint(run_dir: str) -> Path | None:
    """The latest checkpoint directory Ray Train registered for the run, if it holds a ``state.pt``."""
    path = _registered_dir(run_dir)
    return path if path is not None and (path / "state.pt").exists() else None


def preflight(
    cfg: ExperimentConfig,
    metrics: Sequence[tuple[str, str]] = (),
    driver_cpus: float = 0.0,
    cluster: bool | None = None,
) -> Preflight:
    """Every check a run needs before Ray Train starts workers; raises on the first failure.

    ``raycontrast train/tune --dry-run`` and the study command call it; :func:`run_training` calls it
    before every run.

    Args:
        cfg: the experiment.
        metrics: ``(name, what)`` pairs a sweep or study optimises or schedules on, e.g.
            ``[("mIoU", "sweep metric"), ("iteration", "scheduler.time_attr")]``.
        driver_cpus: CPUs of a Tune trial's driver (sweeps, studies).
        cluster: check resources against the connected Ray cluster; ``None``: when Ray is initialised.

    Returns:
        A :class:`Preflight` (``describe()`` prints the resolved config and resources).

    Raises:
        ConfigError: (and its subclasses ModelError, CheckpointError) or DatasetError, naming the key
            or file.
    """
    from raycontrast.data.check import check_data_files
    from raycontrast.outputs import check_output, check_run_dir

    check_storage(cfg.storage_path)
    check_run_dir(cfg.storage_path, cfg.name)
    check_output(run_dir_of(cfg), cfg.input_paths(), "the run folder")
    check_data(cfg)
    files = check_data_files(cfg.data, seed=cfg.train.seed)
    num_classes = int(dataset_info(cfg.data).num_classes)
    check_bank(cfg, num_classes)
    parameters = check_model(cfg, num_classes)
    check_resume(cfg, run_dir_of(cfg))
    from raycontrast.train.tracking import check_trackers

    check_trackers(cfg)  # a tracker that is down or not installed, named by its URI
    for name, what in metrics:
        check_metric(name, cfg, what)
    need = requested_resources(cfg, driver_cpus)
    have = None
    if cluster is None:
        import ray

        cluster = ray.is_initialized()
    if cluster:
        need, have = check_resources(cfg, driver_cpus)
    found = [*config_warnings(cfg), *_data_warnings(files.problems)]
    return Preflight(cfg, num_classes, parameters, need, have, found)


def _data_warnings(problems: Sequence[str]) -> list[str]:
    """``data.on_bad_sample=skip``: the bad files preflight saw, as (at most a few) warnings."""
    if not problems:
        return []
    shown = "; ".join(problems[:3]) + (
        f"; ... ({len(problems)} in all)" if len(problems) > 3 else ""
    )
    return [f"data.on_bad_sample=skip will leave out bad samples: {shown}"]
