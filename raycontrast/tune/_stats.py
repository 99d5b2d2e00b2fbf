"""Statistics of a multi-seed study: per-arm intervals and paired differences against a reference arm.

Every arm of a study is run with the same seeds, and a seed fixes the initial weights, the data order
and the augmentation and sampling streams, so two arms' runs with one seed are paired observations:
the difference ``arm - reference`` per seed removes the seed's own luck, and its Student t interval
and paired t-test (``scipy.stats``) say whether the arm's effect is distinguishable from zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["PairedDifference", "Summary", "paired_difference", "summarize"]


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (ddof=1) and two-sided Student t interval of the mean."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float

    @property
    def half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}{k}": v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class PairedDifference:
    """``arm - reference`` over the seeds both have: its summary and the paired t-test's p-value."""

    diff: Summary
    t: float
    p: float
    seeds: tuple[int, ...]

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {**self.diff.as_dict(prefix), f"{prefix}t": self.t, f"{prefix}p": self.p}


def _finite(values: Sequence[float]) -> np.ndarray:
    a = np.asarray(list(values), dtype=np.float64)
    return a[np.isfinite(a)]


def summarize(values: Sequence[float], confidence: float = 0.95) -> Summary:
    """Mean, std and the Student t ``confidence`` interval of the mean of the finite ``values``.

    With fewer than two values the spread is unknown: std and the interval are NaN. With zero spread
    the interval is the point itself.
    """
    from scipy import stats

    a = _finite(values)
    n = len(a)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(a.mean())
    if n < 2:
        return Summary(1, mean, math.nan, math.nan, math.nan)
    if np.all(a == a[0]):
        return Summary(n, float(a[0]), 0.0, float(a[0]), float(a[0]))
    std = float(a.std(ddof=1))
    low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=float(stats.sem(a)))
    return Summary(n, mean, std, float(low), float(high))


def paired_difference(
    arm: Mapping[int, float], reference: Mapping[int, float], confidence: float = 0.95
) -> PairedDifference:
    """``arm - reference`` paired by seed (seeds missing or non-finite in either are left out).

    ``t`` and ``p`` come from ``scipy.stats.ttest_rel`` (two-sided). When every difference is the same
    the test is undefined: ``t``/``p`` are NaN if that difference is 0, else ``t = ±inf``, ``p = 0``.
    """
    from scipy import stats

    seeds = sorted(
        s for s in arm if s in reference and math.isfinite(arm[s]) and math.isfinite(reference[s])
    )
    a = np.array([arm[s] for s in seeds], dtype=np.float64)
    b = np.array([reference[s] for s in seeds], dtype=np.float64)
    diff = summarize(a - b, confidence)
    if len(seeds) < 2:
        return PairedDifference(diff, math.nan, math.nan, tuple(seeds))
    d = a - b
    if np.all(d == d[0]):
        if d[0] == 0:
            return PairedDifference(diff, math.nan, math.nan, tuple(seeds))
        return PairedDifference(diff, math.copysign(math.inf, d[0]), 0.0, tuple(seeds))
    result = stats.ttest_rel(a, b)
    return PairedDifference(diff, float(result.statistic), float(result.pvalue), tuple(seeds))
