import numpy as np
import pytest

from raycontrast.config import DataConfig
from raycontrast.data import DatasetError, build_dataset, dataset_info
from raycontrast.data._cityscapes import LABEL_ID_TO_TRAIN_ID
from tests.data.trees import make_cityscapes, write_png


def _cfg(root, **kw):
    return DataConfig(dataset="cityscapes", root=str(root), mean=[0, 0, 0], std=[1, 1, 1], **kw)


def _expected_train_ids(raw):
    lut = np.full(256, 255, dtype=np.int64)
    for k, v in LABEL_ID_TO_TRAIN_ID.items():
        lut[k] = v
    return lut[raw]


def test_label_ids_are_mapped_to_train_ids(tmp_path):
    samples = make_cityscapes(tmp_path, "val")
    ds = build_dataset(_cfg(tmp_path), "val", train=False)
    assert ds.ids == sorted(samples)
    for item in ds:
        image, raw = samples[item["id"]]
        np.testing.assert_allclose(item["image"].permute(1, 2, 0).numpy() * 255, image, atol=1e-3)
        assert item["label"].dtype.is_floating_point is False
        np.testing.assert_array_equal(item["label"].numpy(), _expected_train_ids(raw))
        assert item["skipped"] == 0
    # spot-check the table itself: road, car, bicycle, and an ignored id
    assert _expected_train_ids(np.array([7, 26, 33, 4])).tolist() == [0, 13, 18, 255]


def test_train_ids_preferred_when_present(tmp_path):
    samples = make_cityscapes(tmp_path, "train", train_ids=True)
    stem = next(iter(samples))
    # a labelIds file next to the trainIds one must be ignored
    write_png(
        tmp_path / "gtFine/train/aachen" / f"{stem}_gtFine_labelIds.png",
        np.zeros((12, 16), np.uint8),
    )
    ds = build_dataset(_cfg(tmp_path), "train", train=False)
    item = ds[ds.ids.index(stem)]
    np.testing.assert_array_equal(item["label"].numpy(), samples[stem][1])


def test_info():
    info = dataset_info(DataConfig(dataset="cityscapes", root="/nowhere"))
    assert info.num_classes == 19 and len(info.palette) == 19
    assert info.class_names[0] == "road" and info.palette[0] == (128, 64, 128)
    with pytest.raises(DatasetError, match="num_classes=21"):
        dataset_info(DataConfig(dataset="cityscapes", root="/x", num_classes=21))


def test_missing_root_and_split(tmp_path):
    with pytest.raises(DatasetError, match=r"nope.*Cityscapes root"):
        build_dataset(_cfg(tmp_path / "nope"), "train", train=False)
    make_cityscapes(tmp_path, "train")
    with pytest.raises(DatasetError, match=r"leftImg8bit/test.*'test'"):
        build_dataset(_cfg(tmp_path), "test", train=False)


def test_missing_mask_raises_or_is_left_out(tmp_path):
    samples = make_cityscapes(tmp_path, "train")
    stem = sorted(samples)[1]
    (tmp_path / "gtFine/train/aachen" / f"{stem}_gtFine_labelIds.png").unlink()
    with pytest.raises(DatasetError, match=f"{stem}_leftImg8bit.png: image has no mask"):
        build_dataset(_cfg(tmp_path), "train", train=False)
    ds = build_dataset(_cfg(tmp_path, on_bad_sample="skip"), "train", train=False)
    assert len(ds) == len(samples) - 1 and stem not in ds.ids
    assert "no mask" in ds.source.dropped[0]


def test_invalid_label_id_names_file(tmp_path):
    samples = make_cityscapes(tmp_path, "train")
    stem = sorted(samples)[0]
    bad = samples[stem][1].copy()
    bad[0, 0] = 40
    write_png(tmp_path / "gtFine/train/aachen" / f"{stem}_gtFine_labelIds.png", bad)
    ds = build_dataset(_cfg(tmp_path), "train", train=False)  # lazily validated
    with pytest.raises(DatasetError, match=f"{stem}_gtFine_labelIds.png: label values 40"):
        ds[0]
