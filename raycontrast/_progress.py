"""Progress bars for the command-line tools (``convert``, ``eval``, ``predict``).

A thin layer over tqdm: bars go to stderr and are shown only on a terminal, so logs, CI output and
tests stay free of them. ``RAYCONTRAST_PROGRESS=0`` (or ``--no-progress``) turns them off and
``RAYCONTRAST_PROGRESS=1`` forces them on.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

__all__ = ["progress", "progress_enabled"]

ENV = "RAYCONTRAST_PROGRESS"


def progress_enabled(enabled: bool | None = None) -> bool | None:
    """Resolve the on/off choice: an explicit ``enabled``, else ``$RAYCONTRAST_PROGRESS``, else
    ``None`` (tqdm's "only on a terminal")."""
    if enabled is not None:
        return enabled
    value = os.environ.get(ENV, "").strip().lower()
    if value in ("0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    return None


def progress(
    iterable: Iterable[Any] | None = None,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    enabled: bool | None = None,
) -> Any:
    """A ``tqdm`` bar over ``iterable`` (or a manual one with ``total``), shown per
    :func:`progress_enabled`. Use ``bar.update(n)``, ``bar.write(msg)`` and ``bar.close()``."""
    from tqdm.auto import tqdm

    choice = progress_enabled(enabled)
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        disable=None if choice is None else not choice,
        dynamic_ncols=True,
        leave=True,
    )
