"""Progress bars for the command-line tools (``convert``, ``eval``, ``predict``).

A thin layer over tqdm: bars go to stderr on a terminal. Off a terminal (a job log under ``ray job
submit``, CI, a pipe) a plain line goes to stdout every 10% and at least every
``$RAYCONTRAST_PROGRESS_EVERY`` seconds (default 30), so long work is never silent in a log.
``RAYCONTRAST_PROGRESS=0`` (or ``--no-progress``) turns both off and ``RAYCONTRAST_PROGRESS=1``
forces the bar on.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["LineProgress", "progress", "progress_enabled"]

ENV = "RAYCONTRAST_PROGRESS"
EVERY_ENV = "RAYCONTRAST_PROGRESS_EVERY"


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
    if choice is None and not _on_terminal():
        return LineProgress(iterable, total=total, desc=desc, unit=unit)
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        disable=None if choice is None else not choice,
        dynamic_ncols=True,
        leave=True,
    )


def _on_terminal() -> bool:
    stream = sys.stderr
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):
        return False


class LineProgress:
    """Progress as plain lines on stdout (off a terminal): ``[eval] 40/100 img (40%), 12.3 img/s,
    ETA 5s`` at every 10% (at most one a second) and at least every ``every_s`` seconds, and a last
    line at :meth:`close`. Has the part of tqdm's interface the commands use (``disable`` is true:
    messages are printed, not written above a bar)."""

    disable = True

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        every_s: float | None = None,
        stream: Any = None,
    ):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit = total, desc, unit
        self.every_s = every_s if every_s is not None else float(os.environ.get(EVERY_ENV, 30))
        self.stream = stream
        self.n = 0
        self._t0 = self._last = time.perf_counter()
        self._next_pct = 10
        self._closed = False
        self.lines = 0

    def __iter__(self) -> Iterator[Any]:
        try:
            for item in self.iterable or ():
                yield item
                self.update(1)
        finally:
            self.close()

    def _line(self, final: bool = False) -> str:
        elapsed = time.perf_counter() - self._t0
        rate = self.n / elapsed if elapsed > 0 else 0.0
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        text = f"[{self.desc}] {done} {self.unit}"
        if self.total:
            text += f" ({100 * self.n / self.total:.0f}%)"
        if final:
            return text + f" in {elapsed:.1f}s"
        text += f", {rate:.3g} {self.unit}/s"
        if self.total and rate > 0:
            text += f", ETA {format_eta((self.total - self.n) / rate)}"
        return text

    def write(self, message: str) -> None:
        print(message, file=self.stream or sys.stdout, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        pct = 100 * self.n / self.total if self.total else 0.0
        due = now - self._last >= self.every_s
        if self.total and pct >= self._next_pct and now - self._last >= 1.0 and pct < 100:
            due = True
        if self.total:
            while self._next_pct <= pct:
                self._next_pct += 10
        if due:
            self._last = now
            self.lines += 1
            self.write(self._line())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.n:
            self.lines += 1
            self.write(self._line(final=True))


def format_eta(seconds: float) -> str:
    """``1h02m`` / ``3m05s`` / ``42s`` (``?`` when unknown)."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")
