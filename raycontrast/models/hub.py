"""Whether ``model.pretrained=true`` can get its weights, asked in the driver before workers start.

timm downloads hub weights inside each Train worker; without network (and without a cached copy) every
worker fails after a long wait. :func:`check_hub_weights` answers in seconds: a cached copy (the
Hugging Face cache or torch hub's) is enough; otherwise the hub host must accept a TCP connection.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["HUB_PROBE_TIMEOUT_S", "cached_weights", "check_hub_weights"]

HUB_PROBE_TIMEOUT_S = 5.0
"""How long to wait for the hub host to accept a connection before calling it unreachable."""

_HUB_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def _pretrained_cfg(name: str):
    from timm.models import get_pretrained_cfg

    try:
        return get_pretrained_cfg(name)
    except Exception:  # an unknown tag: the model build reports it
        return None


def cached_weights(name: str) -> str | None:
    """A local copy of timm model ``name``'s pretrained weights, if one was downloaded before."""
    cfg = _pretrained_cfg(name)
    if cfg is None:
        return None
    if cfg.file and Path(cfg.file).is_file():
        return str(cfg.file)
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo = cfg.hf_hub_id.split("@")[0]
        for filename in ([cfg.hf_hub_filename] if cfg.hf_hub_filename else []) + list(_HUB_FILES):
            found = try_to_load_from_cache(repo, filename)
            if isinstance(found, str):
                return found
    if cfg.url:
        import torch.hub

        local = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlsplit(cfg.url).path).name
        if local.is_file():
            return str(local)
    return None


def _hub_host(name: str) -> tuple[str, int]:
    cfg = _pretrained_cfg(name)
    url = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    if cfg is not None and not cfg.hf_hub_id and cfg.url:
        url = cfg.url
    parts = urlsplit(url)
    return parts.hostname or "huggingface.co", parts.port or (80 if parts.scheme == "http" else 443)


def check_hub_weights(name: str, timeout_s: float = HUB_PROBE_TIMEOUT_S) -> str:
    """Refuse ``model.pretrained=true`` for backbone ``name`` when its weights cannot be had.

    Returns:
        ``"cached"`` or ``"reachable"``.

    Raises:
        ModelError: not cached, and offline (``HF_HUB_OFFLINE``) or the hub host does not answer.
    """
    from raycontrast.models.backbone import _hub_error, hub_offline

    if cached_weights(name) is not None:
        return "cached"
    if hub_offline():
        raise _hub_error(name, None)
    host, port = _hub_host(name)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as err:
        reason = "timed out" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise _hub_error(
            name, ConnectionError(f"{host}:{port} {reason}; no cached copy either")
        ) from None
    return "reachable"
