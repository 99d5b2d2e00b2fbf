"""experiments/data/prepare_mri.py: slab splits and the folder dataset it writes (tiny fake volumes)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "prepare_mri", REPO / "experiments" / "data" / "prepare_mri.py"
)
prepare_mri = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(prepare_mri)


def test_slabs_are_contiguous_and_training_keeps_its_distance():
    slices = list(range(10, 60))
    splits = prepare_mri.split_slabs(
        slices, slab=5, gap=2, pattern=["train", "val", "train", "test"]
    )
    assert splits["val"] == [15, 16, 17, 18, 19, 35, 36, 37, 38, 39, 55, 56, 57, 58, 59]
    assert splits["test"] == [25, 26, 27, 28, 29, 45, 46, 47, 48, 49]
    held = splits["val"] + splits["test"]
    assert all(min(abs(z - h) for h in held) > 2 for z in splits["train"])
    assert splits["train"] == [10, 11, 12, 22, 32, 42, 52]  # what is left between held-out slabs
    assert not set(splits["train"]) & set(held)


def test_lobes_merge_left_and_right_by_aal_code():
    rows = [(1, "Precentral_L", "2001"), (2, "Precentral_R", "2002"), (3, "Insula_L", "3001"),
            (4, "Vermis_1_2", "9100")]  # fmt: skip
    names, lut = prepare_mri.class_table(rows, "lobes")
    assert names == ["background", "other_brain", "frontal", "insula", "cerebellum"]
    assert lut == {1: 2, 2: 2, 3: 3, 4: 4}
    names, lut = prepare_mri.class_table(rows, "regions")
    assert names == ["background", "other_brain", "Precentral", "Insula", "Vermis_1_2"]
    assert lut[1] == lut[2] == 2


def test_prepare_writes_a_folder_dataset_the_project_reads(tmp_path):
    nib = pytest.importorskip("nibabel")
    rng = np.random.default_rng(0)
    shape = (20, 24, 40)
    t1 = rng.integers(0, 255, shape, dtype=np.uint8)
    atlas = np.zeros(shape, np.uint8)
    atlas[5:10, 5:12, 4:36] = 1  # frontal
    atlas[10:15, 5:12, 4:36] = 3  # insula
    brain = np.zeros(shape, np.uint8)
    brain[3:17, 3:20, 2:38] = 1
    src = tmp_path / "src"
    src.mkdir()
    for name, vol in (("ch2", t1), ("aal", atlas), ("ch2bet", brain)):
        nib.save(nib.Nifti1Image(vol, np.eye(4)), src / f"{name}.nii.gz")
    (src / "aal.nii.txt").write_text("1 Precentral_L 2001\n3 Insula_L 3001\n")
    out = tmp_path / "mri"
    manifest = prepare_mri.prepare(src, out, slab=4, gap=1, scale=1.0, multiple=8,
                                   pattern=("train", "train", "val", "train", "train", "test"))  # fmt: skip
    assert manifest["counts"] == {"train": 20, "val": 4, "test": 4}  # 32 labelled slices
    assert (out / "classes.txt").read_text().split() == ["background", "other_brain", "frontal",
                                                         "insula"]  # fmt: skip
    assert json.loads((out / "manifest.json").read_text())["slices"]["test"] == [24, 25, 26, 27]

    from raycontrast.config import load_config
    from raycontrast.data import build_dataset

    cfg = load_config(REPO / "experiments" / "mri.yaml", [f"data.root={out}"])
    val = build_dataset(cfg.data, "val", train=False)
    item = val[0]
    assert tuple(item["label"].shape) == (24, 24)  # 24 rows (y), 20 columns (x) padded to 24
    # slice z=12: rows are y reversed (anterior up), columns x; labels as drawn
    label = item["label"].numpy()
    expected = np.zeros((24, 20), np.int64)
    expected[3:20, 3:17] = 1  # brain without a region
    expected[5:12, 5:10] = 2
    expected[5:12, 10:15] = 3
    assert np.array_equal(label[:, 2:22], expected[::-1])


def test_a_wider_test_gap_moves_training_away_from_test_slabs_only():
    slices = list(range(10, 60))
    pattern = ["train", "val", "train", "test"]
    splits = prepare_mri.split_slabs(slices, slab=5, gap=2, pattern=pattern, test_gap=4)
    # slabs: train 10-14, val 15-19, train 20-24, test 25-29, train 30-34, val 35-39, ...; training
    # slices within 2 of a val slab or within 4 of a test slab (21-24, 30-33, 41-44, 50-53) go
    assert splits["train"] == [10, 11, 12]
    assert prepare_mri.train_distance(splits, "test") == 13
    assert prepare_mri.train_distance(splits, "val") == 3
    assert prepare_mri.regions(splits["test"]) == [[25, 29], [45, 49]]
    assert splits == prepare_mri.split_slabs(
        slices, slab=5, gap=2, pattern=pattern, test_gap=4
    )  # deterministic
    default = prepare_mri.split_slabs(slices, slab=5, gap=2, pattern=pattern)
    assert default == prepare_mri.split_slabs(slices, slab=5, gap=2, pattern=pattern, test_gap=2)
