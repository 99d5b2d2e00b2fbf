"""Experiment configuration.

One dataclass per concern (model, data, contrast, bank, optim, train, eval, debug), composed into
:class:`ExperimentConfig`. Every field carries its documentation, its allowed choices and its range in
``dataclasses.field(metadata=...)`` (see :func:`param`), so validation and ``raycontrast config
--keys`` are derived from one place.

YAML files may inherit with ``_base_: other.yaml`` (a path relative to the file, or a list of paths; later
bases and the file itself win). Command-line overrides are dotted ``key=value`` pairs whose values are
parsed as YAML (``contrast.loss_weight=0.5``, ``data.crop_size=[256,256]``).

Example:
    >>> cfg = load_config(default_experiment(), ["train.iterations=20"])
    >>> cfg.train.iterations
    20
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from raycontrast import yaml_strict
from raycontrast.errors import ConfigError

__all__ = [
    "MEMORY_KINDS",
    "BankConfig",
    "ConfigError",
    "ContrastConfig",
    "DataConfig",
    "DebugConfig",
    "EvalConfig",
    "ExperimentConfig",
    "ModelConfig",
    "OptimConfig",
    "SyntheticConfig",
    "TrainConfig",
    "coerce_key",
    "config_from_dict",
    "config_keys",
    "config_to_dict",
    "config_warnings",
    "default_experiment",
    "describe_config",
    "did_you_mean",
    "load_config",
    "parse_overrides",
    "read_yaml_mapping",
    "save_config",
]


def default_experiment() -> Path:
    """The embedded default experiment (package data): what ``raycontrast train`` runs without CONFIG,
    wherever it is started from. The repository's ``experiments/synthetic.yaml`` inherits it."""
    return Path(__file__).resolve().parent / "experiments" / "synthetic.yaml"


DEFAULT_EXPERIMENT = str(default_experiment())


def param(
    default: Any,
    help: str,
    *,
    choices: Iterable[Any] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """A dataclass field with documentation, allowed choices and numeric bounds."""
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None}
    meta.update(ge=ge, gt=gt, le=le, lt=lt)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


# ----------------------------------------------------------------------------------------- sections


@dataclass
class ModelConfig:
    """Segmentor: a timm ``features_only`` backbone, a decode head and a training-only projection head."""

    backbone: str = param("resnet50", "timm model name used with features_only=True.")
    pretrained: bool | str = param(
        False,
        "false; true (timm hub, needs internet); or a path to a local weights file "
        "(.pth/.pt/.bin/.safetensors).",
    )
    output_stride: int | None = param(
        8,
        "Backbone output stride via dilation (8, 16, 32); null keeps the backbone's native strides.",
        choices=(8, 16, 32, None),
    )
    out_indices: list[int] | None = param(
        None, "Backbone feature levels to use (timm out_indices); null = all levels."
    )
    head: str = param("deeplabv3", "Decode head.", choices=("fcn", "deeplabv3", "fpn"))
    head_input: str = param(
        "last",
        "Input of the fcn / deeplabv3 head: the last backbone level, or all levels upsampled to the "
        "finest and concatenated (HRNetV2 style). fpn always reads all levels.",
        choices=("last", "concat"),
    )
    head_channels: int = param(256, "Channels inside the decode head.", ge=1)
    dropout: float = param(0.1, "Dropout before the classifier.", ge=0.0, lt=1.0)
    aux_head: bool = param(False, "Add an auxiliary FCN head on the second-to-last level.")
    proj_dim: int = param(256, "Projection-head output dimension D.", ge=1)
    proj_input: str = param(
        "last",
        "Projection-head input: the last backbone level, or all levels upsampled and "
        "concatenated (HRNet style).",
        choices=("last", "concat"),
    )


@dataclass
class SyntheticConfig:
    """The built-in procedurally generated dataset (no download)."""

    num_train: int = param(256, "Number of training images.", ge=1)
    num_val: int = param(48, "Number of validation images.", ge=1)
    num_test: int | None = param(
        None, "Number of test images (a stream apart from val's); null: num_val.", ge=1
    )
    image_size: list[int] = param([128, 128], "Image size [height, width].")
    seed: int = param(0, "Base seed; image i of a split is a pure function of (seed, split, i).")


@dataclass
class DataConfig:
    """Dataset, its on-disk source, ingestion and augmentation."""

    dataset: str = param(
        "synthetic",
        "Dataset layout.",
        choices=("synthetic", "cityscapes", "ade20k", "voc", "folder"),
    )
    root: str = param("", "Dataset root folder (its standard layout). Unused for synthetic.")
    train_split: str = param("train", "Split used for training.")
    val_split: str = param("val", "Split used for evaluation.")
    test_split: str = param(
        "",
        "Split evaluated once, after the last iteration, with the last weights (test.json and "
        "per-image counts in test_per_image.npz); never used to score checkpoints. '': none.",
    )
    source: str = param(
        "files",
        "Read the standard layout ('files') or Parquet shards written by `raycontrast convert` "
        "('parquet', from parquet_dir).",
        choices=("files", "parquet"),
    )
    parquet_dir: str = param("", "Folder holding <split>/ Parquet shards and manifest.json.")
    ingest: str = param(
        "torch",
        "Per-worker torch DataLoader ('torch') or Ray Data streaming of Parquet shards ('ray_data').",
        choices=("torch", "ray_data"),
    )
    num_classes: int | None = param(None, "Number of classes; null takes the dataset's.", ge=1)
    class_names: list[str] | None = param(
        None, "Class names for the 'folder' dataset (else read from <root>/classes.txt)."
    )
    ignore_index: int = param(255, "Label value excluded from loss, metrics and the bank.")
    voc_aug: bool = param(False, "Pascal VOC: use SegmentationClassAug masks when present.")
    crop_size: list[int] = param([512, 1024], "Training crop [height, width].")
    scale_range: list[float] = param([0.5, 2.0], "Random rescale range [min, max].")
    flip: bool = param(True, "Random horizontal flip.")
    color_jitter: float = param(
        0.25, "Photometric jitter strength (brightness/contrast/saturation); 0 disables.", ge=0.0
    )
    mean: list[float] = param([0.485, 0.456, 0.406], "Normalisation mean (RGB, 0-1 scale).")
    std: list[float] = param([0.229, 0.224, 0.225], "Normalisation std (RGB, 0-1 scale).")
    loader_workers: int = param(2, "torch DataLoader worker processes per Train worker.", ge=0)
    on_bad_sample: str = param(
        "error",
        "A corrupt or inconsistent sample: raise naming the file, or skip it (skips are counted).",
        choices=("error", "skip"),
    )
    check_masks: int = param(
        8,
        "Before workers start, every file's header is read and the first K samples plus K random "
        "others are decoded and their label values checked; this is K (0: headers only).",
        ge=0,
    )
    synthetic: SyntheticConfig = field(
        default_factory=SyntheticConfig, metadata={"help": "Built-in synthetic dataset."}
    )


MEMORY_KINDS: dict[str, tuple[str, ...]] = {
    "none": (),
    "pixel": ("pixel",),
    "region": ("region",),
    "both": ("pixel", "region"),
}
"""``contrast.memory`` -> the bank queues it keeps (the choices of ``contrast.memory``)."""


@dataclass
class ContrastConfig:
    """Pixel contrast (docs/concepts/spec.md): sampling, in-batch and memory terms, the memory bank's shape."""

    enabled: bool = param(True, "Add the pixel-contrast loss.")
    loss_weight: float = param(0.1, "Weight of the contrast loss.", ge=0.0)
    warmup_iters: int = param(
        5000, "Contrast loss is zero (with a graph) before this iteration.", ge=0
    )
    tau: float = param(0.1, "Temperature.", gt=0.0)
    tau_base: float = param(0.07, "Base temperature; the loss is scaled by tau / tau_base.", gt=0.0)
    max_samples: int = param(1024, "Anchor budget per batch (per worker).", ge=1)
    max_views: int = param(
        100, "Anchors per (image, class) at most; smaller classes are skipped.", ge=1
    )
    inbatch: bool = param(True, "Add the in-batch pixel-to-pixel term.")
    memory: str = param(
        "none",
        "Memory terms: none, pixel queue, region queue, or both.",
        choices=tuple(MEMORY_KINDS),
    )
    memory_size: int = param(5000, "Entries per class per queue.", ge=1)
    pixel_update_freq: int = param(10, "Pixels enqueued per (image, class) per step.", ge=1)
    memory_dtype: str = param(
        "float32", "Bank storage dtype.", choices=("float32", "float16", "bfloat16")
    )
    compute_dtype: str = param(
        "float32",
        "Operand dtype of the contrast kernel's similarity matmuls (memory_sampling=all and the "
        "in-batch term): bfloat16 halves the bytes and uses AVX-512 BF16 / AMX / tensor cores, "
        "with float32 accumulation and log-sum-exp. Independent of train.amp (the kernel runs "
        "outside autocast).",
        choices=("float32", "bfloat16"),
    )
    memory_sampling: str = param(
        "all",
        "Entries contrasted from memory.",
        choices=("all", "hardest", "semi_hard", "mixed"),
    )
    k: int = param(1024, "Entries per anchor for hardest / semi_hard / mixed.", ge=1)
    top_fraction: float = param(
        0.1, "semi_hard: fraction of hardest entries drawn from.", gt=0.0, le=1.0
    )
    hard_fraction: float = param(
        0.5, "mixed: fraction of k that are hardest negatives.", ge=0.0, le=1.0
    )
    reset_every_epoch: bool = param(False, "Empty the bank at the start of each epoch.")
    label_resize: str = param(
        "nearest-exact",
        "How labels reach the embedding grid (anchors, bank records): nearest-exact takes the pixel "
        "at each cell's centre; nearest takes its top-left pixel, as the original code does.",
        choices=("nearest-exact", "nearest"),
    )


@dataclass
class BankConfig:
    """How workers share the memory bank."""

    mode: str = param(
        "actor",
        "actor: one Ray actor holds the global bank; allgather: records exchanged with "
        "torch.distributed.all_gather; local: a private bank per worker.",
        choices=("actor", "allgather", "local"),
    )
    data_plane: str = param(
        "collective",
        "actor mode: how records reach the replicas. collective: all_gather between the workers, "
        "the actor fed asynchronously off the critical path (it stays the authority); "
        "object_store: through the actor and Ray's object store.",
        choices=("collective", "object_store"),
    )
    max_in_flight: int = param(
        8,
        "collective data plane: steps of unanswered actor calls before a step waits for the oldest.",
        ge=1,
    )
    overlap: bool = param(
        False,
        "actor mode, object_store data plane: exchange records in the background while the next "
        "step computes (the bank a step sees is one step stale).",
    )
    snapshot_every: int = param(
        0,
        "actor mode: also snapshot the actor's bank to the run directory every N writes "
        "(0: only with checkpoints).",
        ge=0,
    )
    shards: int = param(
        1,
        "actor mode: class-sharded bank actors, each holding the queues of classes c % shards == s "
        "(raise it when one actor's bank memory, snapshot or restart time is too large; see README).",
        ge=1,
    )


@dataclass
class OptimConfig:
    """SGD with a poly learning-rate schedule."""

    lr: float = param(0.01, "Base learning rate.", gt=0.0)
    momentum: float = param(0.9, "SGD momentum.", ge=0.0, lt=1.0)
    weight_decay: float = param(5e-4, "Weight decay.", ge=0.0)
    poly_power: float = param(0.9, "lr = base_lr * (1 - it / iterations) ** power.", ge=0.0)
    grad_clip: float | None = param(None, "Clip the gradient norm to this value.", gt=0.0)


@dataclass
class TrainConfig:
    """The training run: length, workers, precision, logging and checkpoints."""

    iterations: int = param(40000, "Training iterations.", ge=1)
    batch_size: int = param(8, "Global batch size (split evenly across workers).", ge=1)
    num_workers: int | list[int] = param(
        2,
        "Ray Train workers; 0 runs the loop in the driver process (Ray Train's local mode: for "
        "debugging, checkpoints are not persisted and a rerun does not resume). [min, max]: an "
        "elastic run that starts once min workers fit, continues with fewer after a loss and grows "
        "back to max when capacity returns; train.batch_size must divide by every size in between.",
        ge=0,
    )
    resize_interval_s: float = param(
        60.0,
        "Elastic runs: how often (seconds) Ray Train looks for capacity to grow the worker group "
        "(ScalingConfig.elastic_resize_monitor_interval_s); a resize restarts it from the last "
        "checkpoint.",
        ge=0.0,
    )
    use_gpu: bool = param(False, "One GPU per worker (nccl); otherwise CPU (gloo).")
    cpus_per_worker: float = param(1.0, "CPUs reserved per Train worker.", gt=0.0)
    amp: str = param(
        "none",
        "Mixed precision: none, bf16, or fp16 (GPU, with a grad scaler).",
        choices=("none", "bf16", "fp16"),
    )
    sync_bn: bool = param(False, "Convert BatchNorm to SyncBatchNorm when world size > 1.")
    aux_weight: float = param(0.4, "Weight of the auxiliary head's cross-entropy.", ge=0.0)
    eval_every: int = param(
        4000, "Evaluate (and checkpoint) every N iterations; the last always.", ge=1
    )
    log_every: int = param(50, "Console / CSV / TensorBoard logging period.", ge=1)
    seed: int = param(0, "Global seed (model init, sampling, augmentation).")
    on_nonfinite: str = param(
        "stop",
        "A non-finite loss: stop the run naming the term, or skip the step.",
        choices=("stop", "skip"),
    )
    max_failures: int = param(
        2, "Worker-group restarts from the last checkpoint before giving up.", ge=0
    )
    collective_timeout_s: int = param(600, "Timeout of torch.distributed collectives.", ge=1)

    @property
    def elastic(self) -> bool:
        """``num_workers`` is a ``[min, max]`` range."""
        return isinstance(self.num_workers, list)

    @property
    def min_workers(self) -> int:
        """Workers the run needs to (re)start (``num_workers`` itself when fixed)."""
        return self.num_workers[0] if self.elastic else self.num_workers

    @property
    def max_workers(self) -> int:
        """Workers the run asks for (``num_workers`` itself when fixed)."""
        return self.num_workers[-1] if self.elastic else self.num_workers


@dataclass
class EvalConfig:
    """Inference used by evaluation."""

    mode: str = param("whole", "Inference mode.", choices=("whole", "slide", "multiscale"))
    crop_size: list[int] | None = param(
        None, "Sliding-window crop [h, w] (default: data.crop_size)."
    )
    stride: list[int] | None = param(
        None, "Sliding-window stride [h, w] (default: 2/3 of the crop)."
    )
    scales: list[float] = param([1.0], "Multi-scale factors.")
    flip: bool = param(False, "Average with the horizontally flipped prediction.")
    max_images: int | None = param(None, "Evaluate on at most this many images (null: all).", ge=1)


@dataclass
class DebugConfig:
    """Fault injection for reliability tests."""

    fail_at_iteration: int = param(
        -1, "Kill a Train worker once when this iteration starts (-1: off)."
    )
    fail_rank: int = param(0, "Rank that fails.", ge=0)
    nonfinite_at_iteration: int = param(
        -1, "Make rank 0's contrast term non-finite in iteration N (counted from 1; -1: off)."
    )
    kill_bank_at_iteration: int = param(
        -1, "Rank 0 kills the bank actor once when iteration N starts (Ray restarts it; -1: off)."
    )


@dataclass
class MlflowConfig:
    """MLflow tracking (``pip install raycontrast[mlflow]``)."""

    tracking_uri: str | None = param(
        None,
        "MLflow tracking URI (http://host:5000, sqlite:///m.db, file:///dir); null: MLflow is off.",
    )
    experiment: str = param("raycontrast", "MLflow experiment the runs go to.")


@dataclass
class WandbConfig:
    """Weights & Biases tracking (``pip install raycontrast[wandb]``)."""

    project: str | None = param(None, "W&B project; null: W&B is off.")
    mode: str = param(
        "online",
        "online (needs `wandb login`) or offline (local files, `wandb sync` later).",
        choices=("online", "offline"),
    )


@dataclass
class LogConfig:
    """Experiment trackers and the console (see docs/how-to/tracking.md)."""

    mlflow: MlflowConfig = field(default_factory=MlflowConfig, metadata={"help": "MLflow."})
    wandb: WandbConfig = field(default_factory=WandbConfig, metadata={"help": "Weights & Biases."})
    group: str | None = param(
        None,
        "Tracker group of the run: sweeps and studies set their name, so trials nest under one "
        "parent run.",
    )
    verbose: bool = param(False, "Show Ray's own console lines too (like --verbose).")


@dataclass
class ExperimentConfig:
    """A whole experiment: what `raycontrast train` runs."""

    name: str = param("experiment", "Run name; rerunning with the same name resumes.")
    storage_path: str = param(
        "runs", "Where run directories go: a local folder, NFS path or s3:// URI."
    )
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "Model."})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "Data."})
    contrast: ContrastConfig = field(default_factory=ContrastConfig, metadata={"help": "Contrast."})
    bank: BankConfig = field(default_factory=BankConfig, metadata={"help": "Memory bank sharing."})
    optim: OptimConfig = field(default_factory=OptimConfig, metadata={"help": "Optimiser."})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "Training run."})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "Evaluation."})
    debug: DebugConfig = field(default_factory=DebugConfig, metadata={"help": "Fault injection."})
    log: LogConfig = field(
        default_factory=LogConfig, metadata={"help": "Experiment tracking and console."}
    )

    def __post_init__(self) -> None:
        check_consistency(self)

    @property
    def bank_kinds(self) -> tuple[str, ...]:
        """The memory bank queues this run keeps; empty when it has no bank (the one place that
        decides whether a run uses a bank)."""
        return MEMORY_KINDS[self.contrast.memory] if self.contrast.enabled else ()

    def input_paths(self) -> dict[str, str | None]:
        """What a run reads from disk, by config key (the dataset, the pretrained weights): no
        command may write into, over or around any of them."""
        data = self.data
        inputs: dict[str, str | None] = {}
        if data.source == "parquet":
            inputs["data.parquet_dir"] = data.parquet_dir
        elif data.dataset != "synthetic":
            inputs["data.root"] = data.root
        if isinstance(self.model.pretrained, str):
            inputs["model.pretrained"] = self.model.pretrained
        return inputs


def check_consistency(cfg: ExperimentConfig) -> None:
    """Cross-field rules that single-field validation cannot express."""
    _check_shapes(cfg)
    if cfg.contrast.enabled and not cfg.contrast.inbatch and cfg.contrast.memory == "none":
        raise ConfigError(
            "contrast.enabled=true with contrast.inbatch=false and contrast.memory=none has no "
            "contrast term: set contrast.inbatch=true or contrast.memory=pixel|region|both, or "
            "contrast.enabled=false for cross-entropy only"
        )
    if cfg.data.ingest == "ray_data" and cfg.data.source != "parquet":
        raise ConfigError(
            "data.ingest=ray_data streams Parquet shards: set data.source=parquet and data.parquet_dir "
            "(write shards with `raycontrast convert`)"
        )
    if cfg.data.source == "parquet" and not cfg.data.parquet_dir:
        raise ConfigError("data.source=parquet needs data.parquet_dir")
    if cfg.data.dataset != "synthetic" and cfg.data.source == "files" and not cfg.data.root:
        raise ConfigError(f"data.root is required for dataset {cfg.data.dataset!r}")
    _check_workers(cfg.train)
    if cfg.train.amp == "fp16" and not cfg.train.use_gpu:
        raise ConfigError("train.amp=fp16 needs train.use_gpu=true; use bf16 on CPU")
    if cfg.train.sync_bn and not cfg.train.use_gpu:
        raise ConfigError(
            "train.sync_bn=true needs train.use_gpu=true (torch's SyncBatchNorm runs on GPUs)"
        )
    if cfg.bank.overlap and cfg.bank.mode != "actor":
        raise ConfigError("bank.overlap=true applies to bank.mode=actor only")
    if cfg.bank.overlap and cfg.bank.data_plane != "object_store":
        raise ConfigError(
            "bank.overlap=true applies to bank.data_plane=object_store (the collective data plane "
            "keeps the actor off the critical path already)"
        )
    if cfg.bank.shards > 1 and cfg.bank.mode != "actor":
        raise ConfigError(f"bank.shards={cfg.bank.shards} applies to bank.mode=actor only")


def _check_shapes(cfg: ExperimentConfig) -> None:
    """Sizes, ranges and normalisation constants given as lists."""
    pairs = {
        "data.crop_size": cfg.data.crop_size,
        "data.synthetic.image_size": cfg.data.synthetic.image_size,
        "eval.crop_size": cfg.eval.crop_size,
        "eval.stride": cfg.eval.stride,
    }
    for key, value in pairs.items():
        if value is not None and (len(value) != 2 or min(value) < 1):
            raise ConfigError(f"{key} must be [height, width] with positive values, got {value!r}")
    lo, hi = ([*cfg.data.scale_range, 0, 0])[:2]
    if len(cfg.data.scale_range) != 2 or not 0 < lo <= hi:
        raise ConfigError(
            f"data.scale_range must be [min, max] with 0 < min <= max, got {cfg.data.scale_range!r}"
        )
    if len(cfg.data.mean) != 3 or len(cfg.data.std) != 3 or min(cfg.data.std) <= 0:
        raise ConfigError("data.mean and data.std must hold 3 values (RGB), std > 0")
    for key, values in (("data.mean", cfg.data.mean), ("data.std", cfg.data.std)):
        if max(values) > 1.0:  # mmsegmentation's 123.675 ... pasted as is
            scaled = [round(v / 255, 4) for v in values]
            raise ConfigError(
                f"{key}={values} is on the 0-255 scale, but images are normalised on the 0-1 scale: "
                f"use {key}={scaled}"
            )
    if not cfg.eval.scales or min(cfg.eval.scales) <= 0:
        raise ConfigError(f"eval.scales must be positive factors, got {cfg.eval.scales!r}")


def _check_workers(t: TrainConfig) -> None:
    """``num_workers``: an int, or ``[min, max]`` with ``1 <= min <= max``; the global batch must
    split evenly over every world size the run may take (a resize never changes what a step sees)."""
    if t.elastic:
        if len(t.num_workers) != 2 or not 1 <= t.num_workers[0] <= t.num_workers[1]:
            raise ConfigError(
                f"train.num_workers={t.num_workers!r}: an elastic range must be [min, max] with "
                "1 <= min <= max (or an int: 0 for local mode, N for a fixed worker group)"
            )
        sizes = range(t.min_workers, t.max_workers + 1)
    else:
        sizes = [max(t.num_workers, 1)]
    bad = [w for w in sizes if t.batch_size % w]
    if bad:
        fits = [w for w in sizes if not t.batch_size % w]
        hint = f"; of {list(sizes)} it divides by {fits}" if t.elastic and fits else ""
        if not t.elastic:
            raise ConfigError(
                f"train.batch_size={t.batch_size} must be divisible by "
                f"train.num_workers={t.num_workers} (it is the global batch)"
            )
        raise ConfigError(
            f"train.batch_size={t.batch_size} (the global batch, split evenly across workers) must "
            f"be divisible by every number of workers train.num_workers={t.num_workers} allows, "
            f"not by {', '.join(map(str, bad))}{hint}: choose a batch size that is a multiple of "
            f"{math.lcm(*sizes)} or narrow the range"
        )


def config_warnings(cfg: ExperimentConfig) -> list[str]:
    """Settings that are valid but probably not what was meant (printed before a run starts)."""
    out = []
    if cfg.contrast.enabled and cfg.contrast.warmup_iters >= cfg.train.iterations:
        out.append(
            f"contrast.warmup_iters={cfg.contrast.warmup_iters} >= train.iterations="
            f"{cfg.train.iterations}: the contrast loss never applies in this run (lower "
            "contrast.warmup_iters, or set contrast.enabled=false)"
        )
    return out


# ------------------------------------------------------------------------------- dict <-> dataclass


def _fields(cls: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls)}


def did_you_mean(word: str, options: Iterable[str], prefix: str = "", cutoff: float = 0.5) -> str:
    """``"; did you mean 'a' or 'b'?"`` for the options closest to ``word`` (``""`` if none is close);
    ``prefix`` is prepended to the shown options (the dotted section of a key)."""
    close = difflib.get_close_matches(str(word), list(options), n=3, cutoff=cutoff)
    return f"; did you mean {' or '.join(repr(prefix + c) for c in close)}?" if close else ""


def _unknown_key(cls: type, key: Any, prefix: str, where: str) -> ConfigError:
    """The error for a key ``cls`` does not have: its own fields suggested first, else any key of the
    experiment (a key put in the wrong section)."""
    suggestion = did_you_mean(key, _fields(cls), prefix) or did_you_mean(
        prefix + str(key), _all_keys(ExperimentConfig)
    )
    return ConfigError(f"unknown config key {prefix + str(key)!r}{where}{suggestion}")


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for name, (_, tp) in _fields(cls).items():
        keys.append(prefix + name)
        if dataclasses.is_dataclass(tp):
            keys.extend(_all_keys(tp, f"{prefix}{name}."))
    return keys


def config_keys(cls: type | None = None) -> list[str]:
    """Every leaf key of the experiment config in dotted form (``contrast.memory_size`` ...)."""
    keys = _all_keys(cls or ExperimentConfig)
    return [k for k in keys if not any(o.startswith(k + ".") for o in keys)]


def coerce_key(key: str, value: Any, cls: type | None = None) -> Any:
    """``value`` as the type of the dotted config key ``key`` (``coerce_key("optim.lr", "1e-4")`` is
    ``0.0001``), for values that reach a config outside YAML files (sweeps, studies).

    Raises:
        ConfigError: unknown key (with suggestions), or a value of the wrong type.
    """
    cls = cls or ExperimentConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = _fields(cls)
        prefix = ".".join(parts[:i]) + ("." if i else "")
        if part not in fields:
            raise _unknown_key(cls, part, prefix, "")
        _, tp = fields[part]
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(tp):
                raise ConfigError(f"{key} is a section, not a config key")
            return _coerce(value, tp, key)
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"{'.'.join(parts[: i + 1])} is a config key, not a section")
        cls = tp
    raise ConfigError(f"empty config key {key!r}")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


class _NotFinite(ConfigError):
    """A float field given inf or nan (reported as such, not as a type mismatch)."""


def _number(text: str) -> float | str:
    """``"1e-4"`` -> 0.0001; text that is not a number is returned unchanged."""
    try:
        return float(text.strip())
    except ValueError:
        return text


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` as type ``tp`` or raise ConfigError. Floats also accept ints and numeric strings
    (``"1e-4"``, which YAML 1.1 reads as text) and refuse inf / nan; nothing else is converted."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except _NotFinite:
                raise
            except ConfigError:
                continue
        raise ConfigError(f"{key} must be {_type_name(tp)}, got {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a {_type_name(tp)}, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as text
            value = _number(value)
        if _is_number(value):
            if not math.isfinite(value):
                raise _NotFinite(f"{key}={value!r} is not a finite number")
            return float(value)
    elif tp not in _SCALARS:  # pragma: no cover - a field type this module does not know
        raise TypeError(f"unsupported config type {tp!r} for {key}")
    elif _SCALARS[tp](value):
        return value
    raise ConfigError(f"{key} must be {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_SCALARS = {
    type(None): lambda v: v is None,
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    str: lambda v: isinstance(v, str),
}


def _check_bounds(value: Any, meta: Mapping[str, Any], key: str) -> None:
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        shown = ", ".join("null" if c is None else str(c) for c in choices)
        raise ConfigError(f"{key}={value!r} is not one of: {shown}")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    for op, bound, ok in (
        (">=", meta.get("ge"), lambda v, b: v >= b),
        (">", meta.get("gt"), lambda v, b: v > b),
        ("<=", meta.get("le"), lambda v, b: v <= b),
        ("<", meta.get("lt"), lambda v, b: v < b),
    ):
        if bound is not None and not ok(value, bound):
            raise ConfigError(f"{key}={value!r} is out of range: must be {op} {bound}")


def config_from_dict(
    cls: type, data: Mapping[str, Any] | None, prefix: str = "", source: str = ""
) -> Any:
    """Build dataclass ``cls`` from a nested mapping, validating keys, types, choices and ranges.

    Args:
        cls: the dataclass to build (e.g. ExperimentConfig).
        data: nested mapping; missing keys keep their defaults.
        prefix: dotted prefix used in error messages.
        source: where the data came from (a file name), used in error messages.
    """
    data = dict(data or {})
    fields = _fields(cls)
    where = f" (in {source})" if source else ""
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise _unknown_key(cls, unknown[0], prefix, where)
    kwargs = {}
    for name, (f, tp) in fields.items():
        if name not in data:
            continue
        key = prefix + name
        value = data[name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{key} must be a mapping of its keys, got {value!r}{where}")
            kwargs[name] = config_from_dict(tp, value, key + ".", source)
            continue
        try:
            value = _coerce(value, tp, key)
            _check_bounds(value, f.metadata, key)
        except ConfigError as err:
            raise ConfigError(f"{err}{where}") from None
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{err}{where}") from None


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config dataclass (YAML/JSON serialisable)."""
    return dataclasses.asdict(cfg)


# ------------------------------------------------------------------------------------ YAML loading


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def read_yaml_mapping(path: str | Path, what: str = "config") -> dict[str, Any]:
    """Read a YAML file whose top level is a mapping (``yaml.safe_load``; an empty file is ``{}``).

    Raises:
        ConfigError: the file is missing or a directory, is not valid YAML, or is not a mapping;
            ``what`` names the kind of file in the message ("config file not found: ...").
    """
    path = Path(path).expanduser()
    if not path.is_file():
        kind = "a directory, not a file" if path.is_dir() else "not found"
        raise ConfigError(f"{what} file {kind}: {path}")
    try:
        data = yaml_strict.load(path.read_text(), str(path)) or {}
    except yaml_strict.DuplicateKeyError as err:
        raise ConfigError(yaml_strict.duplicate_message(err, str(path))) from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of {what} keys at the top level")
    return data


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read one YAML file and its ``_base_`` chain, each file's keys checked against the schema."""
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path))
        raise ConfigError(f"_base_ cycle: {cycle}")
    data = read_yaml_mapping(path, "config")
    bases = data.pop("_base_", [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: _base_ must be a path or a list of paths")
    _check_keys(ExperimentConfig, data, "", str(path))
    merged: dict[str, Any] = {}
    for base in bases:
        merged = _deep_merge(merged, _read_yaml(path.parent / base, (*chain, path)))
    return _deep_merge(merged, data)


def _check_keys(cls: type, data: Mapping[str, Any], prefix: str, source: str) -> None:
    """Unknown keys are reported against the file that holds them, before merging hides the source."""
    fields = _fields(cls)
    for key, value in data.items():
        if key not in fields:
            raise _unknown_key(cls, key, prefix, f" (in {source})")
        tp = fields[key][1]
        if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
            _check_keys(tp, value, f"{prefix}{key}.", source)


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=[1,2]"]`` into a nested dict; values are parsed as YAML."""
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"override {item!r} must look like key=value (e.g. train.iterations=100)"
            )
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override of {part!r}")
        node[parts[-1]] = value
    return out


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Load an experiment: YAML (with ``_base_``) + dotted overrides, validated.

    Args:
        path: a YAML file; ``None`` uses only the dataclass defaults.
        overrides: ``key=value`` strings applied last.
    """
    data = _read_yaml(Path(path)) if path is not None else {}
    over = parse_overrides(overrides)
    _check_keys(ExperimentConfig, over, "", "command-line overrides")
    source = str(path) if path is not None else "defaults"
    if over:
        source += " + command-line overrides"
    return config_from_dict(ExperimentConfig, _deep_merge(data, over), source=source)


def save_config(cfg: ExperimentConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (loadable by :func:`load_config`)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def describe_config(
    cls: type = ExperimentConfig, prefix: str = ""
) -> list[tuple[str, str, str, str]]:
    """Rows of (key, type, default, help) for every leaf field, for ``raycontrast config --keys``."""
    rows = []
    instance = cls()
    for name, (f, tp) in _fields(cls).items():
        if dataclasses.is_dataclass(tp):
            rows.extend(describe_config(tp, f"{prefix}{name}."))
            continue
        help_text = f.metadata.get("help", "")
        if f.metadata.get("choices"):
            help_text += (
                f" [{' | '.join('null' if c is None else str(c) for c in f.metadata['choices'])}]"
            )
        rows.append((prefix + name, _type_name(tp), repr(getattr(instance, name)), help_text))
    return rows
