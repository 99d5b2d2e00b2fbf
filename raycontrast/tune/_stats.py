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

__all__ = [
    "Bootstrap",
    "PairedDifference",
    "Summary",
    "bootstrap_paired_miou",
    "holm",
    "miou_of_counts",
    "paired_difference",
    "summarize",
    "wilcoxon_signed_rank",
]


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


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order); NaN p-values stay NaN and do not count in m.

    The i-th smallest of m p-values is multiplied by ``m - i`` (i from 0), the running maximum keeps
    the adjusted values monotone, and values are capped at 1.
    """
    p = np.asarray(list(pvalues), dtype=np.float64)
    out = np.full(p.shape, math.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    running = 0.0
    for rank, i in enumerate(ok[np.argsort(p[ok], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def wilcoxon_signed_rank(differences: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (non-finite ones left out).

    Zero differences are dropped (Wilcoxon's convention). The null distribution is exact when at most
    25 differences remain and their absolute values have no ties, else the normal approximation
    (with tie correction). NaN with no non-zero difference.
    """
    from scipy import stats

    d = _finite(differences)
    d = d[d != 0]
    if len(d) == 0:
        return math.nan
    ties = len(np.unique(np.abs(d))) < len(d)
    method = "exact" if len(d) <= 25 and not ties else "approx"
    return float(stats.wilcoxon(d, zero_method="wilcox", method=method).pvalue)


def miou_of_counts(confusion: np.ndarray) -> np.ndarray:
    """mIoU of ``(..., K, K)`` confusion counts: the mean IoU over the classes with a non-empty union
    (what :func:`raycontrast.eval.metrics_from_confusion` computes), one value per leading index."""
    c = np.asarray(confusion, dtype=np.float64)
    tp = np.diagonal(c, axis1=-2, axis2=-1)
    union = c.sum(-1) + c.sum(-2) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
        return np.nanmean(iou, axis=-1)


@dataclass(frozen=True)
class Bootstrap:
    """Paired bootstrap over test images of the mean (over seeds) mIoU difference arm − reference."""

    estimate: float
    ci_low: float
    ci_high: float
    n_seeds: int
    n_images: int
    replicates: int


def bootstrap_paired_miou(
    arm: Mapping[int, np.ndarray],
    reference: Mapping[int, np.ndarray],
    replicates: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Bootstrap:
    """The test set's sampling error of an arm's mIoU difference with the reference.

    ``arm`` and ``reference`` map seeds to ``(N, K, K)`` per-image confusion counts on the same N test
    images (in the same order). A replicate draws N image indices with replacement (one draw shared by
    every run, so the pairing by image is kept), recomputes each run's mIoU from its summed counts over
    the drawn images, and averages the paired difference over the seeds both have. The interval is the
    percentile interval of the replicates; ``estimate`` is the same statistic on the full test set.
    """
    seeds = sorted(s for s in arm if s in reference)
    if not seeds:
        return Bootstrap(math.nan, math.nan, math.nan, 0, 0, 0)
    n = arm[seeds[0]].shape[0]
    for s in seeds:
        if arm[s].shape[0] != n or reference[s].shape[0] != n:
            raise ValueError(
                f"bootstrap_paired_miou: seed {s}: runs hold {arm[s].shape[0]} and "
                f"{reference[s].shape[0]} test images, expected {n} (the same test set)"
            )
    rng = np.random.default_rng(seed)
    weights = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(replicates)])
    weights = weights.astype(np.float64)
    diffs = np.zeros(replicates)
    full = 0.0
    for s in seeds:
        a = np.asarray(arm[s], dtype=np.float64).reshape(n, -1)
        b = np.asarray(reference[s], dtype=np.float64).reshape(n, -1)
        k = arm[s].shape[-1]
        diffs += miou_of_counts((weights @ a).reshape(-1, k, k))
        diffs -= miou_of_counts((weights @ b).reshape(-1, k, k))
        full += float(
            miou_of_counts(a.sum(0).reshape(k, k)) - miou_of_counts(b.sum(0).reshape(k, k))
        )
    diffs /= len(seeds)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(diffs, [alpha, 1 - alpha])
    return Bootstrap(full / len(seeds), float(low), float(high), len(seeds), n, replicates)
