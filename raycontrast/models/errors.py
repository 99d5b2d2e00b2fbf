"""Error types of :mod:`raycontrast.models`."""

from __future__ import annotations

from raycontrast.config import ConfigError

__all__ = ["CheckpointError", "ModelError"]


class ModelError(ConfigError):
    """A model cannot be built, loaded or exported as configured; the message says why and what to do.

    It subclasses :class:`~raycontrast.config.ConfigError` so that the ``raycontrast`` command line
    reports it as a one-line error (exit status 2) rather than a traceback.
    """


class CheckpointError(ModelError):
    """A checkpoint is missing, is not a raycontrast checkpoint, or does not fit the requested model."""
