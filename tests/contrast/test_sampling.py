import pytest
import torch

from raycontrast.contrast import sample_anchors
from raycontrast.contrast.sampling import resize_labels, resize_predictions


def _positional(b, h, w):
    """Embeddings whose single channel is the flat pixel index, to trace which pixels were chosen."""
    return torch.arange(b * h * w, dtype=torch.float32).reshape(b, 1, h, w)


def _chosen(anchors):
    return anchors[..., 0].long()


def test_hard_easy_split_counts_and_labels():
    b, h, w = 2, 10, 10
    labels = torch.zeros(b, h, w, dtype=torch.long)
    labels[:, 5:] = 1
    preds = labels.clone()
    preds[:, :2] = 1  # 20 hard pixels of class 0 per image
    anchors, alabels = sample_anchors(
        _positional(b, h, w),
        labels,
        preds,
        max_samples=64,
        max_views=10,
        generator=torch.Generator().manual_seed(0),
    )
    assert anchors.shape == (4, 10, 1)  # total = 4 pairs, n_view = min(64 // 4, 10)
    assert alabels.tolist() == [0, 1, 0, 1]
    flat_l, flat_p = labels.reshape(-1), preds.reshape(-1)
    for a, c in zip(_chosen(anchors), alabels.tolist()):
        assert len(set(a.tolist())) == 10
        assert bool((flat_l[a] == c).all())
        n_hard = int((flat_p[a] != c).sum())
        assert n_hard == (5 if c == 0 else 0)  # class 1 has no hard pixels: all easy


def test_short_kind_is_kept_whole_and_the_other_fills():
    labels = torch.zeros(1, 6, 6, dtype=torch.long)
    preds = torch.zeros_like(labels)
    preds[0, 0, :3] = 2  # 3 hard pixels, n_view // 2 = 5 wanted
    anchors, _ = sample_anchors(_positional(1, 6, 6), labels, preds, max_samples=10, max_views=10)
    chosen = _chosen(anchors)[0]
    assert int((preds.reshape(-1)[chosen] != 0).sum()) == 3
    # and the symmetric case: easy pixels short
    preds = torch.ones_like(labels)
    preds[0, 0, :2] = 0
    anchors, _ = sample_anchors(_positional(1, 6, 6), labels, preds, max_samples=10, max_views=10)
    assert int((preds.reshape(-1)[_chosen(anchors)[0]] == 0).sum()) == 2


def test_small_classes_and_ignore_are_skipped():
    labels = torch.full((1, 8, 8), 255, dtype=torch.long)
    labels[0, :4] = 3  # 32 pixels
    labels[0, 4, :5] = 0  # 5 pixels: not more than max_views
    anchors, alabels = sample_anchors(_positional(1, 8, 8), labels, labels.clone(), max_views=5)
    assert alabels.tolist() == [3]
    assert anchors.shape == (1, 5, 1)


def test_zero_anchors_never_raise():
    labels = torch.full((2, 4, 4), 255, dtype=torch.long)
    anchors, alabels = sample_anchors(_positional(2, 4, 4), labels, labels, max_views=2)
    assert anchors.shape[0] == 0 and alabels.shape == (0,)
    labels = torch.zeros(2, 4, 4, dtype=torch.long)  # 16 pixels each, not more than max_views=16
    anchors, _ = sample_anchors(_positional(2, 4, 4), labels, labels, max_views=16)
    assert anchors.shape[0] == 0
    anchors, _ = sample_anchors(_positional(2, 4, 4), labels, labels, max_samples=1, max_views=2)
    assert anchors.shape[0] == 0  # n_view = 1 // 2 = 0


def test_gradients_flow_to_the_chosen_pixels_only():
    embed = torch.randn(1, 3, 5, 5, requires_grad=True)
    labels = torch.zeros(1, 5, 5, dtype=torch.long)
    anchors, _ = sample_anchors(embed, labels, labels, max_samples=8, max_views=8)
    anchors.sum().backward()
    assert int((embed.grad.abs().sum(1) > 0).sum()) == 8


def test_resizes_use_nearest_for_labels():
    labels = torch.tensor([[[0, 1], [2, 255]]])
    up = resize_labels(labels, (4, 4))
    assert set(up.unique().tolist()) == {0, 1, 2, 255}
    assert resize_labels(labels, (2, 2)) is labels
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 2] = 1
    assert resize_predictions(logits, (4, 4)).eq(2).all()


def _centre_nearest(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Plain reference: each output cell takes the input pixel whose centre is nearest its own centre."""
    h, w = labels.shape[-2:]
    out = torch.empty((labels.shape[0], *size), dtype=labels.dtype)
    for i in range(size[0]):
        for j in range(size[1]):
            si = min(int((i + 0.5) * h / size[0]), h - 1)
            sj = min(int((j + 0.5) * w / size[1]), w - 1)
            out[:, i, j] = labels[:, si, sj]
    return out


@pytest.mark.parametrize("size", [(2, 2), (12, 12), (4, 3), (5, 7)])
def test_resized_labels_come_from_the_cell_centre(size):
    # The embedding cell (i, j) of a stride-s feature map sits over pixels s*i .. s*i+s-1 (its centre
    # at s*i + s/2 - 1/2, where bilinear upsampling with align_corners=False puts it). Its label must
    # come from there, not from the cell's top-left pixel (PyTorch's legacy "nearest"): with small
    # objects that shift mislabels boundary cells, and hard-anchor sampling picks exactly those.
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 7, (2, 24, 24), generator=g)
    got = resize_labels(labels, size)
    assert torch.equal(got, _centre_nearest(labels, size))


def test_a_cell_is_labelled_by_its_content_not_its_corner():
    labels = torch.full((1, 16, 16), 1)
    labels[:, ::8, :] = 0  # the top row of every 8x8 cell is class 0, the rest class 1
    assert resize_labels(labels, (2, 2)).eq(1).all()


def test_label_resize_nearest_reproduces_the_original_top_left_pixel():
    labels = torch.full((1, 16, 16), 1)
    labels[:, ::8, ::8] = 0  # the top-left pixel of every 8x8 cell
    assert resize_labels(labels, (2, 2), "nearest").eq(0).all()
    with pytest.raises(ValueError, match="nearest-exact or nearest"):
        resize_labels(labels, (2, 2), "bilinear")
