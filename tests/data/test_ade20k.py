import numpy as np
import pytest
from PIL import Image

from raycontrast.config import DataConfig
from raycontrast.data import DatasetError, build_dataset, dataset_info
from tests.data.trees import make_ade20k


def _cfg(root, **kw):
    return DataConfig(dataset="ade20k", root=str(root), **kw)


@pytest.mark.parametrize("split", ["val", "validation"])
def test_reduce_zero_label(tmp_path, split):
    samples = make_ade20k(tmp_path, "validation")
    ds = build_dataset(_cfg(tmp_path), split, train=False)
    assert ds.ids == sorted(samples)
    for item in ds:
        raw = samples[item["id"]].astype(np.int64)
        expected = np.where(raw == 0, 255, raw - 1)
        np.testing.assert_array_equal(item["label"].numpy(), expected)
        assert item["label"].max() <= 255 and item["image"].shape == (3, 12, 16)


def test_root_may_be_the_challenge_folder(tmp_path):
    make_ade20k(tmp_path, "training")
    ds = build_dataset(_cfg(tmp_path / "ADEChallengeData2016"), "train", train=False)
    assert len(ds) == 3


def test_info_has_150_classes():
    info = dataset_info(DataConfig(dataset="ade20k", root="/x"))
    assert info.num_classes == 150 == len(set(info.class_names)) == len(set(info.palette))
    assert info.class_names[:3] == ["wall", "building", "sky"]
    assert "reduce-zero-label" in info.label_mapping


def test_bad_split_and_missing_mask(tmp_path):
    make_ade20k(tmp_path, "training")
    with pytest.raises(DatasetError, match="split 'trainval' is unknown"):
        build_dataset(_cfg(tmp_path), "trainval", train=False)
    with pytest.raises(DatasetError, match=r"images/validation"):
        build_dataset(_cfg(tmp_path), "val", train=False)
    img = tmp_path / "ADEChallengeData2016/images/training/extra.jpg"
    Image.new("RGB", (16, 12)).save(img)
    with pytest.raises(
        DatasetError, match=r"extra\.jpg: image has no mask.*annotations/training/extra\.png"
    ):
        build_dataset(_cfg(tmp_path), "train", train=False)
