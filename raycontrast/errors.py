"""The one distinction every failure needs: the user's mistake, or the machine's.

A :class:`UserError` (bad data, config, weights or checkpoint content) fails the same way on every
retry, so a run stops at once with its message; anything else raised in a Train worker (a lost node, a
dead actor) is retried up to ``train.max_failures`` times. :class:`~raycontrast.config.ConfigError`
and :class:`~raycontrast.data.DatasetError` are user errors.
"""

from __future__ import annotations

__all__ = ["ConfigError", "UserError", "is_user_error"]


class UserError(Exception):
    """A mistake in what the user passed in; retrying cannot fix it. The message names the file, key
    or value and what was expected."""


class ConfigError(UserError, ValueError):
    """A configuration file, key or value is invalid; the message says which and what is expected."""


def is_user_error(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or the exception it wraps, as Ray's task errors do) is a :class:`UserError`."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, UserError):
            return True
        exc = getattr(exc, "cause", None) or getattr(exc, "_base_exc", None) or exc.__cause__
        seen += 1
    return False
