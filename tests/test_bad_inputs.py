"""The bad-input matrix: what a new user gets wrong, run through the command line.

Every case asserts the exit status, that the message names the culprit (the key, the file or the
value), and that no file was lost (every file present before the command is there after, unchanged).
Commands run in-process through :func:`raycontrast.cli.main` unless they need a fresh interpreter.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from raycontrast.cli import main
from tests.data.trees import make_folder

REPO = Path(__file__).resolve().parents[1]


def snapshot(*roots: Path) -> dict[str, str]:
    """SHA-1 of every file under ``roots`` (a file root is hashed itself)."""
    out = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            out[str(path)] = hashlib.sha1(path.read_bytes()).hexdigest()
    return out


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    """``raycontrast ARGV`` in-process: (exit status, stderr + stdout)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse errors
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.err + captured.out


def assert_kept(before: dict[str, str], *roots: Path) -> None:
    after = snapshot(*roots)
    lost = sorted(set(before) - set(after))
    changed = sorted(k for k in before if k in after and before[k] != after[k])
    assert not lost and not changed, f"lost {lost[:5]}, changed {changed[:5]}"


# ------------------------------------------------------------------------------------------ convert


@pytest.fixture
def folder_dataset(tmp_path):
    """A ``folder`` dataset laid out as ``D/train/images`` + ``D/train/masks`` (the issue's case)."""
    root = tmp_path / "D"
    make_folder(root, "train", n=3, layout="split_first")
    return root


def _convert(root, out, *extra):
    return [
        "convert",
        "--dataset",
        "folder",
        "--root",
        root,
        "--split",
        "train",
        "--out",
        out,
        *extra,
    ]


def test_convert_out_equal_to_root_keeps_the_dataset(capsys, folder_dataset):
    before = snapshot(folder_dataset)
    code, msg = run_cli(capsys, *_convert(folder_dataset, folder_dataset))
    assert code == 2
    assert f"--out {folder_dataset}" in msg and "dataset root" in msg
    assert_kept(before, folder_dataset)
    assert sorted(p.name for p in (folder_dataset / "train").iterdir()) == ["images", "masks"]


@pytest.mark.parametrize("where", ["inside", "contains"])
def test_convert_out_inside_or_around_root_is_refused(capsys, tmp_path, where):
    if where == "inside":
        root, out = tmp_path / "D", tmp_path / "D" / "parquet"
    else:
        root, out = tmp_path / "data" / "D", tmp_path / "data"
    make_folder(root, "train", n=2, layout="split_first")
    before = snapshot(tmp_path)
    code, msg = run_cli(capsys, *_convert(root, out))
    assert code == 2 and f"{where} the dataset root" in msg
    assert_kept(before, tmp_path)
    assert not (root / "parquet").exists()


def test_convert_never_replaces_an_unrelated_split_folder(capsys, folder_dataset, tmp_path):
    out = tmp_path / "out"
    (out / "train").mkdir(parents=True)
    (out / "train" / "notes.txt").write_text("my notes")
    before = snapshot(out, folder_dataset)
    code, msg = run_cli(capsys, *_convert(folder_dataset, out))
    assert code == 2 and str(out / "train") in msg and "notes.txt" in msg
    assert_kept(before, out, folder_dataset)
    assert not (out / "manifest.json").exists()


def test_convert_replaces_its_own_shards_only_when_complete(capsys, folder_dataset, tmp_path):
    out = tmp_path / "out"
    assert run_cli(capsys, *_convert(folder_dataset, out, "--rows-per-shard", "1"))[0] == 0
    assert len(list((out / "train").glob("part-*.parquet"))) == 3
    # a failing re-conversion (a corrupt image) leaves the previous shard set untouched
    before = snapshot(out)
    (folder_dataset / "train" / "images" / "img1.png").write_bytes(b"not a png")
    code, msg = run_cli(capsys, *_convert(folder_dataset, out))
    assert code == 2 and "img1.png" in msg
    assert_kept(before, out)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left behind
    # a successful one replaces it (skipping the bad sample)
    code, _ = run_cli(capsys, *_convert(folder_dataset, out, "data.on_bad_sample=skip"))
    assert code == 0 and len(list((out / "train").glob("part-*.parquet"))) == 1
    # a split folder of this set that holds a foreign file is not replaced
    (out / "train" / "keep.me").write_text("x")
    code, msg = run_cli(capsys, *_convert(folder_dataset, out))
    assert code == 2 and "keep.me" in msg and (out / "train" / "keep.me").exists()


def test_convert_plain_errors(capsys, folder_dataset, tmp_path):
    code, msg = run_cli(capsys, *_convert(folder_dataset, tmp_path / "o", "--rows-per-shard", "0"))
    assert code == 2 and "--rows-per-shard must be >= 1, got 0" in msg
    assert not (tmp_path / "o").exists()
    target = tmp_path / "existing.bin"
    target.write_bytes(b"precious")
    code, msg = run_cli(capsys, *_convert(folder_dataset, target))
    assert code == 2 and f"--out {target} is an existing file" in msg
    assert target.read_bytes() == b"precious"


# ----------------------------------------------------------------------------- eval / export / ckpt

TINY_MODEL = [
    "model.backbone=resnet18",
    "model.head=fcn",
    "model.head_channels=8",
    "model.proj_dim=8",
    "data.synthetic.image_size=[32,32]",
    "data.synthetic.num_val=2",
    "data.crop_size=[32,32]",
    "data.loader_workers=0",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(config YAML, checkpoint directory) of an untrained tiny segmentor."""
    from raycontrast.config import DEFAULT_EXPERIMENT, load_config, save_config
    from raycontrast.data import dataset_info
    from raycontrast.models import build_segmentor, save_checkpoint

    tmp = tmp_path_factory.mktemp("ckpt")
    cfg = load_config(DEFAULT_EXPERIMENT, TINY_MODEL)
    info = dataset_info(cfg.data)
    torch.manual_seed(0)
    seg = build_segmentor(cfg.model, info.num_classes)
    state = {"config": cfg, "num_classes": info.num_classes, "class_names": list(info.class_names)}
    save_checkpoint(tmp / "checkpoint_000001", {**state, "model": seg})
    save_config(cfg, tmp / "cfg.yaml")
    return tmp / "cfg.yaml", tmp / "checkpoint_000001"


def test_eval_suffixless_checkpoint(capsys, trained, tmp_path, monkeypatch):
    cfg, ckpt = trained
    monkeypatch.chdir(tmp_path)
    code, msg = run_cli(capsys, "eval", cfg, "best")
    assert code == 2 and "checkpoint not found: best does not exist" in msg
    assert "best/state.pt" not in msg
    # a checkpoint file without a suffix is read as the file it is
    (tmp_path / "best").write_bytes((ckpt / "state.pt").read_bytes())
    code, msg = run_cli(capsys, "eval", cfg, "best", "--out", tmp_path / "e.json")
    assert code == 0, msg
    assert json.loads((tmp_path / "e.json").read_text())["num_images"] == 2


def test_eval_out_directory_is_refused_before_evaluating(capsys, trained, tmp_path):
    cfg, ckpt = trained
    before = snapshot(tmp_path, ckpt)
    code, msg = run_cli(capsys, "eval", cfg, ckpt, "--out", tmp_path)
    assert code == 2 and f"--out {tmp_path} is a directory" in msg
    assert "mIoU" not in msg  # nothing was evaluated
    assert_kept(before, tmp_path, ckpt)


def test_random_bytes_checkpoint(capsys, trained, tmp_path):
    cfg, _ = trained
    bad = tmp_path / "state.pt"
    bad.write_bytes(os.urandom(4096))
    before = snapshot(bad)
    for argv in (["eval", cfg, bad], ["export", bad, "--out", tmp_path / "m.pt"]):
        code, msg = run_cli(capsys, *argv)
        assert code == 2 and f"cannot read checkpoint {bad}" in msg, msg
        assert "not a file written by torch.save" in msg
        assert "weights_only=False" not in msg and "weights_only` set to `False" not in msg
    assert_kept(before, bad)


def test_export_out_directory(capsys, trained, tmp_path):
    _, ckpt = trained
    (tmp_path / "models").mkdir()
    for fmt, out in (("torchscript", "models"), ("exported-program", "models.pt2")):
        if fmt == "exported-program":
            (tmp_path / out).mkdir()
        code, msg = run_cli(capsys, "export", ckpt, "--format", fmt, "--out", tmp_path / out)
        assert code == 2 and f"--out {tmp_path / out} is a directory" in msg, msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models", "models.pt2"]
    assert not any((tmp_path / "models").iterdir())
