"""Experiment tracking: MLflow and Weights & Biases, switched on by ``log.mlflow.tracking_uri`` and
``log.wandb.project`` (see docs/how-to/tracking.md).

Following Ray Train V2's experiment-tracking guide, rank 0 calls the trackers' own clients from the
worker (:class:`~raycontrast.train._logger.RunLogger` forwards its rows); the driver reopens the same
tracked run at the end for the summary and the plots. The tracked run's ids live in
``<run dir>/tracking.json``, so a resumed run continues the same tracked run. Sweeps and studies
open a parent run (:func:`start_group`); every trial sets ``log.group`` and nests under it.

A tracker that fails mid-run prints one warning and is switched off for the rest of the run:
training never stops for a tracker. :func:`check_trackers` (called by preflight) fails before any
worker starts when a tracker is not installed, not reachable or not logged in.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from raycontrast import storage
from raycontrast.config import ConfigError, ExperimentConfig, config_to_dict

__all__ = [
    "IDS_FILE",
    "MlflowTracker",
    "Tracker",
    "Tracking",
    "WandbTracker",
    "check_trackers",
    "flatten_params",
    "open_tracking",
    "start_group",
]

IDS_FILE = "tracking.json"
"""In the run (or sweep / study) directory: the tracked run's id in each tracker."""

PARENT_ROLE = "parent"
CHECK_TIMEOUT_S = 5


class Tracker(Protocol):
    """One experiment tracker. ``start`` opens (or with ``run_id`` resumes) a run and returns its id."""

    kind: str
    where: str

    def start(
        self, name: str, run_id: str | None = None, group: str | None = None, parent: bool = False
    ) -> str: ...

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_artifact(self, path: str | Path, folder: str = "") -> None: ...

    def finish(self, ok: bool = True) -> None: ...


def flatten_params(cfg: ExperimentConfig) -> dict[str, str]:
    """The resolved config as ``{"model.backbone": "resnet18", ...}`` (tracker params are text)."""
    out: dict[str, str] = {}

    def walk(d: Mapping[str, Any], prefix: str) -> None:
        for key, value in d.items():
            if isinstance(value, Mapping):
                walk(value, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = "null" if value is None else str(value)

    walk(config_to_dict(cfg), "")
    return out


def _finite(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool):
            value = float(value)
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[key] = float(value)
    return out


# ------------------------------------------------------------------------------------------- MLflow


_MLFLOW_KEY = re.compile(r"[^\w\-. /]")


class MlflowTracker:
    """MLflow through ``MlflowClient`` (no global active run: safe in a Ray worker)."""

    kind = "mlflow"

    def __init__(self, tracking_uri: str, experiment: str):
        from mlflow.tracking import MlflowClient

        self.where = f"log.mlflow.tracking_uri={tracking_uri}"
        self.client = MlflowClient(tracking_uri)
        self.experiment = experiment
        self.run_id: str | None = None

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(self.experiment)
        except Exception:  # another trial created it meanwhile
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return found.experiment_id

    def parent_of(self, group: str) -> str | None:
        """The id of the sweep's or study's parent run, if one was started."""
        runs = self.client.search_runs(
            [self._experiment_id()],
            filter_string=f"tags.raycontrast_group = '{group}' and tags.raycontrast_role = '{PARENT_ROLE}'",
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def start(
        self, name: str, run_id: str | None = None, group: str | None = None, parent: bool = False
    ) -> str:
        if run_id is not None:
            self.client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
            return run_id
        tags = {}
        if group:
            tags["raycontrast_group"] = group
            if parent:
                tags["raycontrast_role"] = PARENT_ROLE
            else:
                parent_id = self.parent_of(group)
                if parent_id:
                    tags["mlflow.parentRunId"] = parent_id
        run = self.client.create_run(self._experiment_id(), run_name=name, tags=tags)
        self.run_id = run.info.run_id
        return self.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(_MLFLOW_KEY.sub("_", k), str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(_MLFLOW_KEY.sub("_", k), v, now, int(step)) for k, v in _finite(metrics).items()
        ]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def log_artifact(self, path: str | Path, folder: str = "") -> None:
        self.client.log_artifact(self.run_id, str(path), folder or None)

    def finish(self, ok: bool = True) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")


# -------------------------------------------------------------------------------- Weights & Biases


class WandbTracker:
    """Weights & Biases; ``offline`` writes the run under ``<dir>/wandb/`` for ``wandb sync``."""

    kind = "wandb"

    def __init__(self, project: str, mode: str, directory: str):
        self.where = f"log.wandb.project={project} (mode {mode})"
        self.project, self.mode, self.dir = project, mode, directory
        self.run: Any = None

    def start(
        self, name: str, run_id: str | None = None, group: str | None = None, parent: bool = False
    ) -> str:
        import wandb

        os.makedirs(self.dir, exist_ok=True)
        self.run = wandb.init(
            project=self.project,
            mode=self.mode,
            id=run_id or secrets.token_hex(4),
            resume="allow",
            name=name,
            group=group,
            job_type=PARENT_ROLE if parent else "train",
            dir=self.dir,
            reinit="create_new",
            settings=wandb.Settings(
                silent=True, console="off", x_disable_stats=True, disable_git=True
            ),
        )
        # metrics carry their own iteration: a resumed run may log an iteration again
        self.run.define_metric("iteration")
        self.run.define_metric("*", step_metric="iteration")
        return self.run.id

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.run.config.update(dict(params), allow_val_change=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log({**_finite(metrics), "iteration": int(step)})

    def log_artifact(self, path: str | Path, folder: str = "") -> None:
        dest = Path(self.run.dir) / folder / Path(path).name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if Path(path).resolve() != dest.resolve():
            shutil.copyfile(path, dest)
        self.run.save(str(dest), base_path=self.run.dir, policy="now")

    def finish(self, ok: bool = True) -> None:
        self.run.finish(exit_code=0 if ok else 1)


# ------------------------------------------------------------------------------------ the session


def _warn(message: str) -> None:
    from raycontrast.train._logger import console

    console(message)


class _Safe:
    """A tracker whose failures warn once and switch it off: training goes on without it."""

    def __init__(self, tracker: Tracker, label: str):
        self.tracker, self.label, self.alive = tracker, label, True

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if not self.alive:
            return None
        try:
            return getattr(self.tracker, method)(*args, **kwargs)
        except Exception as err:  # a tracker must never stop training
            self.alive = False
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            _warn(
                f"[{self.label}] warning: {self.tracker.kind} tracking at {self.tracker.where} "
                f"failed in {method} ({type(err).__name__}: {first}); training continues, "
                f"{self.tracker.kind} logging is off for the rest of this run"
            )
            return None


def _tracker_dir(run_dir: str) -> str:
    return run_dir if not storage.is_uri(run_dir) else tempfile.mkdtemp(prefix="raycontrast-wb-")


def build_trackers(cfg: ExperimentConfig, run_dir: str) -> list[Tracker]:
    """The trackers ``cfg.log`` switches on (none when both keys are unset)."""
    log = cfg.log
    out: list[Tracker] = []
    if log.mlflow.tracking_uri:
        # a server that is down must not stall a step for minutes of retries
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        out.append(MlflowTracker(log.mlflow.tracking_uri, log.mlflow.experiment))
    if log.wandb.project:
        out.append(WandbTracker(log.wandb.project, log.wandb.mode, _tracker_dir(run_dir)))
    return out


def _read_ids(folder: str) -> dict[str, str]:
    uri = storage.join(folder, IDS_FILE)
    try:
        return json.loads(storage.read_bytes(uri)) if storage.exists(uri) else {}
    except (OSError, ValueError):
        return {}


def _write_ids(folder: str, ids: Mapping[str, str]) -> None:
    storage.makedirs(folder)
    storage.write_bytes(storage.join(folder, IDS_FILE), json.dumps(dict(ids), indent=2).encode())


class Tracking:
    """Every switched-on tracker of one run, each behind a failure guard."""

    def __init__(self, trackers: list[_Safe]):
        self.trackers = trackers

    def __bool__(self) -> bool:
        return any(t.alive for t in self.trackers)

    def log_params(self, params: Mapping[str, Any]) -> None:
        for t in self.trackers:
            t.call("log_params", params)

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        for t in self.trackers:
            t.call("log_metrics", metrics, step)

    def log_artifacts(self, paths: Iterable[str | Path], folder: str = "") -> None:
        for path in paths:
            for t in self.trackers:
                t.call("log_artifact", path, folder)

    def finish(self, ok: bool = True) -> None:
        for t in self.trackers:
            t.call("finish", ok)


def _open(
    trackers: list[Tracker], folder: str, name: str, group: str | None, parent: bool, label: str
) -> tuple[Tracking, bool]:
    """Start or resume each tracker's run (ids in ``folder``); returns whether any run is new."""
    ids = _read_ids(folder)
    guarded, new = [], False
    for tracker in trackers:
        safe = _Safe(tracker, label)
        run_id = safe.call("start", name, ids.get(tracker.kind), group, parent)
        if run_id is None:
            continue
        new = new or tracker.kind not in ids
        ids[tracker.kind] = run_id
        guarded.append(safe)
    if guarded:
        _write_ids(folder, ids)
    return Tracking(guarded), new


def open_tracking(cfg: ExperimentConfig, run_dir: str) -> Tracking | None:
    """Rank 0 (and the driver at the end): open the run's tracked runs, resuming those whose ids
    ``<run dir>/tracking.json`` holds; a new run gets the resolved config as params."""
    trackers = build_trackers(cfg, run_dir)
    if not trackers:
        return None
    tracking, new = _open(trackers, run_dir, cfg.name, cfg.log.group, False, cfg.name)
    if new:
        tracking.log_params(flatten_params(cfg))
    return tracking


def start_group(cfg: ExperimentConfig, group: str, folder: str, kind: str) -> Tracking | None:
    """A sweep's or study's parent run (``kind``: sweep or study), resumed from ``folder``."""
    trackers = build_trackers(cfg, folder)
    if not trackers:
        return None
    tracking, _ = _open(trackers, folder, group, group, True, group)
    tracking.log_params({"raycontrast.kind": kind, "raycontrast.group": group})
    return tracking


def pngs(folder: str | Path) -> list[Path]:
    """The PNGs under ``folder`` (checkpoints and tracker folders left out), sorted."""
    root = Path(folder)
    if not root.is_dir():
        return []
    skip = ("checkpoint_", "wandb", "mlruns")
    return sorted(
        p for p in root.rglob("*.png") if not any(part.startswith(skip) for part in p.parts)
    )


# ---------------------------------------------------------------------------------------- preflight


def check_trackers(cfg: ExperimentConfig) -> None:
    """Fail before any worker starts when a switched-on tracker is not installed, cannot be
    reached at its URI within :data:`CHECK_TIMEOUT_S`, or (W&B online) has no login."""
    if cfg.log.mlflow.tracking_uri:
        _check_mlflow(cfg.log.mlflow.tracking_uri)
    if cfg.log.wandb.project:
        _check_wandb(cfg.log.wandb.project, cfg.log.wandb.mode)


def _check_mlflow(uri: str) -> None:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ConfigError(
            f"log.mlflow.tracking_uri={uri} is set but mlflow is not installed: "
            "pip install 'raycontrast[mlflow]' (or unset the key)"
        ) from None
    saved = {
        k: os.environ.get(k)
        for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")
    }
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(CHECK_TIMEOUT_S)
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise ConfigError(
            f"log.mlflow.tracking_uri={uri}: the MLflow tracking server does not answer "
            f"({type(err).__name__}: {first}); start it (mlflow server ...), fix the URI, or unset "
            "log.mlflow.tracking_uri"
        ) from None
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _check_wandb(project: str, mode: str) -> None:
    try:
        import wandb
    except ImportError:
        raise ConfigError(
            f"log.wandb.project={project} is set but wandb is not installed: "
            "pip install 'raycontrast[wandb]' (or unset the key)"
        ) from None
    if mode == "online" and not _wandb_logged_in(wandb):
        raise ConfigError(
            f"log.wandb.project={project} with log.wandb.mode=online needs a W&B login "
            "(`wandb login` or $WANDB_API_KEY); or set log.wandb.mode=offline"
        )


def finish_run(cfg: ExperimentConfig, run_dir: str, summary: Mapping[str, Any]) -> None:
    """The driver, after training: the final summary (``final/*`` metrics and ``summary.json``) and
    the run's PNGs go to the same tracked runs, which are then closed."""
    tracking = open_tracking(cfg, run_dir)
    if tracking is None:
        return
    final = {f"final/{k}": summary.get(k) for k in ("mIoU", "mAcc", "aAcc", "fwIoU", "wall_s")}
    for name, value in (summary.get("per_class_IoU") or {}).items():
        final[f"final/IoU/{name}"] = value
    tracking.log_metrics(final, int(summary.get("iterations") or 0))
    if not storage.is_uri(run_dir):
        tracking.log_artifacts([Path(run_dir) / "summary.json"])
        for path in pngs(Path(run_dir) / "plots"):
            tracking.log_artifacts([path], "plots")
    tracking.finish(ok=str(summary.get("status", "completed")) == "completed")


def _wandb_logged_in(wandb: Any) -> bool:
    """Whether W&B has an API key (environment, settings, .netrc), without prompting or network."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return bool(wandb.login(prompt=False, verify=False))
    except Exception:
        return False


def finish_group(tracking: Tracking | None, results_dir: str) -> None:
    """Attach a sweep's or study's results (``study.md``, tables, plots) to its parent run, close it."""
    if tracking is None:
        return
    root = Path(results_dir)
    if not storage.is_uri(results_dir) and root.is_dir():
        for pattern in ("*.md", "*.csv", "*.json", "*.yaml"):
            tracking.log_artifacts(sorted(root.glob(pattern)), "results")
        for path in pngs(root):
            tracking.log_artifacts([path], str(Path("results") / path.parent.relative_to(root)))
    tracking.finish()
