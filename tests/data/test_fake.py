"""Fake Cityscapes / ADE20K trees: written in the real layouts and read by the real readers."""

import json

import numpy as np
import pytest
from PIL import Image

from raycontrast.cli import main
from raycontrast.config import DataConfig
from raycontrast.data import DatasetError, build_dataset, convert_dataset
from raycontrast.data._cityscapes import LABEL_ID_TO_TRAIN_ID
from raycontrast.data.fake import MARKER, write_fake_dataset
from raycontrast.data.parquet import read_manifest

SCALE = 1 / 16  # Cityscapes 64 x 128


def _cfg(like, root):
    return DataConfig(dataset=like, root=str(root), mean=[0, 0, 0], std=[1, 1, 1])


def test_cityscapes_tree_is_read_by_the_cityscapes_reader(tmp_path):
    tree = write_fake_dataset("cityscapes", tmp_path, n=4, n_val=2, scale=SCALE)
    images = sorted(tmp_path.glob("leftImg8bit/train/*/*_leftImg8bit.png"))
    masks = sorted(tmp_path.glob("gtFine/train/*/*_gtFine_labelIds.png"))
    assert len(images) == len(masks) == 4 and len(tree.files) == 12
    raw = np.concatenate([np.asarray(Image.open(m)).ravel() for m in masks])
    assert raw.max() <= 33 and set(np.unique(raw)) - set(LABEL_ID_TO_TRAIN_ID)  # ignore ids too
    for split, n in (("train", 4), ("val", 2)):
        ds = build_dataset(_cfg("cityscapes", tmp_path), split, train=False)
        assert len(ds) == n
        item = ds[0]
        assert tuple(item["image"].shape) == (3, 64, 128)
        labels = set(item["label"].unique().tolist())
        assert labels <= set(range(19)) | {255} and labels & set(range(19))


def test_real_sizes_by_default(tmp_path):
    write_fake_dataset("cityscapes", tmp_path / "cs", n=1, n_val=0)
    (image,) = tmp_path.glob("cs/leftImg8bit/train/*/*.png")
    assert Image.open(image).size == (2048, 1024)
    write_fake_dataset("ade20k", tmp_path / "ade", n=3, n_val=0)
    for image in tmp_path.glob("ade/ADEChallengeData2016/images/training/*.jpg"):
        assert min(Image.open(image).size) in (384, 512)


def test_ade20k_tree_is_read_by_the_ade20k_reader_and_converted(tmp_path):
    write_fake_dataset("ade20k", tmp_path / "ade", n=6, n_val=2, scale=0.125)
    names = sorted(p.name for p in tmp_path.glob("ade/ADEChallengeData2016/images/training/*"))
    assert names[0] == "ADE_train_00000001.jpg"
    raw = [np.asarray(Image.open(p)) for p in tmp_path.glob("ade/**/annotations/training/*.png")]
    values = np.unique(np.concatenate([r.ravel() for r in raw]))
    assert values.max() <= 150 and 0 in values and len(values) > 12
    ds = build_dataset(_cfg("ade20k", tmp_path / "ade"), "validation", train=False)
    assert len(ds) == 2 and set(ds[0]["label"].unique().tolist()) <= set(range(150)) | {255}
    shards = convert_dataset("ade20k", str(tmp_path / "ade"), "train", str(tmp_path / "pq"))
    assert read_manifest(shards.parent)["splits"]["train"]["rows"] == 6


def test_images_are_learnable_from_colour_and_texture(tmp_path):
    """A nearest-class-mean classifier on pixel colour already beats chance by far on a held-out
    image: the regions carry their class's statistics (noise would give chance)."""
    write_fake_dataset("cityscapes", tmp_path, n=4, n_val=1, scale=SCALE)
    train = build_dataset(_cfg("cityscapes", tmp_path), "train", train=False)
    feats = np.concatenate([t["image"].flatten(1).T.numpy() for t in train])
    labels = np.concatenate([t["label"].flatten().numpy() for t in train])
    classes = [c for c in np.unique(labels) if c != 255]
    means = np.stack([feats[labels == c].mean(0) for c in classes])
    val = build_dataset(_cfg("cityscapes", tmp_path), "val", train=False)[0]
    x, y = val["image"].flatten(1).T.numpy(), val["label"].flatten().numpy()
    keep = np.isin(y, classes)
    pred = np.asarray(classes)[((x[keep, None] - means[None]) ** 2).sum(-1).argmin(1)]
    chance = max(np.mean(y[keep] == c) for c in classes)
    assert np.mean(pred == y[keep]) > chance + 0.2


def test_same_seed_same_tree_and_rerun_replaces_only_its_files(tmp_path):
    write_fake_dataset("ade20k", tmp_path / "a", n=2, n_val=1, seed=3, scale=0.1)
    write_fake_dataset("ade20k", tmp_path / "b", n=2, n_val=1, seed=3, scale=0.1)
    for rel in json.loads((tmp_path / "a" / MARKER).read_text())["files"]:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    mine = tmp_path / "a" / "notes.txt"
    mine.write_text("keep me")
    write_fake_dataset("ade20k", tmp_path / "a", n=1, n_val=1, seed=3, scale=0.1)
    assert mine.read_text() == "keep me"
    assert len(list(tmp_path.glob("a/ADEChallengeData2016/images/training/*"))) == 1


def test_refuses_a_non_empty_folder_that_is_not_a_fake_tree(tmp_path, capsys):
    (tmp_path / "photo.png").write_bytes(b"user data")
    with pytest.raises(DatasetError, match="not a fake-data tree"):
        write_fake_dataset("cityscapes", tmp_path, n=1, scale=SCALE)
    assert [p.name for p in tmp_path.iterdir()] == ["photo.png"]
    args = ["fake-data", "--like", "cityscapes", "--out", str(tmp_path), "--n", "1"]
    assert main(args) == 2
    assert "not a fake-data tree" in capsys.readouterr().err


def test_cli_writes_a_tree(tmp_path, capsys):
    out = tmp_path / "cs"
    args = ["fake-data", "--like", "cityscapes", "--out", str(out), "--n", "2", "--scale", "0.05"]
    assert main(args) == 0
    assert "wrote 6 files" in capsys.readouterr().out
    assert len(build_dataset(_cfg("cityscapes", out), "train", train=False)) == 2
