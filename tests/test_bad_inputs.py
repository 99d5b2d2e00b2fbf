"""The bad-input matrix: what a new user gets wrong, run through the command line.

Every case asserts the exit status, that the message names the culprit (the key, the file or the
value), and that no file was lost (every file present before the command is there after, unchanged).
Commands run in-process through :func:`raycontrast.cli.main` unless they need a fresh interpreter.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

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
