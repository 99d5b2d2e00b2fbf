"""``raycontrast predict``: apply a trained model to images and write label maps and overlays.

The model is a run's checkpoint (its deployed form: no projection or auxiliary head), or a file
written by ``raycontrast export`` (TorchScript ``.pt`` or ExportedProgram ``.pt2``). Inference uses
the run's resolved ``eval`` settings (whole image, sliding window, multi-scale + flip), the same code
as evaluation (:func:`raycontrast.eval.infer`).

For each input image, named by its stem (Parquet rows by their ``id``), under ``--out``::

    labels/<stem>.png     palette PNG: pixel values are class ids, shown in the dataset's colours
    overlays/<stem>.png   the prediction blended over the image
    probs/<stem>.npy      class probabilities, float16 (K, H, W)   (only with --probs)

All outputs have the input's size. Images of one folder are read recursively; sub-folders are kept.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from raycontrast.config import (
    ConfigError,
    EvalConfig,
    config_from_dict,
    config_to_dict,
    parse_overrides,
)
from raycontrast.data._io import IMAGE_EXTENSIONS, decode_image, read_image
from raycontrast.data.base import DatasetError
from raycontrast.eval._visualize import class_palette, overlay, palette_for_classes, palette_image
from raycontrast.eval.inference import infer_with

__all__ = ["Predictor", "find_checkpoint", "list_inputs", "load_predictor", "predict"]

_PARQUET = ".parquet"


class PredictError(DatasetError):
    """Bad input to ``raycontrast predict``: the message names the path and what was expected."""


# ----------------------------------------------------------------------------------- the model


@dataclass
class Predictor:
    """A model ready for inference on raw images.

    ``model_fn`` maps normalised images ``(B, 3, H, W)`` to logits ``(B, K, H, W)``.
    """

    model_fn: Callable[[Tensor], Tensor]
    num_classes: int
    class_names: list[str]
    palette: list[tuple[int, int, int]]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    eval_cfg: EvalConfig
    device: torch.device
    source: str

    def normalise(self, images: Sequence[np.ndarray]) -> Tensor:
        """``uint8`` HxWx3 images of one size -> normalised float ``(B, 3, H, W)`` on the device."""
        x = torch.from_numpy(np.stack(images)).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def logits(self, images: Sequence[np.ndarray]) -> Tensor:
        """Logits ``(B, K, H, W)`` of ``uint8`` HxWx3 images of one size, at that size."""
        with torch.inference_mode():
            return infer_with(
                self.model_fn, self.normalise(images), self.num_classes, self.eval_cfg
            )


def find_checkpoint(run_dir: str | Path) -> Path:
    """The checkpoint of a run directory to predict with: ``summary.json``'s best checkpoint, else
    the latest one Ray Train registered, else the newest ``checkpoint_*`` holding a ``state.pt``."""
    run_dir = Path(run_dir)
    candidates: list[Path] = []
    summary = run_dir / "summary.json"
    if summary.is_file():
        try:
            data = json.loads(summary.read_text())
        except ValueError:
            data = {}
        for key in ("best_checkpoint", "checkpoint"):
            if isinstance(data.get(key), str):
                path = Path(data[key])
                candidates.append(path if path.is_absolute() else run_dir / path)
                candidates.append(run_dir / Path(data[key]).name)  # the run dir was moved
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    if snapshot.is_file():
        try:
            latest = json.loads(snapshot.read_text())["latest_checkpoint_result"]
            candidates.append(run_dir / latest["checkpoint_dir_name"])
        except (ValueError, KeyError, TypeError):
            pass
    candidates += sorted(run_dir.glob("checkpoint_*"), reverse=True)
    for path in candidates:
        if (path / "state.pt").is_file():
            return path
    raise PredictError(
        f"{run_dir}: no checkpoint found (expected checkpoint_*/state.pt of a training run, or pass "
        "a checkpoint directory, a state.pt or an exported .pt / .pt2 model)"
    )


def _eval_overrides(base: EvalConfig, overrides: Sequence[str]) -> EvalConfig:
    over = parse_overrides(overrides)
    bad = [k for k in over if k != "eval"]
    if bad:
        raise ConfigError(
            f"predict accepts eval.* overrides only (e.g. eval.mode=slide eval.flip=true), got "
            f"{bad[0]!r}"
        )
    if not over:
        return base
    merged = {**config_to_dict(base), **over["eval"]}
    return config_from_dict(EvalConfig, merged, "eval.", "command-line overrides")


def _checkpoint_predictor(path: Path, overrides: Sequence[str], device: torch.device) -> Predictor:
    from raycontrast.eval.run import resolve_eval_config
    from raycontrast.models import load_checkpoint, load_segmentor

    seg, cfg = load_segmentor(path)
    cfg = dataclasses.replace(cfg, eval=_eval_overrides(cfg.eval, overrides))
    num_classes = seg.num_classes
    try:
        from raycontrast.data import dataset_info

        info = dataset_info(cfg.data)
        if info.num_classes != num_classes:
            raise DatasetError("class count differs")
        names, palette = list(info.class_names), class_palette(num_classes, info.palette)
    except (DatasetError, OSError):  # the training data is not on this machine
        names = [str(n) for n in load_checkpoint(path).get("class_names") or []]
        if len(names) != num_classes:
            names = [f"class_{k}" for k in range(num_classes)]
        palette = palette_for_classes(names)
    model = seg.deploy().eval().to(device)
    return Predictor(
        model_fn=model,
        num_classes=num_classes,
        class_names=names,
        palette=palette,
        mean=tuple(cfg.data.mean),
        std=tuple(cfg.data.std),
        eval_cfg=resolve_eval_config(cfg),
        device=device,
        source=f"checkpoint {path}",
    )


def _input_dims(program: Any) -> list[Any]:
    """The first user input's shape entries of an ExportedProgram (ints or SymInts)."""
    names = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in names:
            return list(node.meta["val"].shape)
    raise PredictError("the exported program has no tensor input")


def _dim_rule(dim: Any, constraints: dict[Any, Any]) -> tuple[int, int] | None:
    """``(multiple, minimum)`` of a dynamic dimension, ``None`` for a fixed one."""
    if isinstance(dim, int):
        return None
    expr = dim.node.expr
    coeff, rest = expr.as_coeff_Mul()
    lower = 1
    for sym in rest.free_symbols:
        rng = constraints.get(sym)
        if rng is not None:
            lower = max(lower, int(rng.lower))
    return int(coeff), int(coeff) * lower


def _padded_fn(
    module: Callable[[Tensor], Tensor], rules: tuple[tuple[int, int], tuple[int, int]]
) -> Callable[[Tensor], Tensor]:
    """Pad inputs (bottom/right, zeros = the mean colour) to sizes the exported program accepts,
    and crop the logits back."""
    (mh, minh), (mw, minw) = rules

    def fn(x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        th = max(-(-h // mh) * mh, minh)
        tw = max(-(-w // mw) * mw, minw)
        if (th, tw) != (h, w):
            x = F.pad(x, (0, tw - w, 0, th - h))
        return module(x)[..., :h, :w]

    return fn


def _exported_predictor(
    path: Path, kind: str, overrides: Sequence[str], device: torch.device
) -> Predictor:
    from raycontrast.models.export import METADATA_FILE

    eval_cfg = _eval_overrides(EvalConfig(), overrides)
    if kind == "torchscript":
        extra = {METADATA_FILE: ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream
                module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
        except Exception as err:
            raise PredictError(f"{path}: cannot load the TorchScript model ({err})") from None
        meta_text = extra[METADATA_FILE]
        model_fn: Callable[[Tensor], Tensor] = module.eval()
    else:
        extra = {METADATA_FILE: ""}
        try:
            program = torch.export.load(str(path), extra_files=extra)
        except Exception as err:
            raise PredictError(f"{path}: cannot load the exported program ({err})") from None
        meta_text = extra[METADATA_FILE]
        dims = _input_dims(program)
        module = program.module().to(device)
        rules = [_dim_rule(d, program.range_constraints) for d in dims[2:]]
        if rules[0] is None or rules[1] is None:  # fixed height x width: tile it
            fixed = [int(dims[2]), int(dims[3])]
            if eval_cfg.mode == "whole":
                eval_cfg = dataclasses.replace(eval_cfg, mode="slide")
            eval_cfg = dataclasses.replace(eval_cfg, crop_size=fixed)
            model_fn = module
        else:
            model_fn = _padded_fn(module, (rules[0], rules[1]))
        if isinstance(dims[0], int):
            model_fn = _fixed_batch(model_fn, int(dims[0]))
    try:
        meta = json.loads(meta_text) if meta_text else {}
    except ValueError:
        meta = {}
    num_classes = int(meta.get("num_classes") or 0)
    if num_classes < 1:
        raise PredictError(
            f"{path}: no {METADATA_FILE} metadata with num_classes; export it with "
            "`raycontrast export` (or predict with the checkpoint)"
        )
    names = [str(n) for n in meta.get("class_names") or []]
    if len(names) != num_classes:
        names = [f"class_{k}" for k in range(num_classes)]
    if eval_cfg.mode == "slide" and eval_cfg.crop_size is None:
        raise ConfigError(
            f"{path}: eval.mode=slide needs eval.crop_size=[h,w] (exported models carry no config)"
        )
    return Predictor(
        model_fn=model_fn,
        num_classes=num_classes,
        class_names=names,
        palette=palette_for_classes(names),
        mean=tuple(meta.get("mean") or (0.485, 0.456, 0.406)),
        std=tuple(meta.get("std") or (0.229, 0.224, 0.225)),
        eval_cfg=eval_cfg,
        device=device,
        source=f"{kind} model {path}",
    )


def _fixed_batch(fn: Callable[[Tensor], Tensor], size: int) -> Callable[[Tensor], Tensor]:
    def run(x: Tensor) -> Tensor:
        outs = []
        for chunk in x.split(size):
            n = chunk.shape[0]
            if n < size:
                chunk = torch.cat([chunk, chunk[-1:].expand(size - n, *chunk.shape[1:])])
            outs.append(fn(chunk)[:n])
        return torch.cat(outs)

    return run


def _model_kind(path: Path) -> str:
    if path.is_dir():
        return "checkpoint" if (path / "state.pt").is_file() else "run"
    if path.suffix == ".pt2":
        return "exported-program"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        names = []
    if any("/code/" in n or n.endswith("/constants.pkl") for n in names):
        return "torchscript"
    return "checkpoint"


def load_predictor(
    model: str | Path,
    overrides: Sequence[str] = (),
    device: str | torch.device | None = None,
) -> Predictor:
    """A :class:`Predictor` from a run directory, a checkpoint, or an exported model.

    Args:
        model: run directory (its best checkpoint, see :func:`find_checkpoint`), checkpoint
            directory or ``state.pt``, TorchScript ``.pt`` or ExportedProgram ``.pt2``.
        overrides: ``eval.*`` overrides, e.g. ``["eval.mode=slide", "eval.flip=true"]``.
            Checkpoints use their run's ``eval`` section; exported models carry no config (whole
            image by default; ``.pt2`` files exported at a fixed size are tiled at that size).
        device: default: CUDA when available, else CPU.

    Raises:
        PredictError: the path does not exist, or holds no checkpoint or model.
        CheckpointError: unreadable checkpoint.
    """
    path = Path(model).expanduser()
    if not path.exists():
        raise PredictError(f"{path}: not found (expected a run directory, checkpoint or model)")
    dev = (
        torch.device(device)
        if device
        else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    kind = _model_kind(path)
    if kind == "run":
        path = find_checkpoint(path)
        kind = "checkpoint"
    if kind == "checkpoint":
        return _checkpoint_predictor(path, overrides, dev)
    return _exported_predictor(path, kind, overrides, dev)


# ----------------------------------------------------------------------------------- the inputs


@dataclass
class _Input:
    name: str  # output path relative to the out folder, without suffix
    origin: str  # for messages
    load: Callable[[], np.ndarray]


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _parquet_inputs(files: list[Path]) -> tuple[list[_Input], int]:
    import pyarrow.parquet as pq

    inputs: list[_Input] = []
    for file in files:
        try:
            handle = pq.ParquetFile(file)
        except Exception as err:
            raise PredictError(f"{file}: not a readable Parquet file ({err})") from None
        columns = set(handle.schema_arrow.names)
        if "image" not in columns:
            raise PredictError(
                f"{file}: has no 'image' column (expected shards of `raycontrast convert`: "
                f"image, id, ...; found {sorted(columns)})"
            )
        has_id = "id" in columns
        for group in range(handle.num_row_groups):
            n = handle.metadata.row_group(group).num_rows
            ids = (
                handle.read_row_group(group, columns=["id"]).column("id").to_pylist()
                if has_id
                else [f"{file.stem}_{group}_{i}" for i in range(n)]
            )
            for row, sample_id in enumerate(ids):
                inputs.append(
                    _Input(
                        name=str(sample_id),
                        origin=f"{file} row {sample_id}",
                        load=_row_loader(file, group, row, f"{file} (id {sample_id})"),
                    )
                )
    return inputs, len(files)


_GROUP_CACHE: dict[tuple[str, int], list[bytes]] = {}


def _row_loader(file: Path, group: int, row: int, name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import pyarrow.parquet as pq

        key = (str(file), group)
        if key not in _GROUP_CACHE:  # rows are read in order: keep only the current row group
            _GROUP_CACHE.clear()
            table = pq.ParquetFile(file).read_row_group(group, columns=["image"])
            _GROUP_CACHE[key] = table.column("image").to_pylist()
        return decode_image(_GROUP_CACHE[key][row], name)

    return load


def _safe_name(name: str, origin: str) -> str:
    parts = [p for p in re.split(r"[\\/]+", name) if p not in ("", ".")]
    if not parts or ".." in parts:
        raise PredictError(f"{origin}: cannot name an output after {name!r}")
    return "/".join(parts)


def list_inputs(source: str | Path, exclude: str | Path | None = None) -> list[_Input]:
    """The images of ``source``: one image file, a folder of images (recursive), or Parquet shards
    (a ``.parquet`` file, or a folder of them such as ``raycontrast convert``'s output). Files under
    ``exclude`` (the output folder, when it lies inside the input folder) are left out.

    Raises:
        PredictError: missing path, a folder without images or shards, a non-image file, or two
            inputs that would write the same output name.
    """
    path = Path(source).expanduser()
    if not path.exists():
        raise PredictError(f"{path}: input not found (expected an image, a folder or Parquet)")
    if path.is_file():
        if path.suffix.lower() == _PARQUET:
            inputs, _ = _parquet_inputs([path])
        elif path.suffix.lower() in IMAGE_EXTENSIONS:
            inputs = [_Input(path.stem, str(path), lambda p=path: read_image(p))]
        else:
            raise PredictError(
                f"{path}: not an image ({', '.join(IMAGE_EXTENSIONS)}) or a .parquet file"
            )
    else:
        files = _image_files(path)
        if exclude is not None:
            skip = Path(exclude).expanduser().resolve()
            files = [f for f in files if not f.resolve().is_relative_to(skip)]
        if files:
            inputs = [
                _Input(
                    str(f.relative_to(path).with_suffix("")),
                    str(f),
                    lambda p=f: read_image(p),
                )
                for f in files
            ]
        else:
            shards = sorted(path.rglob(f"*{_PARQUET}"))
            if not shards:
                raise PredictError(
                    f"{path}: folder holds no images ({', '.join(IMAGE_EXTENSIONS)}) and no "
                    ".parquet shards"
                )
            inputs, _ = _parquet_inputs(shards)
            if not inputs:
                raise PredictError(f"{path}: the Parquet shards hold no rows")
    seen: dict[str, str] = {}
    for item in inputs:
        item.name = _safe_name(item.name, item.origin)
        if item.name in seen:
            raise PredictError(
                f"{item.origin} and {seen[item.name]} would both write outputs named "
                f"{item.name!r}; rename one of them"
            )
        seen[item.name] = item.origin
    return inputs


# ----------------------------------------------------------------------------------- predicting


def _batches(
    inputs: list[_Input], batch_size: int, skip_bad: bool, skipped: list[str]
) -> Iterator[list[tuple[_Input, np.ndarray]]]:
    """Consecutive inputs of one size, up to ``batch_size`` at a time."""
    batch: list[tuple[_Input, np.ndarray]] = []
    for item in inputs:
        try:
            image = item.load()
        except DatasetError as err:
            if not skip_bad:
                raise PredictError(
                    f"{err} (use --skip-bad to leave unreadable images out)"
                ) from None
            skipped.append(str(err))
            yield []  # lets the progress bar count it
            continue
        if batch and (len(batch) >= batch_size or batch[0][1].shape != image.shape):
            yield batch
            batch = []
        batch.append((item, image))
    if batch:
        yield batch


def predict(
    model: str | Path,
    source: str | Path,
    out: str | Path,
    overrides: Sequence[str] = (),
    batch_size: int = 4,
    probs: bool = False,
    alpha: float = 0.5,
    skip_bad: bool = False,
    device: str | None = None,
    show_progress: bool | None = None,
) -> dict[str, Any]:
    """``raycontrast predict MODEL --input SOURCE --out OUT``: segment images, write label PNGs,
    overlays and (with ``probs``) class probabilities. See the module docstring for the layout.

    Args:
        model: run directory, checkpoint, or exported ``.pt`` / ``.pt2`` model
            (:func:`load_predictor`).
        source: image file, folder of images, ``.parquet`` file or folder of shards.
        out: output folder (created; must not be a file).
        overrides: ``eval.*`` overrides of the inference settings.
        batch_size: images per forward pass (consecutive images of the same size are batched).
        probs: also write ``probs/<stem>.npy`` (float16 ``(K, H, W)`` softmax).
        alpha: overlay opacity of the label colours.
        skip_bad: leave unreadable images out (listed in the result) instead of stopping.
        device: ``cpu``, ``cuda``, ... (default: CUDA when available).
        show_progress: progress bar on/off (default: only on a terminal).

    Returns:
        ``images``, ``seconds``, ``images_per_s``, ``out``, ``model``, ``skipped`` (messages),
        ``eval`` (the inference settings used).

    Example:
        >>> predict("runs/synthetic", "photos/", "predictions/")
        raycontrast: predicted 12 images in 3.1 s (3.9 images/s) with checkpoint ...; wrote predictions
    """
    from raycontrast._progress import progress

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out_dir = Path(out).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise PredictError(f"--out {out_dir}: is a file; expected a folder (created if missing)")
    from raycontrast.outputs import OutputError, check_output

    try:
        check_output(out_dir, {"--input": source, "the model": model})
    except OutputError as err:
        raise PredictError(str(err)) from None
    inputs = list_inputs(source, exclude=out_dir)
    predictor = load_predictor(model, overrides, device)
    out_dir.mkdir(parents=True, exist_ok=True)
    palette = predictor.palette
    skipped: list[str] = []
    done = 0
    start = time.perf_counter()
    bar = progress(total=len(inputs), desc="predict", unit="img", enabled=show_progress)
    try:
        for batch in _batches(inputs, batch_size, skip_bad, skipped):
            if not batch:
                bar.update(1)
                continue
            logits = predictor.logits([image for _, image in batch])
            labels = logits.argmax(1).to(torch.uint8).cpu().numpy()
            prob = logits.softmax(1).to(torch.float16).cpu().numpy() if probs else None
            for i, (item, image) in enumerate(batch):
                _write(out_dir, item.name, image, labels[i], palette, alpha, prob, i)
            done += len(batch)
            bar.update(len(batch))
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    rate = done / seconds if seconds > 0 else float("inf")
    ev = predictor.eval_cfg
    settings = f"mode={ev.mode}" + (", flip" if ev.flip else "")
    if ev.scales != [1.0]:
        settings += f", scales={ev.scales}"
    print(
        f"raycontrast: predicted {done} image{'' if done == 1 else 's'} in {seconds:.1f} s "
        f"({rate:.2f} images/s) with "
        f"{predictor.source} ({settings}); wrote {out_dir}"
        + (f"; skipped {len(skipped)} unreadable" if skipped else ""),
        flush=True,
    )
    for message in skipped[:10]:
        print(f"  skipped: {message}", flush=True)
    return {
        "images": done,
        "seconds": seconds,
        "images_per_s": rate,
        "out": str(out_dir),
        "model": predictor.source,
        "class_names": predictor.class_names,
        "skipped": skipped,
        "eval": config_to_dict(ev),
    }


def _write(
    out_dir: Path,
    name: str,
    image: np.ndarray,
    labels: np.ndarray,
    palette: list[tuple[int, int, int]],
    alpha: float,
    prob: np.ndarray | None,
    index: int,
) -> None:
    label_path = out_dir / "labels" / f"{name}.png"
    overlay_path = out_dir / "overlays" / f"{name}.png"
    for path in (label_path, overlay_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    palette_image(labels, palette).save(label_path)
    Image.fromarray(overlay(image, labels, palette, alpha, ignore_index=None)).save(overlay_path)
    if prob is not None:
        prob_path = out_dir / "probs" / f"{name}.npy"
        prob_path.parent.mkdir(parents=True, exist_ok=True)
        np.save(prob_path, prob[index])
