"""What Ray Train retries, and what it waits for.

Ray Train V2 (2.60) hands every worker-group failure to a *failure policy*; its default retries any
worker error up to ``FailureConfig(max_failures)``. A user's mistake (:class:`~raycontrast.errors.
UserError`: bad data, config, weights, checkpoint content) fails identically on every attempt, so
:class:`UserErrorPolicy` raises it at once; lost workers, nodes and actors are retried as before.
:class:`Trainer` is ``TorchTrainer`` with that policy and with a Ctrl-C handler that remembers the
interrupt, so the driver can say how to resume.

A slow worker-group start (a loaded machine, a cluster adding nodes) is not a failure either:
:func:`patient_start` raises Ray Train's start timeout (default 60 s) unless the user set it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import MutableMapping

import ray
from ray.train.torch import TorchTrainer

try:  # private to Ray Train V2 (2.60): a release that moves it must not break the import
    from ray.train.v2._internal.execution.failure_handling import (
        DefaultFailurePolicy,
        FailureDecision,
    )
except ImportError:  # pragma: no cover - depends on the installed Ray
    DefaultFailurePolicy, FailureDecision = object, None

from raycontrast.errors import is_user_error

__all__ = [
    "DEFAULT_START_TIMEOUT_S",
    "START_TIMEOUT_ENV",
    "Trainer",
    "UserErrorPolicy",
    "patient_start",
    "user_failure",
]

log = logging.getLogger(__name__)

START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
"""Ray Train's limit on a worker group's start (read by its controller, propagated from the driver)."""
DEFAULT_START_TIMEOUT_S = 900.0
"""Our default for it: workers that are still starting after Ray's 60 s are waited for, not failed."""


def patient_start(environ: MutableMapping[str, str] | None = None) -> float:
    """Set :data:`START_TIMEOUT_ENV` to :data:`DEFAULT_START_TIMEOUT_S` unless it is set; returns the
    timeout in force. Call before ``fit()`` (the controller reads it from the driver's environment)."""
    env = os.environ if environ is None else environ
    value = env.setdefault(START_TIMEOUT_ENV, f"{DEFAULT_START_TIMEOUT_S:g}")
    try:
        return float(value)
    except ValueError:
        return DEFAULT_START_TIMEOUT_S


def user_failure(error: BaseException | None) -> tuple[int | None, BaseException] | None:
    """The first user error in a Train failure: ``(rank, exception)`` (rank ``None`` for the
    controller), or ``None`` when every failure is the infrastructure's."""
    if error is None:
        return None
    failures = getattr(error, "worker_failures", None) or {}
    for rank, exc in sorted(failures.items()):
        if is_user_error(exc):
            return rank, _unwrap(exc)
    controller = getattr(error, "controller_failure", None)
    if is_user_error(controller):
        return None, _unwrap(controller)
    if is_user_error(error):
        return None, _unwrap(error)
    return None


def _unwrap(exc: BaseException) -> BaseException:
    from raycontrast.errors import UserError

    for _ in range(5):
        if isinstance(exc, UserError):
            return exc
        exc = getattr(exc, "cause", None) or getattr(exc, "_base_exc", None) or exc.__cause__
    return exc


POLICY_SUPPORTED = FailureDecision is not None
"""Whether this Ray has the failure-policy hook :class:`UserErrorPolicy` needs. Without it, Ray's own
policy runs: user errors are then retried up to ``train.max_failures`` (a warning says so)."""


class UserErrorPolicy(DefaultFailurePolicy):
    """Ray Train's default failure policy, except that a user error is raised at once (no retry)."""

    def make_decision(self, training_failed_error) -> FailureDecision:
        found = user_failure(training_failed_error)
        if found is not None:
            rank, exc = found
            log.info("user error on rank %s, not retried: %s", rank, exc)
            return FailureDecision.RAISE
        return super().make_decision(training_failed_error)


class Trainer(TorchTrainer):
    """``TorchTrainer`` that does not retry user errors and remembers a Ctrl-C.

    ``interrupted`` is set by the first SIGINT (which asks the controller to abort, as Ray does); a
    second SIGINT raises ``KeyboardInterrupt`` at once. The previous SIGINT handler is restored when
    ``fit`` returns.
    """

    interrupted: bool = False

    def fit(self):
        previous = signal.getsignal(signal.SIGINT)
        try:
            return super().fit()
        finally:
            if previous is not None:
                # not the main thread (a Tune trial): nothing was installed, nothing to restore
                with contextlib.suppress(ValueError):
                    signal.signal(signal.SIGINT, previous)

    def _initialize_and_run_controller(self, **kwargs):
        if POLICY_SUPPORTED:
            kwargs["failure_policy"] = UserErrorPolicy(self.run_config.failure_config)
        else:
            log.warning(
                "this Ray (%s) has no ray.train.v2 failure-policy hook: user errors in workers are "
                "retried up to train.max_failures like any failure (tested with Ray 2.60)",
                ray.__version__,
            )
        return super()._initialize_and_run_controller(**kwargs)

    def _register_sigint_handler(self, controller) -> None:
        def on_sigint(signum, frame):
            if self.interrupted:
                raise KeyboardInterrupt
            self.interrupted = True
            print(
                "raycontrast: stopping at Ctrl-C (press again to stop at once) ...",
                file=sys.stderr,
                flush=True,
            )
            # the controller may be gone already: fit() then returns or raises by itself
            with contextlib.suppress(Exception):
                ray.get(controller.abort.remote())

        signal.signal(signal.SIGINT, on_sigint)
