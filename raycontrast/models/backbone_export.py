"""``raycontrast export --backbone``: a trained run's backbone as a timm state dict.

The file is what ``timm.create_model(model.backbone).state_dict()`` would hold for the backbone's
layers (timm's own key names, no classifier), so ``model.pretrained=/path/to/file`` loads it into a
new run, and ``timm.create_model(name).load_state_dict(sd, strict=False)`` into a plain timm model.
This is how the confirmatory study's pretrained-init regime gets a backbone trained by the framework
itself on a disjoint corpus (``experiments/pretrain/synthetic.yaml``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from raycontrast.models.checkpoint import CHECKPOINT_FILE, load_segmentor
from raycontrast.models.errors import ModelError

__all__ = ["backbone_state_dict", "export_backbone", "find_checkpoint"]


def find_checkpoint(path: str | Path) -> Path:
    """``path`` itself when it is a checkpoint (directory or ``state.pt``), else the newest
    ``checkpoint_*`` directory of the run directory ``path``."""
    p = Path(path).expanduser()
    if p.is_file() or (p / CHECKPOINT_FILE).is_file():
        return p
    found = sorted(
        (c for c in p.glob("checkpoint_*") if (c / CHECKPOINT_FILE).is_file()),
        key=lambda c: c.stat().st_mtime,
    )
    if not found:
        raise ModelError(
            f"export --backbone: {path} is neither a checkpoint (a directory with "
            f"{CHECKPOINT_FILE}) nor a run directory holding checkpoint_*/ directories"
        )
    return found[-1]


def backbone_state_dict(backbone: torch.nn.Module, name: str) -> dict[str, Tensor]:
    """The backbone's weights under the key names of ``timm.create_model(name)``.

    timm's ``features_only`` wrapper renames nested modules (``stages.0`` becomes ``stages_0``);
    keys are matched to the plain model's modulo that renaming, and every backbone key must match.
    """
    import timm

    plain = timm.create_model(name, pretrained=False).state_dict()
    by_norm = {k.replace(".", "_"): k for k in plain}
    out: dict[str, Tensor] = {}
    unmatched = []
    for key, value in backbone.state_dict().items():
        target = key if key in plain else by_norm.get(key.replace(".", "_"))
        if target is None or plain[target].shape != value.shape:
            unmatched.append(key)
            continue
        out[target] = value.detach().clone().cpu()
    if unmatched:
        raise ModelError(
            f"export --backbone: {len(unmatched)} backbone key(s) have no counterpart in "
            f"timm.create_model({name!r}): {', '.join(unmatched[:8])}"
        )
    return out


def export_backbone(checkpoint: str | Path, out: str | Path) -> Path:
    """Write the backbone of ``checkpoint`` (a checkpoint, or a run directory: its newest) to ``out``
    with ``torch.save`` (a timm state dict); returns ``out``."""
    seg, cfg = load_segmentor(find_checkpoint(checkpoint))
    state = backbone_state_dict(seg.backbone, cfg.model.backbone)
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, out)
    print(
        f"backbone {cfg.model.backbone}: {len(state)} tensors -> {out} (load with "
        f"model.pretrained={out})",
        flush=True,
    )
    return out
