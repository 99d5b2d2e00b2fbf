import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from raycontrast.eval import SegMetrics


def brute_force(preds, targets, k, ignore):
    """Reference metrics with python loops over pixels (no confusion matrix)."""
    tp, fp, fn = [0] * k, [0] * k, [0] * k
    gt_count = [0] * k
    total = correct = 0
    for pred, target in zip(preds, targets):
        for p, t in zip(pred.reshape(-1).tolist(), target.reshape(-1).tolist()):
            if t == ignore:
                continue
            total += 1
            gt_count[t] += 1
            if p == t:
                tp[t] += 1
                correct += 1
            else:
                fp[p] += 1
                fn[t] += 1
    iou = [tp[c] / (tp[c] + fp[c] + fn[c]) if tp[c] + fp[c] + fn[c] else None for c in range(k)]
    acc = [tp[c] / gt_count[c] if gt_count[c] else None for c in range(k)]
    valid_iou = [v for v in iou if v is not None]
    valid_acc = [v for v in acc if v is not None]
    fw = sum(gt_count[c] / total * iou[c] for c in range(k) if gt_count[c]) if total else math.nan
    return {
        "mIoU": sum(valid_iou) / len(valid_iou) if valid_iou else math.nan,
        "mAcc": sum(valid_acc) / len(valid_acc) if valid_acc else math.nan,
        "aAcc": correct / total if total else math.nan,
        "fwIoU": fw,
        "IoU": iou,
        "Acc": acc,
    }


def assert_matches(got, ref):
    for key in ("mIoU", "mAcc", "aAcc", "fwIoU"):
        if math.isnan(ref[key]):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(ref[key], abs=1e-12), key
    for key in ("IoU", "Acc"):
        for g, r in zip(got[key], ref[key], strict=True):
            assert (g is None) == (r is None)
            if r is not None:
                assert g == pytest.approx(r, abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 7))
    metrics = SegMetrics(k, ignore_index=255)
    preds, targets = [], []
    for _ in range(3):
        shape = (int(rng.integers(1, 3)), int(rng.integers(1, 9)), int(rng.integers(1, 9)))
        target = rng.integers(0, k, shape)
        target[rng.random(shape) < 0.2] = 255
        pred = rng.integers(0, k, shape)
        preds.append(pred)
        targets.append(target)
        metrics.update(torch.from_numpy(pred), target)  # torch and numpy mixed
    assert metrics.confusion.dtype == torch.int64 and metrics.confusion.shape == (k, k)
    assert_matches(metrics.compute(), brute_force(preds, targets, k, 255))


@settings(max_examples=30, deadline=None)
@given(
    k=st.integers(1, 5),
    data=st.data(),
)
def test_property_matches_brute_force(k, data):
    n = data.draw(st.integers(0, 30))
    target = data.draw(st.lists(st.sampled_from([*range(k), 255]), min_size=n, max_size=n))
    pred = data.draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n))
    metrics = SegMetrics(k)
    metrics.update(np.array(pred, dtype=np.int64), np.array(target, dtype=np.int64))
    ref = brute_force([np.array(pred)], [np.array(target)], k, 255)
    assert_matches(metrics.compute(), ref)


def test_perfect_prediction_is_one():
    target = torch.tensor([[0, 1, 2], [2, 1, 0]])
    m = SegMetrics(3)
    m.update(target.clone(), target)
    out = m.compute()
    assert out["mIoU"] == out["mAcc"] == out["aAcc"] == out["fwIoU"] == 1.0
    assert out["IoU"] == [1.0, 1.0, 1.0]


def test_class_absent_from_both_is_excluded():
    target = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 0, 1, 0])
    m = SegMetrics(4)
    m.update(pred, target)
    out = m.compute()
    assert out["IoU"][2] is None and out["IoU"][3] is None and out["Acc"][3] is None
    assert out["present"] == [True, True, False, False]
    assert out["mIoU"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert out["mAcc"] == pytest.approx((1.0 + 0.5) / 2)


def test_predicted_but_absent_class_counts_as_zero():
    m = SegMetrics(3)
    m.update(torch.tensor([0, 2]), torch.tensor([0, 0]))
    out = m.compute()
    assert out["IoU"] == [0.5, None, 0.0]
    assert out["Acc"] == [0.5, None, None]
    assert out["mIoU"] == pytest.approx(0.25)


def test_merge_equals_single_pass():
    rng = np.random.default_rng(0)
    preds = [rng.integers(0, 4, (2, 5, 5)) for _ in range(4)]
    targets = [rng.integers(0, 4, (2, 5, 5)) for _ in range(4)]
    single = SegMetrics(4)
    a, b = SegMetrics(4), SegMetrics(4)
    for i, (p, t) in enumerate(zip(preds, targets)):
        single.update(p, t)
        (a if i % 2 else b).update(p, t)
    assert torch.equal(a.merge(b).confusion, single.confusion)
    assert a.compute() == single.compute()
    with pytest.raises(ValueError, match="cannot merge"):
        a.merge(SegMetrics(5))


def test_reset_and_empty():
    m = SegMetrics(2)
    out = m.compute()
    assert math.isnan(out["mIoU"]) and out["IoU"] == [None, None] and out["num_pixels"] == 0
    m.update(torch.tensor([1]), torch.tensor([1]))
    m.reset()
    assert int(m.confusion.sum()) == 0
    m.update(torch.tensor([1, 1]), torch.tensor([255, 255]))  # only ignored pixels
    assert int(m.confusion.sum()) == 0


def test_invalid_inputs():
    m = SegMetrics(3, ignore_index=-1)
    with pytest.raises(ValueError, match=r"labels \[3, 7\] are outside 0..2"):
        m.update(torch.tensor([0, 0, 0]), torch.tensor([3, 7, -1]))
    with pytest.raises(ValueError, match=r"labels \[255\]"):
        m.update(torch.tensor([0]), torch.tensor([255]))  # 255 is not this instance's ignore
    with pytest.raises(ValueError, match="predictions"):
        m.update(torch.tensor([5]), torch.tensor([0]))
    with pytest.raises(ValueError, match="shape"):
        m.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        m.update(torch.zeros(3), torch.zeros(3, dtype=torch.long))
    m.update(torch.tensor([1]), torch.tensor([-1]))  # ignored
    assert int(m.confusion.sum()) == 0


def test_all_reduce_without_process_group_is_a_noop():
    m = SegMetrics(2)
    m.update(torch.tensor([0, 1]), torch.tensor([0, 0]))
    before = m.confusion.clone()
    assert m.all_reduce() is m and torch.equal(m.confusion, before)
