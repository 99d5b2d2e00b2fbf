import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from raycontrast.config import DataConfig, SyntheticConfig
from raycontrast.data import build_dataset, build_transforms
from raycontrast.data.transforms import sample_rng

H, W = 40, 50


def _coordinate_image():
    """R encodes x, G encodes y; the label is a function of (x, y)."""
    y, x = np.mgrid[0:H, 0:W]
    image = np.stack([x * 5, y * 6, np.full_like(x, 77)], axis=-1).astype(np.uint8)
    label = ((x + 3 * y) % 7).astype(np.uint8)
    return image, label


def _cfg(**kw):
    base = dict(mean=[0, 0, 0], std=[1, 1, 1], color_jitter=0.0, scale_range=[1.0, 1.0])
    base.update(kw)
    return DataConfig(**base)


def test_crop_and_flip_move_image_and_mask_together():
    image, label = _coordinate_image()
    t = build_transforms(_cfg(crop_size=[24, 30]), train=True)
    flips = set()
    for i in range(12):
        out_img, out_lbl = t(image, label, sample_rng(0, 0, i))
        assert out_img.shape == (3, 24, 30) and out_lbl.shape == (24, 30)
        assert out_img.dtype == torch.float32 and out_lbl.dtype == torch.int64
        rgb = (out_img.permute(1, 2, 0).numpy() * 255).round().astype(int)
        x, y = rgb[..., 0] // 5, rgb[..., 1] // 6
        np.testing.assert_array_equal(out_lbl.numpy(), (x + 3 * y) % 7)
        flips.add(bool(x[0, 0] > x[0, -1]))
    assert flips == {True, False}


def test_rescale_keeps_image_and_mask_aligned():
    image, _ = _coordinate_image()
    _, x = np.mgrid[0:H, 0:W]
    label = (x // 5).astype(np.uint8)  # vertical bands 5 px wide
    t = build_transforms(_cfg(crop_size=[32, 32], scale_range=[1.6, 1.6], flip=False), train=True)
    out_img, out_lbl = t(image, label, sample_rng(0, 0, 1))
    # bilinear keeps the ramp: R / 5 is the source x of each output pixel; nearest picks the
    # source pixel round(x), whose band is round(x) // 5
    source_x = out_img[0].numpy() * 255 / 5
    band_from_image = np.floor(source_x + 0.5).astype(int) // 5
    agree = band_from_image == out_lbl.numpy()
    assert agree.mean() > 0.95
    assert np.abs(band_from_image - out_lbl.numpy()).max() <= 1


def test_padding_uses_zero_and_ignore():
    image, label = _coordinate_image()
    t = build_transforms(_cfg(crop_size=[60, 70], mean=[0.5, 0.5, 0.5], ignore_index=-1), True)
    out_img, out_lbl = t(image, label, sample_rng(0, 0, 0))
    assert (out_lbl[H:] == -1).all() and (out_lbl[:, W:] == -1).all()
    assert (out_img[:, H:] == 0).all() and (out_img[:, :, W:] == 0).all()
    assert (out_lbl[:H, :W] >= 0).all()


def test_ignore_index_mapping_and_int_labels():
    image, label = _coordinate_image()
    label[0, 0] = 255
    t = build_transforms(_cfg(ignore_index=-1), train=False)
    _, out = t(image, label)
    assert out[0, 0] == -1 and (out.flatten()[1:] >= 0).all()
    wide = label.astype(np.int64)
    wide[0, 0] = -1  # labels already using cfg.ignore_index are accepted too
    torch.testing.assert_close(t(image, wide)[1], out)


def test_eval_only_normalises():
    image, label = _coordinate_image()
    cfg = DataConfig(crop_size=[8, 8])
    out_img, out_lbl = build_transforms(cfg, train=False)(image, label)
    mean, std = torch.tensor(cfg.mean).view(3, 1, 1), torch.tensor(cfg.std).view(3, 1, 1)
    expected = (torch.from_numpy(image).permute(2, 0, 1).float() / 255 - mean) / std
    torch.testing.assert_close(out_img, expected)
    np.testing.assert_array_equal(out_lbl.numpy(), label)


def test_jitter_changes_image_not_label():
    image, label = _coordinate_image()
    t = build_transforms(_cfg(crop_size=[H, W], color_jitter=0.4, flip=False), train=True)
    out_img, out_lbl = t(image, label, sample_rng(0, 0, 5))
    np.testing.assert_array_equal(out_lbl.numpy(), label)
    assert not torch.allclose(out_img * 255, torch.from_numpy(image).permute(2, 0, 1).float())
    with pytest.raises(ValueError, match="rng"):
        t(image, label)


def test_augmentation_reproducible_per_seed_epoch_index():
    image, label = _coordinate_image()
    t = build_transforms(DataConfig(crop_size=[24, 24], scale_range=[0.5, 2.0]), train=True)

    def run(seed, epoch, index):
        return t(image, label, sample_rng(seed, epoch, index))

    a, b = run(1, 2, 3), run(1, 2, 3)
    torch.testing.assert_close(a, b)
    for other in (run(2, 2, 3), run(1, 3, 3), run(1, 2, 4)):
        assert not torch.equal(a[0], other[0])


def _synthetic_train(n=4, size=32):
    cfg = DataConfig(
        crop_size=[24, 24], synthetic=SyntheticConfig(num_train=n, image_size=[size, size])
    )
    return build_dataset(cfg, "train", train=True)


def test_dataset_epoch_and_seed():
    ds = _synthetic_train()
    first = ds[1]
    torch.testing.assert_close(ds[1]["image"], first["image"])
    ds.set_epoch(1)
    assert ds.epoch == 1 and not torch.equal(ds[1]["image"], first["image"])
    ds.set_epoch(0)
    torch.testing.assert_close(ds[1]["image"], first["image"])
    ds.seed = 7
    assert ds.seed == 7 and not torch.equal(ds[1]["image"], first["image"])
    ds.set_epoch(4)
    copy = pickle.loads(pickle.dumps(ds))  # e.g. shipped to a Ray worker
    assert (copy.seed, copy.epoch) == (7, 4)
    torch.testing.assert_close(copy[2]["image"], ds[2]["image"])


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_set_epoch_reaches_persistent_workers(context):
    ds = _synthetic_train()
    ds.seed = 3
    workers = 2 if context == "fork" else 1
    loader = DataLoader(
        ds,
        batch_size=2,
        num_workers=workers,
        persistent_workers=True,
        multiprocessing_context=context,
    )
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        batches = list(loader)
        images = torch.cat([b["image"] for b in batches])
        assert images.shape == (4, 3, 24, 24)
        expected = torch.stack([ds[i]["image"] for i in range(4)])
        torch.testing.assert_close(images, expected)
        assert [i for b in batches for i in b["id"]] == [f"train_{i:06d}" for i in range(4)]
        assert batches[0]["skipped"].tolist() == [0, 0]
