"""No command writes over its inputs, and no run leaves its folder (raycontrast.outputs).

One table of cases per command, each run through the command line: the exit status, a message naming
the output, the input and their relation, and checksums proving that no file changed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from raycontrast.outputs import OutputError, check_name, check_output, check_run_dir, relation
from tests.data.trees import make_folder
from tests.test_bad_inputs import DRY, assert_kept, run_cli, snapshot, trained  # noqa: F401

REPO = Path(__file__).resolve().parents[1]


def test_relation_table(tmp_path):
    a, b = tmp_path / "a", tmp_path / "a" / "b"
    assert relation(a, a) == "is"
    assert relation(b, a) == "is inside"
    assert relation(a, b) == "contains"
    assert relation(tmp_path / "x", a) is None
    assert relation(tmp_path / "ab", a) is None  # a prefix of the name is not a parent
    assert relation(a, "") is None and relation(a, None) is None
    assert relation(a, "s3://bucket/a") is None
    (tmp_path / "link").symlink_to(a, target_is_directory=True)
    a.mkdir()
    assert relation(tmp_path / "link" / "out", a) == "is inside"  # symlinks resolved


@pytest.mark.parametrize(
    "name", ["", "  ", ".", "..", "../escaped", "a/b", "/abs/run", "a\\b", " a"]
)
def test_bad_run_names_are_refused(tmp_path, name):
    with pytest.raises(OutputError, match="name="):
        check_run_dir(str(tmp_path), name)


def test_plain_names_stay_inside_storage(tmp_path):
    assert check_name("run-1.v2_a") == "run-1.v2_a"
    assert check_run_dir(str(tmp_path), "r") == str(tmp_path.resolve() / "r")
    (tmp_path / "out").symlink_to(tmp_path.parent, target_is_directory=True)
    with pytest.raises(OutputError, match="is not inside storage_path"):
        check_run_dir(str(tmp_path), "out")


def test_report_may_write_inside_but_not_over(tmp_path):
    run = tmp_path / "run"
    check_output(run / "plots", {"run": run}, forbid=("is", "contains"))
    with pytest.raises(OutputError, match=r"contains run"):
        check_output(tmp_path, {"run": run}, forbid=("is", "contains"))


# ---------------------------------------------------------------------------- one table per command


@pytest.fixture
def tree(tmp_path, trained):  # noqa: F811
    """A folder dataset, a checkpoint copy, a run folder and two photos: every command's inputs."""
    data = tmp_path / "D"
    make_folder(data, "train", n=2)
    ckpt = tmp_path / "ckpt"
    shutil.copytree(trained[1], ckpt)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("iteration,loss\n1,0.5\n")
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(data / "images" / "train" / "img0.png", photos / "a.png")
    return {"data": data, "ckpt": ckpt, "run": run, "photos": photos, "cfg": trained[0]}


def _cases(t: dict) -> list[tuple[list, str]]:
    data, ckpt, run, photos = t["data"], t["ckpt"], t["run"], t["photos"]
    train = [*DRY, "data.dataset=folder", f"data.root={data}", "data.val_split=train"]
    return [
        # train: the run folder is storage_path/name, inside storage_path, apart from the data
        ([*train, f"storage_path={data.parent}", "name=../escaped"], "name='../escaped' is not a plain"),
        ([*train, f"storage_path={data.parent}", "name="], "name='' is empty"),
        ([*train, f"storage_path={data.parent}", "name=/tmp/abs"], "name='/tmp/abs' is not a plain"),
        ([*train, f"storage_path={data.parent}", "name=a/b"], "name='a/b' is not a plain"),
        ([*train, f"storage_path={data.parent}", "name=D"], f"is data.root {data}"),
        ([*train, f"storage_path={data}", "name=r"], f"is inside data.root {data}"),
        # predict
        (["predict", ckpt, "--input", photos, "--out", photos], f"--out {photos} is --input"),
        (["predict", ckpt, "--input", photos, "--out", photos / "pred"], "is inside --input"),
        (["predict", ckpt, "--input", photos / "a.png", "--out", photos], "contains --input"),
        (["predict", ckpt, "--input", photos, "--out", ckpt / "pred"], "is inside the model"),
        # eval: the checkpoint file and the data are inputs; its default JSON sits beside them
        (["eval", t["cfg"], ckpt, "--out", ckpt / "state.pt"], "is the checkpoint"),
        (["eval", t["cfg"], ckpt, f"data.root={data}", "data.dataset=folder",
          "data.val_split=train", "--out", data / "eval.json"], "is inside data.root"),
        # export
        (["export", ckpt / "state.pt", "--out", ckpt / "state.pt"], "is the checkpoint"),
        (["export", ckpt, "--out", ckpt / "state.pt"], "is the checkpoint"),
        # report: RUN/plots is its own; the run, its files and a folder holding it are not
        (["report", run, "--out", run], f"--out {run} is run"),
        (["report", run, "--out", run / "metrics.csv"], "is the input file"),
        (["report", run, "--out", tmp_root(run)], "contains run"),
        # convert
        (["convert", "--dataset", "folder", "--root", data, "--split", "train", "--out", data],
         "is the dataset root"),
    ]  # fmt: skip


def tmp_root(run: Path) -> Path:
    return run.parent


def test_every_command_refuses_to_write_over_its_inputs(capsys, tree, tmp_path):
    for argv, message in _cases(tree):
        before = snapshot(tmp_path)
        code, msg = run_cli(capsys, *argv)
        assert code == 2, (argv, msg)
        assert message in msg, (argv, msg)
        assert "Traceback" not in msg
        assert_kept(before, tmp_path)
        after = {str(p) for p in tmp_path.rglob("*")}
        assert not any(p.endswith(("/r", "/escaped", "/pred", "eval.json")) for p in after), argv


def test_sweep_and_study_names_are_plain(capsys, tmp_path):
    import yaml

    sweep = yaml.safe_load((REPO / "experiments" / "sweeps" / "synthetic_smoke.yaml").read_text())
    sweep["base"] = str(REPO / "experiments" / "synthetic.yaml")
    for name in ("../escaped", ""):
        path = tmp_path / "s.yaml"
        path.write_text(yaml.safe_dump({**sweep, "name": name, "storage_path": str(tmp_path)}))
        code, msg = run_cli(capsys, "tune", path, "--dry-run")
        assert code == 2 and f"name={name!r}" in msg and str(path) in msg, msg
    study = {
        "base": str(REPO / "experiments" / "synthetic.yaml"),
        "name": "../up",
        "storage_path": str(tmp_path / "studies"),
        "seeds": [0, 1],
        "reference": "ce",
        "arms": {"ce": {"contrast.enabled": False}, "contrast": {}},
    }
    path = tmp_path / "st.yaml"
    path.write_text(yaml.safe_dump(study))
    code, msg = run_cli(capsys, "study", path, "--dry-run")
    assert code == 2 and "name='../up' is not a plain folder name" in msg, msg
    assert not (tmp_path / "up").exists()
