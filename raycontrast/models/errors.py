"""Error types of :mod:`raycontrast.models`."""

from __future__ import annotations

from raycontrast.config import ConfigError

__all__ = ["CheckpointError", "ModelError", "describe_load_failure"]


class ModelError(ConfigError):
    """A model cannot be built, loaded or exported as configured; the message says why and what to do.

    It subclasses :class:`~raycontrast.config.ConfigError` so that the ``raycontrast`` command line
    reports it as a one-line error (exit status 2) rather than a traceback.
    """


class CheckpointError(ModelError):
    """A checkpoint is missing, is not a raycontrast checkpoint, or does not fit the requested model."""


def describe_load_failure(err: BaseException) -> str:
    """The gist of a ``torch.load`` failure, without torch's advice to disable ``weights_only``."""
    import re

    text = str(err)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return f"it holds a Python object ({found.group(1)}), which is never loaded, for safety"
    if "zip archive" in text or "central directory" in text:
        return "a corrupt or truncated torch.save file"
    return f"not a file written by torch.save ({type(err).__name__})"
