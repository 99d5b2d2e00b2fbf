import numpy as np
import pytest
from PIL import Image

from raycontrast.config import DataConfig
from raycontrast.data import DatasetError, build_dataset, dataset_info
from tests.data.trees import make_folder, rng_image, write_png


def _cfg(root, **kw):
    return DataConfig(dataset="folder", root=str(root), mean=[0, 0, 0], std=[1, 1, 1], **kw)


@pytest.mark.parametrize("layout", ["images_first", "split_first"])
def test_both_layouts(tmp_path, layout):
    samples = make_folder(tmp_path, "train", layout=layout)
    ds = build_dataset(_cfg(tmp_path), "train", train=False)
    assert ds.ids == sorted(samples)
    for item in ds:
        image, label = samples[item["id"]]
        np.testing.assert_allclose(item["image"].permute(1, 2, 0).numpy() * 255, image, atol=1e-3)
        np.testing.assert_array_equal(item["label"].numpy(), label)


def test_nested_folders_matched_by_relative_path(tmp_path):
    write_png(tmp_path / "images/val/a/x.jpg", rng_image(0))
    write_png(tmp_path / "masks/val/a/x.png", np.ones((12, 16), np.uint8))
    ds = build_dataset(_cfg(tmp_path, class_names=["bg", "fg"]), "val", train=False)
    assert ds.ids == ["a/x"] and (ds[0]["label"] == 1).all()


def test_class_names_sources(tmp_path):
    make_folder(tmp_path, num_classes=3)
    assert dataset_info(_cfg(tmp_path)).class_names == ["name0", "name1", "name2"]
    info = dataset_info(_cfg(tmp_path, class_names=["a", "b", "c"], num_classes=3))
    assert info.class_names == ["a", "b", "c"] and len(info.palette) == 3
    with pytest.raises(DatasetError, match=r"num_classes=4 but .*classes\.txt lists 3"):
        dataset_info(_cfg(tmp_path, num_classes=4))
    (tmp_path / "classes.txt").unlink()
    with pytest.raises(DatasetError, match=r"classes\.txt: not found"):
        dataset_info(_cfg(tmp_path))
    assert dataset_info(_cfg(tmp_path, num_classes=2)).class_names == ["class_0", "class_1"]
    with pytest.raises(DatasetError, match="ignore_index=1 is a class id"):
        dataset_info(_cfg(tmp_path, num_classes=2, ignore_index=1))


def test_label_out_of_range_names_file_and_values(tmp_path):
    samples = make_folder(tmp_path, num_classes=3)
    label = samples["img1"][1].copy()
    label[2, 2], label[3, 3] = 3, 17
    write_png(tmp_path / "masks/train/img1.png", label)
    ds = build_dataset(_cfg(tmp_path), "train", train=False)
    ds[0]
    with pytest.raises(DatasetError, match=r"masks/train/img1\.png: label values 3, 17"):
        ds[1]


def test_mask_size_mismatch_names_both_sizes(tmp_path):
    make_folder(tmp_path)
    write_png(tmp_path / "masks/train/img0.png", np.zeros((10, 16), np.uint8))
    ds = build_dataset(_cfg(tmp_path), "train", train=False)
    with pytest.raises(
        DatasetError, match=r"img0\.png: mask is 16x10 .*images/train/img0\.png is 16x12"
    ):
        ds[0]


def test_corrupt_image_and_skip_mode(tmp_path):
    make_folder(tmp_path, n=4)
    (tmp_path / "images/train/img1.png").write_bytes(b"garbage")
    write_png(tmp_path / "masks/train/img2.png", np.full((12, 16), 9, np.uint8))
    ds = build_dataset(_cfg(tmp_path), "train", train=False)
    with pytest.raises(DatasetError, match=r"images/train/img1\.png: corrupt"):
        ds[1]
    ds = build_dataset(_cfg(tmp_path, on_bad_sample="skip"), "train", train=False)
    items = [ds[i] for i in range(4)]
    assert [it["id"] for it in items] == ["img0", "img3", "img3", "img3"]
    assert [it["skipped"] for it in items] == [0, 2, 1, 0]


def test_missing_mask_and_split(tmp_path):
    make_folder(tmp_path)
    Image.new("RGB", (16, 12)).save(tmp_path / "images/train/lonely.jpg")
    with pytest.raises(
        DatasetError, match=r"lonely\.jpg: image has no mask \(expected .*masks/train/lonely\.png"
    ):
        build_dataset(_cfg(tmp_path), "train", train=False)
    with pytest.raises(DatasetError, match="split 'test' not found"):
        build_dataset(_cfg(tmp_path), "test", train=False)
    with pytest.raises(DatasetError, match="folder dataset root"):
        build_dataset(_cfg(tmp_path / "missing", class_names=["a"]), "train", train=False)
    ds = build_dataset(_cfg(tmp_path, on_bad_sample="skip"), "train", train=False)
    assert "lonely" not in ds.ids and len(ds) == 3


def test_all_bad_samples_raise_even_when_skipping(tmp_path):
    make_folder(tmp_path, n=2)
    for i in range(2):
        (tmp_path / f"images/train/img{i}.png").write_bytes(b"x")
    ds = build_dataset(_cfg(tmp_path, on_bad_sample="skip"), "train", train=False)
    with pytest.raises(DatasetError, match="all 2 samples are bad"):
        ds[0]
