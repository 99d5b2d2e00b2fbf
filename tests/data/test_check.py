"""Data files checked in the driver (raycontrast.data.check): every header, sampled decodes, shards.

Each bad tree is refused by the check itself and by ``raycontrast train --dry-run`` (the same
preflight a plain run calls before connecting to Ray), naming the file, with no input file changed.
"""

from __future__ import annotations

import numpy as np
import pytest

from raycontrast.config import DataConfig
from raycontrast.data import DatasetError
from raycontrast.data.check import _sample, check_data_files
from tests.data.trees import make_cityscapes, make_folder, write_png
from tests.test_bad_inputs import DRY, assert_kept, run_cli, snapshot


def _folder_cfg(root, **kw) -> DataConfig:
    return DataConfig(
        dataset="folder", root=str(root), train_split="train", val_split="train", **kw
    )


def _break(root, case: str):
    """Damage a 4-image folder tree the way ``case`` says; returns the file to be named."""
    masks, images = root / "masks" / "train", root / "images" / "train"
    if case == "mask size":
        return write_png(masks / "img2.png", np.zeros((5, 7), np.uint8))
    if case == "label value":
        label = np.zeros((12, 16), np.uint8)
        label[3, 4] = 9  # 3 classes: 0..2 and 255 are valid
        return write_png(masks / "img0.png", label)
    if case == "corrupt png":
        (images / "img1.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        return images / "img1.png"
    if case == "zero-byte first":
        (images / "img0.png").write_bytes(b"")
        return images / "img0.png"
    if case == "truncated pixels":  # a good header, pixel data cut: found by decoding the sample
        data = (masks / "img3.png").read_bytes()
        (masks / "img3.png").write_bytes(data[: len(data) // 2])
        return masks / "img3.png"
    if case == "colour mask":
        return write_png(
            masks / "img1.png", np.tile(np.array([1, 2, 3, 255], np.uint8), (12, 16, 1))
        )
    raise AssertionError(case)


CASES = {
    "mask size": "mask is 7x5 (WxH) but its image",
    "label value": "label values 9 are not valid",
    "corrupt png": "corrupt or unreadable image",
    "zero-byte first": "image is an empty (zero-byte) file",
    "truncated pixels": "corrupt or unreadable label map",
    "colour mask": "label map has mode RGBA",
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_folder_files_are_named(tmp_path, case):
    root = tmp_path / "D"
    make_folder(root, "train", n=4)
    bad = _break(root, case)
    before = snapshot(root)
    with pytest.raises(DatasetError) as err:
        check_data_files(_folder_cfg(root, check_masks=4))
    assert str(bad) in str(err.value) and CASES[case] in str(err.value)
    assert_kept(before, root)


@pytest.mark.parametrize("case", ["mask size", "label value", "zero-byte first", "corrupt png"])
def test_dry_run_refuses_bad_data_before_any_worker(capsys, tmp_path, case):
    root = tmp_path / "D"
    make_folder(root, "train", n=4)
    bad = _break(root, case)
    before = snapshot(root)
    code, msg = run_cli(
        capsys, *DRY, "data.dataset=folder", f"data.root={root}", "data.val_split=train",
        f"storage_path={tmp_path / 'runs'}",
    )  # fmt: skip
    assert code == 2 and str(bad) in msg and CASES[case] in msg, msg
    assert "Traceback" not in msg and "every check passed" not in msg
    assert not (tmp_path / "runs").exists()
    assert_kept(before, root)


def test_headers_of_every_file_but_only_sampled_pixels(tmp_path):
    root = tmp_path / "D"
    make_folder(root, "train", n=12)
    label = np.zeros((12, 16), np.uint8)
    label[0, 0] = 7
    write_png(
        root / "masks" / "train" / "img5.png", label
    )  # not among the first 1 nor (maybe) random
    cfg = _folder_cfg(root, check_masks=0)
    report = check_data_files(cfg, ["train"])
    assert report.headers == 24 and report.decoded == 0
    with pytest.raises(DatasetError, match=r"img5\.png: label values 7"):
        check_data_files(_folder_cfg(root, check_masks=12), ["train"])


def test_sample_is_first_k_and_k_random_others():
    picked = _sample(100, 5, seed=3)
    assert picked[:5] == [0, 1, 2, 3, 4] and len(set(picked)) == 10
    assert all(5 <= i < 100 for i in picked[5:]) and picked == _sample(100, 5, seed=3)
    assert _sample(3, 5, 0) == [0, 1, 2]


def test_skip_mode_reports_instead_of_raising(tmp_path, capsys):
    root = tmp_path / "D"
    make_folder(root, "train", n=4)
    bad = _break(root, "mask size")
    report = check_data_files(_folder_cfg(root, check_masks=4, on_bad_sample="skip"), ["train"])
    assert len(report.problems) == 1 and str(bad) in report.problems[0]


def test_cityscapes_raw_ids_are_checked_against_the_mapping(tmp_path):
    root = tmp_path / "cs"
    make_cityscapes(root, "train")
    make_cityscapes(root, "val")
    cfg = DataConfig(dataset="cityscapes", root=str(root), check_masks=2)
    assert check_data_files(cfg).decoded == 8  # 4 per split: ids 0..33 are all in the mapping
    bad = sorted((root / "gtFine" / "val").rglob("*_labelIds.png"))[0]
    label = np.zeros((12, 16), np.uint8)
    label[1, 1] = 200  # no Cityscapes labelId
    write_png(bad, label)
    with pytest.raises(DatasetError, match=rf"{bad}: label values 200 are not valid"):
        check_data_files(cfg)


@pytest.fixture
def shards(tmp_path):
    from raycontrast.data import convert_dataset

    root = tmp_path / "D"
    make_folder(root, "train", n=4, num_classes=3)
    out = tmp_path / "pq"
    convert_dataset("folder", str(root), "train", str(out), rows_per_shard=2)
    capture = DataConfig(
        dataset="folder", source="parquet", parquet_dir=str(out), val_split="train", check_masks=2
    )
    return out, capture


def test_parquet_shards_schema_and_rows(shards):
    import pyarrow as pa
    import pyarrow.parquet as pq

    out, cfg = shards
    report = check_data_files(cfg)
    assert report.shards == 2 and report.decoded == 4
    _, second = sorted((out / "train").glob("part-*.parquet"))
    table = pq.read_table(second)
    pq.write_table(table.drop_columns(["mask"]), second)
    with pytest.raises(DatasetError, match=rf"{second}: Parquet shard lacks column\(s\) mask"):
        check_data_files(cfg)
    pq.write_table(table.slice(0, 1), second)  # a row lost: 3 rows, the manifest says 4
    with pytest.raises(DatasetError, match=r"shards hold 3 rows but the manifest records 4"):
        check_data_files(cfg)
    pq.write_table(pa.Table.from_pylist([], schema=table.schema), second)
    with pytest.raises(DatasetError, match=rf"{second}: Parquet shard holds no rows"):
        check_data_files(cfg)
    second.write_bytes(b"PAR1 not really")
    with pytest.raises(DatasetError, match=rf"{second}: unreadable Parquet shard"):
        check_data_files(cfg)


def test_a_plain_run_refuses_bad_data_before_connecting_to_ray(capsys, tmp_path, monkeypatch):
    from raycontrast.train import _cluster

    def no_ray(*args, **kwargs):
        raise AssertionError("connected to Ray: the data check came too late")

    monkeypatch.setattr(_cluster, "connect", no_ray)
    root = tmp_path / "D"
    make_folder(root, "train", n=4)
    bad = _break(root, "label value")
    before = snapshot(root)
    argv = [a for a in DRY if a != "--dry-run"]
    code, msg = run_cli(
        capsys, *argv, "data.dataset=folder", f"data.root={root}", "data.val_split=train",
        f"storage_path={tmp_path / 'runs'}",
    )  # fmt: skip
    assert code == 2 and f"{bad}: label values 9 are not valid" in msg, msg
    assert not (tmp_path / "runs").exists()
    assert_kept(before, root)
