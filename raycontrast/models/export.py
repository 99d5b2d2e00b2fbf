"""Export a checkpoint's deployed model (no projection / auxiliary head) for inference.

Formats:

* ``torchscript``: ``torch.jit.script`` of :class:`~raycontrast.models.DeployedSegmentor`; backbones
  TorchScript cannot compile (HRNet) are traced instead (``torch.jit.trace``; the trace is checked at
  a second input size). Load with ``torch.jit.load``.
* ``exported-program``: ``torch.export.export`` + ``torch.export.save``; load with
  ``torch.export.load(path).module()``. The file name must end in ``.pt2`` (torch.export requires
  it; another suffix is replaced). The batch dimension is dynamic and so are height and width, as
  multiples of the backbone's largest stride (e.g. 32, or 8 for a dilated ResNet at output stride
  8); where export cannot do that, height and width are fixed to the example size, the checkpoint's
  ``data.crop_size`` (then the batch alone, then everything). What was chosen is printed and
  stored in the metadata.

Both files carry ``raycontrast.json`` metadata (class names, normalisation mean/std, input shapes)
as an extra file.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from raycontrast.models.checkpoint import checkpoint_file, load_checkpoint, load_segmentor
from raycontrast.models.errors import ModelError

__all__ = ["EXPORT_FORMATS", "METADATA_FILE", "export_checkpoint", "export_model"]

EXPORT_FORMATS = ("torchscript", "exported-program")
METADATA_FILE = "raycontrast.json"


def _script_or_trace(
    model: nn.Module, example: Tensor, align: int
) -> tuple[torch.jit.ScriptModule, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream
        try:
            return torch.jit.script(model), "script"
        except Exception:
            pass
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            h, w = example.shape[-2:]
            other = torch.randn(1, 3, h + align, w + align, dtype=example.dtype)
            traced = torch.jit.trace(model, example, check_inputs=[(other,)], check_tolerance=1e-4)
    return traced, "trace"


def _export_program(
    model: nn.Module, example: Tensor, align: int, metadata: dict[str, Any]
) -> tuple[bytes, str]:
    """Export and serialise, from the most to the least dynamic input specification."""
    from torch.export import Dim

    batch = Dim("batch", min=1, max=4096)
    blocks = 16384 // align
    attempts: list[tuple[str, dict[int, Any] | None]] = [
        (
            f"dynamic batch; dynamic height and width, multiples of {align}",
            {
                0: batch,
                2: align * Dim("h_blocks", min=1, max=blocks),
                3: align * Dim("w_blocks", min=1, max=blocks),
            },
        ),
        (f"dynamic batch; fixed height x width {tuple(example.shape[-2:])}", {0: batch}),
        (f"fixed input shape {tuple(example.shape)}", None),
    ]
    errors = []
    for what, dims in attempts:
        try:
            ep = torch.export.export(model, (example,), dynamic_shapes=(dims,) if dims else None)
            meta = {**metadata, "export": {"format": "exported-program", "shapes": what}}
            buffer = io.BytesIO()  # some graphs export but do not serialise: try the next spec
            torch.export.save(ep, buffer, extra_files={METADATA_FILE: json.dumps(meta)})
            return buffer.getvalue(), what
        except Exception as err:  # try the next, less dynamic, specification
            errors.append(f"{what}: {type(err).__name__}: {str(err)[:300]}")
    raise ModelError("torch.export failed for every input specification: " + " | ".join(errors))


def export_model(
    model: nn.Module,
    fmt: str,
    out: str | Path,
    example: Tensor,
    metadata: dict[str, Any] | None = None,
    align: int = 32,
) -> tuple[Path, str]:
    """Export an inference model (e.g. a deployed segmentor) to ``out``.

    Args:
        model: module mapping ``(B, 3, H, W)`` images to logits; put it in eval mode first.
        fmt: ``torchscript`` or ``exported-program``.
        out: output file (parent folders are created).
        example: example input ``(B, 3, H, W)``; use B >= 2 so the batch dimension stays dynamic.
        metadata: JSON-serialisable dict stored as the extra file ``raycontrast.json``.
        align: the backbone's largest stride: dynamic heights/widths of exported programs are
            multiples of it, and a traced model is checked at ``example`` size + ``align``.

    Returns:
        ``(path, how)`` where ``how`` says how it was exported (script / trace / dynamic dims).
    """
    if fmt not in EXPORT_FORMATS:
        raise ModelError(f"export format {fmt!r} is not one of: {', '.join(EXPORT_FORMATS)}")
    out = Path(out).expanduser()
    if fmt == "exported-program" and out.suffix != ".pt2":
        out = out.with_suffix(".pt2")  # torch.export.save / load require the .pt2 suffix
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(metadata or {})
    model = model.eval()
    with torch.no_grad():
        if fmt == "torchscript":
            module, how = _script_or_trace(model, example, align)
            meta["export"] = {"format": fmt, "method": how}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                torch.jit.save(module, str(out), _extra_files={METADATA_FILE: json.dumps(meta)})
        else:
            data, how = _export_program(model, example, align, meta)
            out.write_bytes(data)
    return out, how


def _check_output(out: str | Path, fmt: str) -> None:
    """Refuse, before any work, an output path that is a directory (the export writes one file)."""
    path = Path(out).expanduser()
    if fmt == "exported-program" and path.suffix != ".pt2":
        path = path.with_suffix(".pt2")
    if path.is_dir():
        raise ModelError(
            f"--out {path} is a directory; pass the file to write, e.g. --out "
            f"{path / ('model.pt2' if fmt == 'exported-program' else 'model.pt')}"
        )
    if any(p.exists() and not p.is_dir() for p in path.parents):
        raise ModelError(f"--out {path}: a parent of it is a file, not a folder")


def export_checkpoint(checkpoint: str | Path, fmt: str, out: str | Path) -> Path:
    """``raycontrast export CHECKPOINT --format torchscript|exported-program --out FILE``.

    Loads the checkpoint's segmentor, removes the projection and auxiliary heads
    (:meth:`~raycontrast.models.Segmentor.deploy`) and exports a model mapping normalised images
    ``(B, 3, H, W)`` to logits ``(B, K, H, W)``. The example input is ``2 x 3 x data.crop_size`` of
    the checkpoint's config.

    Args:
        checkpoint: checkpoint directory or ``state.pt``.
        fmt: ``torchscript`` or ``exported-program``.
        out: output file.

    Returns:
        The written file.

    Example:
        >>> export_checkpoint("runs/synthetic/checkpoint_000400", "torchscript", "seg.pt")
        >>> logits = torch.jit.load("seg.pt")(images)
    """
    if fmt not in EXPORT_FORMATS:
        raise ModelError(f"export format {fmt!r} is not one of: {', '.join(EXPORT_FORMATS)}")
    _check_output(out, fmt)
    from raycontrast.outputs import check_output

    check_output(
        out if fmt != "exported-program" else Path(out).expanduser().with_suffix(".pt2"),
        {"the checkpoint": checkpoint_file(checkpoint)},
    )
    seg, cfg = load_segmentor(checkpoint)
    state = load_checkpoint(checkpoint)
    deployed = seg.deploy()
    h, w = cfg.data.crop_size
    example = torch.randn(2, 3, h, w)
    metadata = {
        "checkpoint": str(checkpoint_file(checkpoint)),
        "num_classes": seg.num_classes,
        "class_names": list(state.get("class_names") or []),
        "ignore_index": cfg.data.ignore_index,
        "mean": list(cfg.data.mean),
        "std": list(cfg.data.std),
        "input": "float32 (B, 3, H, W) RGB in 0-1, normalised with mean/std",
        "output": "logits (B, K, H, W)",
        "model": {k: getattr(cfg.model, k) for k in ("backbone", "head", "output_stride")},
    }
    path, how = export_model(deployed, fmt, out, example, metadata, align=max(seg.reductions))
    n_params = sum(p.numel() for p in deployed.parameters())
    print(
        f"raycontrast: wrote {fmt} model to {path} ({path.stat().st_size / 2**20:.1f} MiB, "
        f"{n_params / 1e6:.2f}M parameters, no projection head; {how})"
    )
    return path
