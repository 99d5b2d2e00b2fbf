import numpy as np
import pytest

from raycontrast.config import DataConfig
from raycontrast.data import DatasetError, build_dataset, dataset_info
from tests.data.trees import make_voc, write_png


def _cfg(root, **kw):
    return DataConfig(dataset="voc", root=str(root), **kw)


@pytest.mark.parametrize("devkit", [True, False])
def test_palette_masks_and_border(tmp_path, devkit):
    samples = make_voc(tmp_path, "val", devkit=devkit)
    ds = build_dataset(_cfg(tmp_path, ignore_index=-1), "val", train=False)
    assert ds.ids == list(samples)
    for item in ds:
        expected = samples[item["id"]].astype(np.int64)
        expected[expected == 255] = -1  # the border becomes cfg.ignore_index
        np.testing.assert_array_equal(item["label"].numpy(), expected)


def test_voc_aug_prefers_segmentation_class_aug(tmp_path):
    samples = make_voc(tmp_path, "train")
    first = next(iter(samples))
    aug = np.full((12, 16), 7, dtype=np.uint8)
    write_png(tmp_path / "VOCdevkit/VOC2012/SegmentationClassAug" / f"{first}.png", aug)
    plain = build_dataset(_cfg(tmp_path), "train", train=False)
    augmented = build_dataset(_cfg(tmp_path, voc_aug=True), "train", train=False)
    np.testing.assert_array_equal(plain[0]["label"].numpy(), samples[first])
    assert (augmented[0]["label"] == 7).all()
    # ids missing from SegmentationClassAug fall back to SegmentationClass
    np.testing.assert_array_equal(augmented[1]["label"].numpy(), samples[list(samples)[1]])


def test_missing_split_file_and_image(tmp_path):
    make_voc(tmp_path, "train")
    with pytest.raises(DatasetError, match=r"ImageSets/Segmentation/val\.txt"):
        build_dataset(_cfg(tmp_path), "val", train=False)
    split_file = tmp_path / "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt"
    split_file.write_text(split_file.read_text() + "2099_999999\n")
    with pytest.raises(DatasetError, match=r"2099_999999\.jpg: image listed in .*train\.txt"):
        build_dataset(_cfg(tmp_path), "train", train=False)
    with pytest.raises(DatasetError, match="no Pascal VOC 2012 layout"):
        build_dataset(_cfg(tmp_path / "VOCdevkit/VOC2012/JPEGImages"), "train", train=False)


def test_info():
    info = dataset_info(DataConfig(dataset="voc", root="/x"))
    assert info.num_classes == 21 and info.class_names[15] == "person"
    assert info.palette[15] == (192, 128, 128)
