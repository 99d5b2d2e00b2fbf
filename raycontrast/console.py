"""What the console shows: raycontrast's own lines, not Ray's internals (see docs/how-to/tracking.md).

By default the commands that start Ray (train, tune, study) hide lines known to be harmless noise:
Ray Train's per-rank "Reporting training result ..." lines, matplotlib's font cache notice, Ray's
token-auth notice and the state-API polling warnings. Everything else, and in particular anything
that names an error, passes. ``--verbose`` (or ``log.verbose: true``, or ``RAYCONTRAST_VERBOSE=1``)
shows everything.
"""

from __future__ import annotations

import io
import logging
import os
import re
import sys
from collections.abc import Iterable
from typing import TextIO

__all__ = ["HIDDEN", "LineFilter", "hidden", "install", "phase", "verbose_requested"]

ENV = "RAYCONTRAST_VERBOSE"

HIDDEN: tuple[re.Pattern[str], ...] = tuple(
    re.compile(p)
    for p in (
        # Train V2 logs every ray.train.report of every rank (~600 characters each)
        r"Reporting training result \d+: TrainingReport\(",
        # matplotlib building its font cache in a fresh worker process
        r"generated new fontManager",
        r"Matplotlib is building the font cache",
        # Ray >= 2.59 turns token auth on for local clusters and says so at every start
        r"Token authentication is enabled for this Ray cluster",
        # the controller polling the state API while the dashboard starts (it retries)
        r"Failed to query Ray Train Controller actor state",
        # Ray's hint about the Ray Train dashboard and its metrics, printed at every fit()
        r"Tip: Set the environment variable RAY_TRAIN_V2_ENABLED",
        r"Usage stats collection is (enabled|disabled)",
        r"Started a local Ray instance\.",
        r"View the dashboard at",
        r"Uninstrumented ray\.train\.report",
        # the core worker cannot reach the metrics agent of a local instance (metrics only)
        r"Failed to establish connection to the metrics exporter agent",
        r"Metrics will not be exported",
    )
)
"""Lines hidden by default; a line that also names an error, exception or traceback is never hidden."""

_KEEP_ALWAYS = re.compile(r"Error|Exception|Traceback")
# error words inside a known-harmless line (the metrics agent's status is named as an RpcError)
_BENIGN = (re.compile(r"Exporter agent status: RpcError:.*$"),)


def hidden(line: str) -> bool:
    """Whether ``line`` is known-harmless noise (and names no error)."""
    if not any(p.search(line) for p in HIDDEN):
        return False
    # "Failed to query ..." is itself the noise; any other error word means trouble
    text = line
    for p in (*HIDDEN, *_BENIGN):
        text = p.sub("", text)
    return not _KEEP_ALWAYS.search(text)


class LineFilter(io.TextIOBase):
    """A text stream that forwards whole lines to ``stream`` unless :func:`hidden`."""

    def __init__(self, stream: TextIO):
        super().__init__()
        self.stream = stream
        self._partial = ""
        self.dropped = 0

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        data = self._partial + text
        lines = data.split("\n")
        self._partial = lines.pop()
        kept = []
        for line in lines:
            if hidden(line):
                self.dropped += 1
            else:
                kept.append(line + "\n")
        if kept:
            self.stream.write("".join(kept))
        return len(text)

    def flush(self) -> None:
        if self._partial and not hidden(self._partial):
            self.stream.write(self._partial)
            self._partial = ""
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.stream, "encoding", "utf-8")


class _RecordFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            return not hidden(record.getMessage())
        except Exception:  # a record that cannot format itself is shown
            return True


def verbose_requested(flag: bool = False) -> bool:
    """``--verbose`` or ``$RAYCONTRAST_VERBOSE``."""
    return flag or os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _handlers(names: Iterable[str]) -> list[logging.Handler]:
    out = []
    for name in names:
        out.extend(logging.getLogger(name).handlers)
    return out


def install(verbose: bool = False) -> bool:
    """Filter this process's stdout and stderr (and the log handlers of Ray) unless ``verbose``;
    returns whether filtering is on. Idempotent."""
    if verbose_requested(verbose):
        os.environ[ENV] = "1"
        return False
    if not isinstance(sys.stdout, LineFilter):
        sys.stdout = LineFilter(sys.stdout)
    if not isinstance(sys.stderr, LineFilter):
        sys.stderr = LineFilter(sys.stderr)
    logging.getLogger("matplotlib.font_manager").setLevel(logging.WARNING)
    import ray  # noqa: F401  (its log handlers exist once imported)

    for handler in _handlers(["", "ray", "ray.train", "ray.tune", "ray.data"]):
        if not any(isinstance(f, _RecordFilter) for f in handler.filters):
            handler.addFilter(_RecordFilter())
    return True


def phase(name: str, message: str) -> None:
    """One start-up phase line (``[name] starting Ray``) on stdout, flushed."""
    print(f"[{name}] {message}", flush=True)
