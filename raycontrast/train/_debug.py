"""Fault injection for the reliability tests (``debug.*`` config keys), in one place.

The trainer calls :meth:`DebugHooks.before_step` at the start of each iteration and
:meth:`DebugHooks.after_losses` on the step's losses; with the default config both do nothing.
"""

from __future__ import annotations

import dataclasses
import os
import signal

from raycontrast import storage
from raycontrast.config import DebugConfig
from raycontrast.train._logger import console
from raycontrast.train._losses import StepLosses

__all__ = ["DebugHooks"]


class DebugHooks:
    """Kill a worker or the bank actor, or make the contrast term NaN, at configured iterations.

    Iterations are counted from 1, as in the logs. Each kill happens once per run directory, so a
    restarted run does not repeat it.

    Args:
        cfg: the ``debug`` config section.
        run_dir: the run directory (holds the once-only markers under ``debug/``).
        rank: this worker's world rank.
    """

    def __init__(self, cfg: DebugConfig, run_dir: str, rank: int):
        self.cfg = cfg
        self.run_dir = run_dir
        self.rank = rank

    def _first_time(self, what: str) -> bool:
        marker = storage.join(self.run_dir, "debug", what)
        if storage.exists(marker):
            return False
        storage.write_bytes(marker, b"1")
        return True

    def before_step(self, iteration: int, bank_actor=None) -> None:
        """``debug.fail_at_iteration`` / ``fail_rank`` and ``debug.kill_bank_at_iteration``."""
        d = self.cfg
        if (
            iteration == d.fail_at_iteration
            and self.rank == d.fail_rank
            and self._first_time(f"worker_failed_at_{iteration}")
        ):
            console(
                f"[debug] killing rank {self.rank} (pid {os.getpid()}) at iteration {iteration}"
            )
            os.kill(os.getpid(), signal.SIGKILL)
        if (
            iteration == d.kill_bank_at_iteration
            and self.rank == 0
            and bank_actor is not None
            and self._first_time(f"bank_killed_at_{iteration}")
        ):
            import ray

            console(f"[debug] killing the bank actor at iteration {iteration}")
            ray.kill(bank_actor, no_restart=False)

    def after_losses(self, iteration: int, losses: StepLosses) -> StepLosses:
        """``debug.nonfinite_at_iteration``: rank 0's contrast term becomes NaN."""
        if iteration != self.cfg.nonfinite_at_iteration or self.rank != 0:
            return losses
        return poison_contrast(losses)


def poison_contrast(losses: StepLosses) -> StepLosses:
    """The step's losses with a NaN contrast term (as a diverging contrast loss would give)."""
    if "contrast" not in losses.terms:
        raise ValueError("debug.nonfinite_at_iteration needs contrast.enabled=true")
    bad = losses.terms["contrast"] * float("nan")
    terms = dict(losses.terms, contrast=bad)
    return dataclasses.replace(losses, total=losses.total + bad, terms=terms)
