"""Multi-seed studies: named arms (a base experiment + overrides) x regimes x seeds, as Tune trials.

A study answers "does this change help, and by how much?" with the table a paper prints: every arm is
trained once per seed (and per regime, e.g. all labels vs 1/8 of them); a seed fixes the initial
weights, data order, augmentation and sampling streams, so arms run with one seed differ only by what
the arm changes, and each arm is compared with the reference arm by the paired difference over seeds.

Example study file::

    base: ../synthetic.yaml
    name: smoke
    overrides: [train.iterations=60]
    seeds: [0, 1]
    reference: ce_only
    arms:
      ce_only: {contrast.enabled: false}
      contrast: {}                       # the base experiment as it is
    regimes:                             # optional; default: one regime with no overrides
      all: {}
      scarce: {data.synthetic.num_train: 32}
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from raycontrast import storage
from raycontrast.config import (
    ConfigError,
    ExperimentConfig,
    coerce_key,
    config_from_dict,
    config_to_dict,
    did_you_mean,
    load_config,
    param,
    read_yaml_mapping,
)
from raycontrast.outputs import check_run_dir
from raycontrast.tune._trials import absolute_paths

__all__ = [
    "REPORTED_METRICS",
    "Study",
    "StudyConfig",
    "check_study",
    "describe_study",
    "format_override",
    "load_study",
]

# What every evaluation of a training run reports (val.csv, Tune); per-class IoU comes with them.
REPORTED_METRICS = ("mIoU", "mAcc", "aAcc", "fwIoU")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+]*$")
# keys a study sets itself: arms, regimes and common overrides may not
_RESERVED = ("train.seed", "name", "storage_path")


@dataclass
class StudyConfig:
    """The scalar fields of a study file (``seeds``, ``arms`` and ``regimes`` are checked apart)."""

    base: str = param("", "Experiment YAML every run starts from (relative to the study file).")
    name: str = param("study", "Study name: results go to <storage_path>/<name>/.")
    storage_path: str = param(
        "runs/studies", "Where studies go (local folder, NFS path, s3:// URI)."
    )
    overrides: list[str] = param([], "key=value overrides applied to every arm.")
    reference: str = param("", "The arm every other arm is compared with (paired over seeds).")
    metric: str = param("mIoU", "Validation metric the study compares (final and best value).")
    confidence: float = param(0.95, "Confidence level of the intervals.", gt=0.0, lt=1.0)
    max_concurrent_trials: int = param(
        0,
        "Runs at once; 0: as many as the cluster's CPUs fit (per run: trial_cpus + workers).",
        ge=0,
    )
    trial_cpus: float = param(
        0.25, "CPUs of each run's driver (Train workers take their own).", ge=0
    )
    max_failures: int = param(1, "Retries of a failed run (it resumes from its checkpoint).", ge=0)


@dataclass(frozen=True)
class Cell:
    """One run of the study: an arm in a regime with a seed."""

    arm: str
    regime: str
    seed: int

    @property
    def run_name(self) -> str:
        regime = f"{self.regime}-" if self.regime else ""
        return f"{regime}{self.arm}-s{self.seed}"


@dataclass
class Study:
    """A validated study file."""

    config: StudyConfig
    seeds: list[int]
    arms: dict[str, dict[str, Any]]
    regimes: dict[str, dict[str, Any]]
    path: Path
    base_path: Path
    extra_overrides: list[str] = field(default_factory=list)
    cwd: str = field(default_factory=os.getcwd)  # where relative paths were meant from

    @property
    def root(self) -> str:
        """``<storage_path>/<name>``: Tune's experiment folder; runs go to ``runs/`` inside."""
        return storage.join(storage.resolve(self.config.storage_path), self.config.name)

    @property
    def results_dir(self) -> str:
        return storage.join(self.root, "results")

    def cells(self) -> list[Cell]:
        """Every run, seed-major: a study cut short holds whole seeds (all arms, all regimes)."""
        return [
            Cell(arm, regime, seed)
            for seed in self.seeds
            for regime in self.regimes
            for arm in self.arms
        ]

    def cell(self, run_name: str) -> Cell:
        for c in self.cells():
            if c.run_name == run_name:
                return c
        raise KeyError(f"{run_name!r} is not a run of study {self.config.name!r}")

    def experiment(self, arm: str, regime: str = "", seed: int | None = None) -> ExperimentConfig:
        """The experiment of an arm in a regime (with ``seed``: the run itself, named and placed)."""
        overrides = [*self.config.overrides, *self.extra_overrides]
        overrides += [format_override(k, v) for k, v in self.regimes[regime].items()]
        overrides += [format_override(k, v) for k, v in self.arms[arm].items()]
        if seed is not None:
            cell = Cell(arm, regime, seed)
            overrides += [
                f"train.seed={seed}",
                f"name={self.config.name}_{cell.run_name}",
                f"log.group={self.config.name}",  # trials nest under the study's tracked run
                f"storage_path={storage.join(self.root, 'runs')}",
            ]
        return absolute_paths(load_config(self.base_path, overrides), self.cwd)

    def run_config(self, cell: Cell) -> ExperimentConfig:
        return self.experiment(cell.arm, cell.regime, cell.seed)

    def run_dir(self, cell: Cell) -> str:
        return storage.join(self.root, "runs", f"{self.config.name}_{cell.run_name}")


def format_override(key: str, value: Any) -> str:
    """``key=value`` with the value written as YAML (what :func:`load_config` parses back)."""
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return f"{key}={text.removesuffix('...').strip()}"


def _comparable(cfg: ExperimentConfig) -> dict[str, Any]:
    out = config_to_dict(cfg)
    out.pop("name", None)
    out.pop("storage_path", None)
    return out


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _check_block(
    raw: Any, what: str, source: str, *, allow_empty_block: bool
) -> dict[str, dict[str, Any]]:
    """``arms`` / ``regimes``: a mapping of names to mappings of dotted config keys to values."""
    if raw is None and allow_empty_block:
        return {"": {}}
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(
            f"{source}: '{what}' must be a non-empty mapping of names to overrides, e.g. "
            f"{what}: {{ce_only: {{contrast.enabled: false}}, contrast: {{}}}}"
        )
    out: dict[str, dict[str, Any]] = {}
    for name, overrides in raw.items():
        label = f"{source}: {what[:-1]} {name!r}"
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(
                f"{label}: names are letters, digits, '_', '.', '+' (they name run directories)"
            )
        overrides = {} if overrides is None else overrides
        if not isinstance(overrides, dict):
            raise ConfigError(
                f"{label}: expected a mapping of config keys to values (e.g. "
                f"{{contrast.memory: none}}), got {overrides!r}"
            )
        checked = {}
        for key, value in overrides.items():
            if key in _RESERVED:
                raise ConfigError(
                    f"{label}: {key!r} is set by the study itself (seeds come from 'seeds')"
                )
            try:
                checked[key] = coerce_key(str(key), value)
            except ConfigError as err:
                raise ConfigError(f"{label}: key {key!r}: {err}") from None
        out[name] = checked
    return out


def _check_seeds(raw: Any, source: str) -> list[int]:
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = list(range(raw))
    if not isinstance(raw, list) or not all(
        isinstance(s, int) and not isinstance(s, bool) for s in raw
    ):
        raise ConfigError(
            f"{source}: 'seeds' must be a list of integers (or a count n for 0..n-1), got {raw!r}"
        )
    if len(set(raw)) != len(raw):
        raise ConfigError(f"{source}: 'seeds' repeats a seed: {raw!r}")
    if len(raw) < 2:
        raise ConfigError(
            f"{source}: 'seeds' has {len(raw)} seed(s); a study needs at least 2 to estimate the "
            "spread (intervals, paired tests); 5 or more for useful intervals"
        )
    return raw


def load_study(path: str | Path, extra_overrides: list[str] | tuple[str, ...] = ()) -> Study:
    """Read and validate a study file; every arm x regime experiment is built (and so validated).

    Raises:
        ConfigError: naming the arm/regime and key: unknown keys, values the config rejects, an arm
            that changes nothing (an override equal to the value it already has, or two arms with
            the same experiment), a reference arm that does not exist, fewer than 2 seeds, or a
            metric training never reports.
    """
    path = Path(path).resolve()
    raw = read_yaml_mapping(path, "study")
    source = str(path)
    if "seeds" not in raw:
        raise ConfigError(f"{source}: 'seeds' is required (a list of at least 2 seeds)")
    seeds = _check_seeds(raw.pop("seeds"), source)
    arms = _check_block(raw.pop("arms", None), "arms", source, allow_empty_block=False)
    regimes = _check_block(raw.pop("regimes", None), "regimes", source, allow_empty_block=True)
    extra = list(extra_overrides)
    for item in list(extra):  # `name=` / `storage_path=` on the command line name the study
        key, _, value = item.partition("=")
        if key.strip() in ("name", "storage_path"):
            raw[key.strip()] = value
            extra.remove(item)
    cfg = config_from_dict(StudyConfig, raw, source=source)
    cfg.storage_path = storage.resolve(cfg.storage_path)  # trials run in their own directories
    check_run_dir(cfg.storage_path, cfg.name, f"{source}: name")
    _check_header(cfg, arms, [*cfg.overrides, *extra], source)
    base_path = (path.parent / cfg.base).resolve()
    study = Study(cfg, seeds, arms, regimes, path, base_path, extra)
    try:
        common = _flatten(_comparable(load_config(base_path, [*cfg.overrides, *extra])))
    except ConfigError as err:
        raise ConfigError(f"{source}: base {cfg.base!r} + overrides: {err}") from None
    _check_changes(study, common, regimes, "regime", source)
    _check_changes(study, common, arms, "arm", source)
    _check_distinct_arms(study, source)
    return study


def _check_header(
    cfg: StudyConfig, arms: dict[str, Any], overrides: list[str], source: str
) -> None:
    """The study-level keys: base, name, metric, reference arm, no seed overrides."""
    if not cfg.base:
        raise ConfigError(
            f"{source}: 'base' (the experiment YAML every arm starts from) is required"
        )
    if not _NAME.match(cfg.name):
        raise ConfigError(f"{source}: name {cfg.name!r}: letters, digits, '_', '.', '+' only")
    if cfg.metric not in REPORTED_METRICS:
        raise ConfigError(
            f"{source}: metric {cfg.metric!r} is never reported by a training run; runs report "
            f"{', '.join(REPORTED_METRICS)} (and per-class IoU) at every evaluation"
            + did_you_mean(cfg.metric, REPORTED_METRICS)
        )
    if cfg.reference not in arms:
        raise ConfigError(
            f"{source}: reference arm {cfg.reference!r} is not one of the arms "
            f"({', '.join(arms)})" + did_you_mean(cfg.reference, arms)
        )
    for item in overrides:
        if item.partition("=")[0].strip() == "train.seed":
            raise ConfigError(f"{source}: override {item!r}: seeds come from 'seeds'")


def _check_distinct_arms(study: Study, source: str) -> None:
    """Every arm builds a valid experiment, and no two arms build the same one (per regime)."""
    for regime in study.regimes:
        seen: dict[str, str] = {}
        for arm in study.arms:
            try:
                cfg_ = study.experiment(arm, regime)
            except ConfigError as err:
                where = f"arm {arm!r}" + (f" in regime {regime!r}" if regime else "")
                raise ConfigError(f"{source}: {where}: {err}") from None
            key = yaml.safe_dump(_comparable(cfg_), sort_keys=True)
            if key in seen:
                raise ConfigError(
                    f"{source}: arm {arm!r} changes nothing: its experiment is the same as arm "
                    f"{seen[key]!r}'s" + (f" (regime {regime!r})" if regime else "")
                )
            seen[key] = arm


def _check_changes(
    study: Study, common: dict[str, Any], blocks: dict[str, dict[str, Any]], what: str, source: str
) -> None:
    """An override setting a key to the value it already has is a mistake worth naming."""
    for name, overrides in blocks.items():
        for key, value in overrides.items():
            if key in common and common[key] == value:
                raise ConfigError(
                    f"{source}: {what} {name!r}: {key}={value!r} changes nothing (the base "
                    f"experiment already has it); remove it, or set the value the {what} should test"
                )


def per_run_cpus(study: Study) -> float:
    """CPUs one run holds: its driver plus its Train workers (the largest over arms and regimes)."""
    need = 0.0
    for regime in study.regimes:
        for arm in study.arms:
            t = study.experiment(arm, regime).train
            need = max(need, max(t.max_workers, 1) * t.cpus_per_worker)
    return study.config.trial_cpus + need


def _is_finite(x: Any) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def study_dict(study: Study) -> dict[str, Any]:
    """What the study file said, resolved (written next to the results)."""
    return {
        **dataclasses.asdict(study.config),
        "seeds": study.seeds,
        "arms": study.arms,
        "regimes": {k: v for k, v in study.regimes.items() if k},
        "study_file": str(study.path),
    }


def check_study(study: Study, address: str | None = None, cluster: bool = True) -> list[Any]:
    """Every check of a study before any run starts (``raycontrast study --dry-run`` and
    :func:`run_study`): each arm x regime experiment's preflight (data, model on the meta device,
    storage, a rerun's checkpoint, the metric) and one run's resources against the cluster
    (``address`` / ``$RAY_ADDRESS`` when given, else what a local Ray instance would offer).

    Returns:
        One :class:`~raycontrast.train.preflight.Preflight` per arm x regime.
    """
    from raycontrast.train.preflight import check_capacity, check_storage, preflight

    check_storage(study.config.storage_path)
    reports = []
    total = len(study.regimes) * len(study.arms)
    for regime in study.regimes:
        for arm in study.arms:
            where = f"arm {arm!r}" + (f" in regime {regime!r}" if regime else "")
            print(
                f"[{study.config.name}] checking {where} ({len(reports) + 1}/{total})", flush=True
            )
            try:
                reports.append(
                    preflight(
                        study.run_config(Cell(arm, regime, study.seeds[0])),
                        metrics=[(study.config.metric, "study metric")],
                        driver_cpus=study.config.trial_cpus,
                        cluster=False,
                    )
                )
            except ConfigError as err:
                raise type(err)(f"{study.path}: {where}: {err}") from None
    if cluster and reports:
        check_capacity(reports, address, study.config.trial_cpus)
    return reports


def describe_study(study: Study) -> str:
    """The plan ``--dry-run`` prints: arms, regimes, seeds, runs and where results go."""
    lines = [f"study {study.config.name!r}: base {study.base_path}"]
    for name, over in study.arms.items():
        ref = " (reference)" if name == study.config.reference else ""
        text = ", ".join(f"{k}={v}" for k, v in over.items()) or "the base experiment"
        lines.append(f"  arm {name}{ref}: {text}")
    for name, over in study.regimes.items():
        if name:
            text = ", ".join(f"{k}={v}" for k, v in over.items()) or "no overrides"
            lines.append(f"  regime {name}: {text}")
    cells = study.cells()
    lines.append(
        f"  seeds {study.seeds}: {len(cells)} runs of {per_run_cpus(study):g} CPUs each; "
        f"metric {study.config.metric} (final and best), results in {study.results_dir}"
    )
    return "\n".join(lines)
