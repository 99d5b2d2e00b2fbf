import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from raycontrast.config import DataConfig, SyntheticConfig
from raycontrast.data import (
    DatasetError,
    ParquetSegDataset,
    build_dataset,
    convert_dataset,
    dataset_info,
    generate_scene,
    read_parquet_ray,
)
from raycontrast.data.parquet import decode_batch, read_manifest
from tests.data.trees import make_ade20k, make_cityscapes, make_folder, write_png

SYN = ["data.synthetic.num_val=7", "data.synthetic.image_size=[24,32]"]


def _assert_same_items(a, b):
    assert len(a) == len(b)
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert x["id"] == y["id"]
        torch.testing.assert_close(x["image"], y["image"], rtol=0, atol=0)
        torch.testing.assert_close(x["label"], y["label"], rtol=0, atol=0)


def test_synthetic_round_trip(tmp_path):
    out = tmp_path / "shards"
    split_dir = convert_dataset("synthetic", "", "val", str(out), rows_per_shard=3, overrides=SYN)
    assert split_dir == out / "val"
    assert [p.name for p in sorted(split_dir.iterdir())] == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    table = pq.read_table(split_dir / "part-00000.parquet")
    assert table.column_names == ["image", "mask", "id", "height", "width", "split"]
    assert table.column("split").to_pylist() == ["val"] * 3

    cfg = DataConfig(synthetic=SyntheticConfig(num_val=7, image_size=[24, 32]))
    _assert_same_items(build_dataset(cfg, "val", False), ParquetSegDataset(out, "val", cfg))
    # the raw decoded pixels are the generator's
    ds = ParquetSegDataset(out, "val", cfg)
    raw = ds.source.load(6)
    image, label = generate_scene(0, "val", 6, (24, 32))
    np.testing.assert_array_equal(raw.image, image)
    np.testing.assert_array_equal(raw.label, label)

    # training items with the same seed and epoch are identical as well
    train_cfg = DataConfig(crop_size=[16, 16], **{"synthetic": cfg.synthetic})
    a, b = build_dataset(train_cfg, "val", True), ParquetSegDataset(out, "val", train_cfg, True)
    for ds in (a, b):
        ds.seed = 5
        ds.set_epoch(2)
    _assert_same_items(a, b)


def test_cityscapes_round_trip_and_manifest_merge(tmp_path):
    make_cityscapes(tmp_path / "cs", "train")
    make_cityscapes(tmp_path / "cs", "val", n_per_city=1)
    out = tmp_path / "shards"
    convert_dataset("cityscapes", str(tmp_path / "cs"), "train", str(out), rows_per_shard=3)
    convert_dataset("cityscapes", str(tmp_path / "cs"), "val", str(out))
    manifest = read_manifest(out)
    assert manifest["dataset"] == "cityscapes" and manifest["num_classes"] == 19
    assert manifest["class_names"][0] == "road" and manifest["palette"][0] == [128, 64, 128]
    assert manifest["ignore_index"] == 255 and "labelIds" in manifest["label_mapping"]
    assert manifest["splits"]["train"]["rows"] == 4 and manifest["splits"]["train"]["shards"] == 2
    assert manifest["splits"]["val"]["rows"] == 2

    cfg = DataConfig(dataset="cityscapes", root=str(tmp_path / "cs"))
    for split in ("train", "val"):
        _assert_same_items(build_dataset(cfg, split, False), ParquetSegDataset(out, split, cfg))

    # build_dataset reads the shards with source=parquet, and its info comes from the manifest
    pcfg = DataConfig(dataset="cityscapes", source="parquet", parquet_dir=str(out))
    _assert_same_items(build_dataset(cfg, "val", False), build_dataset(pcfg, "val", False))
    assert dataset_info(pcfg) == dataset_info(cfg)
    with pytest.raises(DatasetError, match="hold dataset 'cityscapes'"):
        dataset_info(DataConfig(dataset="voc", source="parquet", parquet_dir=str(out)))
    with pytest.raises(DatasetError, match=r"shards/test.*not found"):
        build_dataset(pcfg, "test", False)


def test_original_image_bytes_are_kept(tmp_path):
    make_ade20k(tmp_path / "ade", "validation")
    out = tmp_path / "shards"
    convert_dataset("ade20k", str(tmp_path / "ade"), "val", str(out))
    table = pq.read_table(out / "val" / "part-00000.parquet")
    first = table.column("id")[0].as_py()
    jpeg = tmp_path / "ade/ADEChallengeData2016/images/validation" / f"{first}.jpg"
    assert table.column("image")[0].as_py() == jpeg.read_bytes()
    cfg = DataConfig(dataset="ade20k", root=str(tmp_path / "ade"))
    _assert_same_items(build_dataset(cfg, "val", False), ParquetSegDataset(out, "val", cfg))


def test_conversion_validates_samples(tmp_path):
    samples = make_folder(tmp_path / "f", num_classes=3, classes_txt=False)
    bad = samples["img1"][1].copy()
    bad[0, 0] = 5
    write_png(tmp_path / "f/masks/train/img1.png", bad)
    names = ["data.class_names=[a,b,c]"]
    with pytest.raises(DatasetError, match=r"img1\.png: label values 5"):
        convert_dataset(
            "folder", str(tmp_path / "f"), "train", str(tmp_path / "o"), overrides=names
        )
    assert not (tmp_path / "o" / "train").exists()
    convert_dataset(
        "folder",
        str(tmp_path / "f"),
        "train",
        str(tmp_path / "o"),
        overrides=[*names, "data.on_bad_sample=skip"],
    )
    manifest = json.loads((tmp_path / "o/manifest.json").read_text())
    assert manifest["class_names"] == ["a", "b", "c"]
    assert manifest["splits"]["train"]["rows"] == 2 and manifest["splits"]["train"]["skipped"] == 1
    assert "img1.png" in manifest["splits"]["train"]["skipped_samples"][0]
    ds = ParquetSegDataset(tmp_path / "o", "train")
    assert ds.ids == ["img0", "img2"] and ds.info.class_names == ["a", "b", "c"]
    # a conversion with other classes into the same folder is refused
    with pytest.raises(DatasetError, match="existing manifest has class_names"):
        convert_dataset(
            "folder", str(tmp_path / "f"), "train", str(tmp_path / "o"),
            overrides=["data.class_names=[x,y,z]", "data.on_bad_sample=skip"],
        )  # fmt: skip


def test_missing_manifest_and_bad_overrides(tmp_path):
    with pytest.raises(DatasetError, match="manifest not found"):
        ParquetSegDataset(tmp_path, "train")
    from raycontrast.config import ConfigError

    with pytest.raises(ConfigError, match="data"):
        convert_dataset("synthetic", "", "val", str(tmp_path), overrides=["train.seed=1"])


def test_decode_batch_matches_reader(tmp_path):
    out = tmp_path / "shards"
    convert_dataset("synthetic", "", "val", str(out), overrides=SYN)
    table = pq.read_table(out / "val" / "part-00000.parquet")
    batch = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
    decoded = decode_batch(batch)
    assert set(decoded) == {"image", "label", "id", "height", "width", "split"}
    for i in range(3):
        image, label = generate_scene(0, "val", i, (24, 32))
        np.testing.assert_array_equal(decoded["image"][i], image)
        np.testing.assert_array_equal(decoded["label"][i], label)


@pytest.mark.ray
def test_read_parquet_ray_round_trip(tmp_path, ray_session):
    make_cityscapes(tmp_path / "cs", "val")
    out = tmp_path / "shards"
    convert_dataset("cityscapes", str(tmp_path / "cs"), "val", str(out), rows_per_shard=2)
    cfg = DataConfig(dataset="cityscapes", root=str(tmp_path / "cs"))
    source = build_dataset(cfg, "val", False).source
    expected = {source.sample_id(i): source.load(i) for i in range(len(source))}
    rows = read_parquet_ray(str(out), "val").take_all()
    assert sorted(r["id"] for r in rows) == sorted(expected)
    for row in rows:
        raw = expected[row["id"]]
        assert row["image"].dtype == np.uint8 and row["image"].shape == raw.image.shape
        np.testing.assert_array_equal(row["image"], raw.image)
        np.testing.assert_array_equal(row["label"], raw.label)
