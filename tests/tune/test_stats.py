"""Study statistics against plain computations on known numbers.

References: the Student t distribution with 2 degrees of freedom has closed forms
(CDF ``F(t) = 1/2 + t / (2 sqrt(2 + t^2))``, quantile ``(2q - 1) / sqrt(2 q (1 - q))``), and
tabulated quantiles for other degrees of freedom.
"""

import math

import numpy as np
import pytest
import torch

from raycontrast.tune._stats import (
    bootstrap_paired_miou,
    holm,
    miou_of_counts,
    paired_difference,
    summarize,
    wilcoxon_signed_rank,
)


def _mean(xs):
    return sum(xs) / len(xs)


def _std(xs):
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _t2_quantile(q):
    return (2 * q - 1) / math.sqrt(2 * q * (1 - q))


def _t2_two_sided_p(t):
    return 1 - abs(t) / math.sqrt(2 + t * t)


def test_summary_of_three_values_uses_the_t_quantile_with_two_degrees_of_freedom():
    xs = [0.50, 0.56, 0.59]
    s = summarize(xs)
    half = _t2_quantile(0.975) * _std(xs) / math.sqrt(3)  # 4.3027 x s / sqrt(3)
    assert s.n == 3
    assert s.mean == pytest.approx(_mean(xs), abs=1e-15)
    assert s.std == pytest.approx(_std(xs), rel=1e-12)
    assert s.ci_low == pytest.approx(_mean(xs) - half, rel=1e-12)
    assert s.ci_high == pytest.approx(_mean(xs) + half, rel=1e-12)
    # other levels use their own quantile
    s90 = summarize(xs, confidence=0.90)
    assert s90.half_width == pytest.approx(_t2_quantile(0.95) * _std(xs) / math.sqrt(3), rel=1e-12)


@pytest.mark.parametrize(
    ("xs", "t_quantile"),
    [
        ([1.0, 2.0, 4.0, 8.0, 16.0], 2.7764451051977987),  # df 4, tabulated t(0.975)
        ([0.3, 0.1, 0.4, 0.1, 0.5, 0.9, 0.2, 0.6, 0.5, 0.3], 2.2621571627409915),  # df 9
        ([3.0, 5.0], 12.706204736174707),  # df 1
    ],
)
def test_interval_half_width_is_t_times_standard_error(xs, t_quantile):
    s = summarize(xs)
    assert s.half_width == pytest.approx(t_quantile * _std(xs) / math.sqrt(len(xs)), rel=1e-9)
    assert (s.ci_low + s.ci_high) / 2 == pytest.approx(_mean(xs), rel=1e-12)


def test_degenerate_summaries():
    one = summarize([0.7])
    assert one.n == 1 and one.mean == 0.7
    assert math.isnan(one.std) and math.isnan(one.ci_low) and math.isnan(one.ci_high)
    flat = summarize([0.4, 0.4, 0.4])
    assert (flat.std, flat.ci_low, flat.ci_high) == (0.0, 0.4, 0.4)
    assert summarize([]).n == 0
    # non-finite values (a run that never evaluated) are left out
    assert summarize([0.2, math.nan, 0.4]).n == 2


def test_paired_difference_pairs_by_seed_and_matches_the_closed_form_test():
    arm = {0: 0.60, 1: 0.58, 2: 0.65, 7: 0.99}  # seed 7 has no reference run: left out
    ref = {0: 0.57, 1: 0.58, 2: 0.61, 3: 0.40}
    d = paired_difference(arm, ref)
    diffs = [0.60 - 0.57, 0.58 - 0.58, 0.65 - 0.61]
    t = _mean(diffs) / (_std(diffs) / math.sqrt(3))
    assert d.seeds == (0, 1, 2)
    assert d.diff.mean == pytest.approx(_mean(diffs), rel=1e-12)
    assert d.diff.std == pytest.approx(_std(diffs), rel=1e-12)
    assert d.t == pytest.approx(t, rel=1e-10)
    assert d.p == pytest.approx(_t2_two_sided_p(t), rel=1e-10)
    half = _t2_quantile(0.975) * _std(diffs) / math.sqrt(3)
    assert (d.diff.ci_low, d.diff.ci_high) == pytest.approx(
        (_mean(diffs) - half, _mean(diffs) + half), rel=1e-10
    )
    # a difference whose interval includes 0 has p > 0.05, and the other way round
    assert (d.diff.ci_low < 0 < d.diff.ci_high) == (d.p > 0.05)


def test_paired_difference_is_not_the_unpaired_one():
    # a large seed effect shared by both arms: unpaired intervals overlap, the paired one does not
    ref = {0: 0.40, 1: 0.55, 2: 0.70, 3: 0.50, 4: 0.62}
    arm = {s: v + 0.02 + 0.001 * s for s, v in ref.items()}
    d = paired_difference(arm, ref)
    a, r = summarize(list(arm.values())), summarize(list(ref.values()))
    assert a.ci_low < r.ci_high  # unpaired: overlapping
    assert d.diff.ci_low > 0 and d.p < 1e-4  # paired: clearly positive


def test_paired_difference_edge_cases():
    same = paired_difference({0: 0.5, 1: 0.6}, {0: 0.5, 1: 0.6})
    assert same.diff.mean == 0 and math.isnan(same.t) and math.isnan(same.p)
    shifted = paired_difference({0: 0.5, 1: 0.75}, {0: 0.25, 1: 0.5})
    assert shifted.t == math.inf and shifted.p == 0.0
    lonely = paired_difference({0: 0.5, 1: 0.6}, {1: 0.4})
    assert lonely.seeds == (1,) and math.isnan(lonely.p) and math.isnan(lonely.diff.ci_low)


# -- Holm, Wilcoxon signed-rank, bootstrap over test images ------------------------------------


def test_holm_matches_the_hand_computation():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # NaN stays NaN and does not count: m = 2
    out = holm([math.nan, 0.2, 0.5])
    assert math.isnan(out[0]) and out[1:] == pytest.approx([0.4, 0.5])
    assert holm([0.6, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_wilcoxon_exact_p_values_by_counting_sign_patterns():
    # all 5 positive: only 1 of 2**5 sign patterns has W- <= 0; two-sided p = 2/32
    assert wilcoxon_signed_rank([0.1, 0.2, 0.3, 0.4, 0.5]) == pytest.approx(2 / 32)
    # 10 positive (the study's 10 seeds): 2/1024, below what 5 seeds can ever reach
    assert wilcoxon_signed_rank([0.01 * (i + 1) for i in range(10)]) == pytest.approx(2 / 1024)
    # ranks 1..6, negative rank sum 2: subsets of {1..6} with sum <= 2 are {}, {1}, {2} -> 2*3/64
    assert wilcoxon_signed_rank([1, -2, 3, 4, 5, 6]) == pytest.approx(6 / 64)
    # zeros are dropped (the 5 positives remain), non-finite values too; nothing left: NaN
    assert wilcoxon_signed_rank([0, 1, 2, 3, 4, 5, math.nan]) == pytest.approx(2 / 32)
    assert math.isnan(wilcoxon_signed_rank([0.0, 0.0]))


def test_miou_of_counts_by_hand():
    # IoU0 = 3 / (4 + 3 - 3), IoU1 = 2 / (2 + 3 - 2); class 2 absent everywhere: left out
    c = np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]])
    assert miou_of_counts(c) == pytest.approx((3 / 4 + 2 / 3) / 2)


def _reference_bootstrap(arm, ref, replicates, seed):
    """Plain loops: resample image indices, sum the counts, mIoU via the evaluation's own metrics."""
    from raycontrast.eval.metrics import metrics_from_confusion

    seeds = sorted(arm)
    n = arm[seeds[0]].shape[0]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(replicates):
        idx = rng.integers(0, n, n)
        diffs = []
        for s in seeds:
            a = metrics_from_confusion(torch.as_tensor(arm[s][idx].sum(0)))["mIoU"]
            b = metrics_from_confusion(torch.as_tensor(ref[s][idx].sum(0)))["mIoU"]
            diffs.append(a - b)
        out.append(np.mean(diffs))
    return np.array(out)


def test_bootstrap_over_test_images_matches_a_plain_loop():
    rng = np.random.default_rng(3)
    arm = {s: rng.integers(0, 20, (12, 3, 3)) for s in (100, 101, 102)}
    ref = {s: rng.integers(0, 20, (12, 3, 3)) for s in (100, 101, 102, 103)}  # 103: unpaired
    b = bootstrap_paired_miou(arm, ref, replicates=300, seed=5)
    plain = _reference_bootstrap(arm, {s: ref[s] for s in arm}, 300, 5)
    low, high = np.quantile(plain, [0.025, 0.975])
    assert (b.ci_low, b.ci_high) == pytest.approx((low, high), abs=1e-12)
    assert (b.n_seeds, b.n_images, b.replicates) == (3, 12, 300)
    full = np.mean([miou_of_counts(arm[s].sum(0)) - miou_of_counts(ref[s].sum(0)) for s in arm])
    assert b.estimate == pytest.approx(full)
    assert b.ci_low <= b.estimate <= b.ci_high


def test_bootstrap_of_identical_images_has_no_spread_and_rejects_other_test_sets():
    one = np.array([[5, 1], [2, 4]])
    arm = {0: np.stack([one] * 8), 1: np.stack([one] * 8)}
    other = np.array([[4, 2], [3, 3]])
    ref = {0: np.stack([other] * 8), 1: np.stack([other] * 8)}
    b = bootstrap_paired_miou(arm, ref, replicates=50)
    assert b.ci_low == pytest.approx(b.estimate) and b.ci_high == pytest.approx(b.estimate)
    with pytest.raises(ValueError, match="same test set"):
        bootstrap_paired_miou(arm, {0: ref[0][:5], 1: ref[1]})
