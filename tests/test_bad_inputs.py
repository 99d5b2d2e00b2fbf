"""The bad-input matrix: what a new user gets wrong, run through the command line.

Every case asserts the exit status, that the message names the culprit (the key, the file or the
value), and that no file was lost (every file present before the command is there after, unchanged).
Commands run in-process through :func:`raycontrast.cli.main` unless they need a fresh interpreter.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
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
    for seed in range(3):  # random bytes fail in torch.load in several ways
        bad.write_bytes(random.Random(seed).randbytes(4096))
        code, msg = run_cli(capsys, "export", bad, "--out", tmp_path / "m.pt")
        assert code == 2 and "not a file written by torch.save" in msg, msg
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


# ------------------------------------------------------------------- checks before workers start

DRY = ["train", "--dry-run", *TINY_MODEL, "train.batch_size=4", "train.cpus_per_worker=0.5"]


@pytest.fixture
def dry(capsys, tmp_path):
    """``dry(*overrides)`` -> (exit status, output) of ``raycontrast train --dry-run``; asserts
    that a dry run writes nothing."""

    def run(*overrides):
        code, msg = run_cli(capsys, *DRY, f"storage_path={tmp_path / 'runs'}", *overrides)
        assert not (tmp_path / "runs").exists()
        return code, msg

    return run


def test_dry_run_prints_config_and_resources(dry, tmp_path):
    code, msg = dry("optim.lr=1e-4")  # YAML 1.1 reads 1e-4 as text: accepted for a float key
    assert code == 0, msg
    assert "lr: 0.0001" in msg and "backbone: resnet18" in msg
    assert "resources: 1 CPU (2 worker(s))" in msg
    assert "dry run: every check passed" in msg and str(tmp_path / "runs" / "synthetic") in msg


@pytest.mark.parametrize(
    ("overrides", "culprit"),
    [
        (["model.backbone=resnet_18_typo"], "model.backbone='resnet_18_typo' is not a timm model; "
         "did you mean 'resnet18'"),
        (["model.backbone=hrnet_w18_small"], "does not support model.output_stride=8"),
        (["model.out_indices=[1,7]"], "out_indices=[1, 7]"),
        (["model.pretrained=/nonexistent/r18.pth"], "weights file not found: /nonexistent/r18.pth"),
        (["train.use_gpu=true"], "train.use_gpu=true asks for 2 GPU(s)"),
        (["train.num_workers=64", "train.batch_size=64", "train.cpus_per_worker=64"],
         "train.num_workers=64 x train.cpus_per_worker=64 = 4096 CPUs, but the cluster has"),
        (["optim.lr=.inf"], "optim.lr=inf is not a finite number"),
        (["optim.grad_clip=nan"], "optim.grad_clip=nan is not a finite number"),
        (["contrast.inbatch=false", "contrast.memory=none"],
         "contrast.enabled=true with contrast.inbatch=false and contrast.memory=none"),
        (["data.mean=[123.675,116.28,103.53]"], "data.mean=[123.675, 116.28, 103.53] is on the "
         "0-255 scale"),
        (["data.std=[58.395,57.12,57.375]"], "use data.std=[0.229, 0.224, 0.225]"),
    ],
)  # fmt: skip
def test_mistakes_fail_before_any_worker_starts(dry, overrides, culprit):
    if "train.use_gpu=true" in overrides and torch.cuda.device_count() >= 2:
        pytest.skip("this machine has the GPUs")
    code, msg = dry(*overrides)
    assert code == 2, msg
    assert culprit in msg
    assert "Traceback" not in msg


def test_pretrained_file_keys_are_checked(dry, tmp_path):
    weights = tmp_path / "other.pth"
    torch.save({"encoder.block.weight": torch.zeros(3, 3)}, weights)
    code, msg = dry(f"model.pretrained={weights}")
    assert code == 2 and f"no key of {weights} matches backbone 'resnet18'" in msg


def test_warmup_beyond_the_run_is_a_warning(dry):
    code, msg = dry("contrast.warmup_iters=50", "train.iterations=50")
    assert code == 0
    assert "warning: contrast.warmup_iters=50 >= train.iterations=50" in msg


def test_overrides_after_address(capsys, tmp_path):
    from raycontrast.cli import _parse, _split_config
    from raycontrast.config import DEFAULT_EXPERIMENT

    args = _parse(["train", "--address", "10.0.0.5:6379", "train.iterations=3", "a.b=1"])
    assert args.address == "10.0.0.5:6379"
    assert _split_config(args.config, args.overrides) == (
        DEFAULT_EXPERIMENT,
        ["train.iterations=3", "a.b=1"],
    )
    args = _parse(["train", "--address", "X", "exp.yaml", "optim.lr=1e-4", "--dry-run"])
    assert args.config == "exp.yaml" and args.overrides == ["optim.lr=1e-4"] and args.dry_run
    code, msg = run_cli(capsys, "train", "--address", "X", DEFAULT_EXPERIMENT, "not-an-override")
    assert code == 2 and "override 'not-an-override' must look like key=value" in msg


def test_unreachable_address_is_one_clear_line(tmp_path):
    # its own process: the suite's shared Ray instance must not answer for the address
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [sys.executable, "-m", "raycontrast.cli", "train", "--address", "127.0.0.1:1",
           *TINY_MODEL, f"storage_path={tmp_path}"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "cannot reach the Ray cluster at --address=127.0.0.1:1" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())


SWEEP = """
base: {base}
name: s
storage_path: {storage}
overrides: {overrides}
search_space:
  optim.lr: {{loguniform: [1e-4, 1e-1]}}
metric: {metric}
scheduler: {{type: asha, time_attr: {time_attr}, grace_period: 1, max_t: 2}}
"""


@pytest.mark.parametrize(
    ("metric", "time_attr", "culprit"),
    [
        ("miou", "iteration", "metric 'miou' is never reported by training; did you mean 'mIoU'?"),
        ("dice", "iteration", "metric 'dice' is never reported by training"),
        ("mIoU", "iters", "scheduler.time_attr 'iters' is never reported by training"),
    ],
)
def test_sweep_metric_is_one_training_reports(capsys, tmp_path, metric, time_attr, culprit):
    from raycontrast.config import DEFAULT_EXPERIMENT

    path = tmp_path / "sweep.yaml"
    text = SWEEP.format(
        base=DEFAULT_EXPERIMENT,
        storage=tmp_path / "sweeps",
        overrides=json.dumps([*TINY_MODEL, "train.batch_size=4", "train.cpus_per_worker=0.5"]),
        metric=metric,
        time_attr=time_attr,
    )
    path.write_text(text)
    code, msg = run_cli(capsys, "tune", path, "--dry-run")
    assert code == 2 and culprit in msg and str(path) in msg
    # the same sweep on a reported metric passes every check; 1e-4 (text in YAML 1.1) is a float
    path.write_text(
        text.replace(f"metric: {metric}", "metric: mIoU").replace(time_attr, "iteration")
    )
    code, msg = run_cli(capsys, "tune", path, "--dry-run")
    assert code == 0, msg
    assert "resources: 1.25 CPU" in msg and "dry run: every check passed" in msg
    assert not (tmp_path / "sweeps").exists()


# ------------------------------------------------------------------------ end to end (Ray Train)


class _ReportedKeys:
    """A Ray Train callback (it runs in the controller) that appends every reported key to a file."""

    def __new__(cls, path):
        from ray.train import UserCallback

        class Writer(UserCallback):
            def after_report(self, run_context, metrics, checkpoint):
                with open(path, "a") as f:
                    f.write("\n".join(sorted(metrics[0])) + "\n")

        return Writer()


@pytest.mark.ray
@pytest.mark.slow
def test_a_finished_run_keeps_its_summary(ray_session, capsys, tmp_path):
    from raycontrast.config import DEFAULT_EXPERIMENT, load_config
    from raycontrast.train import run_training
    from raycontrast.train.preflight import BANK_METRICS, REPORTED_METRICS
    from tests.train.conftest import TINY

    overrides = [*TINY, "train.num_workers=1", "train.iterations=2", f"storage_path={tmp_path}"]
    cfg = load_config(DEFAULT_EXPERIMENT, [*overrides, "name=done"])
    keys = tmp_path / "keys.txt"
    first = run_training(cfg, callbacks=[_ReportedKeys(keys)])
    assert first["iterations"] == 2
    # what the sweep / study metric check accepts is what training reports
    reported = set(keys.read_text().split())
    assert set(REPORTED_METRICS) | set(BANK_METRICS) <= reported, reported

    summary = tmp_path / "done" / "summary.json"
    before = snapshot(tmp_path / "done")
    capsys.readouterr()
    code, msg = run_cli(capsys, "train", DEFAULT_EXPERIMENT, *overrides, "name=done")
    assert code == 0
    assert "already finished (2 iterations" in msg and f"{summary} (kept)" in msg
    assert_kept(before, tmp_path / "done")
    assert json.loads(summary.read_text())["train_wall_s"] == first["train_wall_s"]


@pytest.mark.ray
@pytest.mark.slow
def test_a_worker_failure_is_one_line(ray_session, capsys, tmp_path):
    from raycontrast.config import DEFAULT_EXPERIMENT
    from tests.train.conftest import TINY

    code, msg = run_cli(
        capsys,
        "train",
        DEFAULT_EXPERIMENT,
        *TINY,
        "train.num_workers=1",
        "train.max_failures=0",
        "debug.fail_at_iteration=1",
        "name=fails",
        f"storage_path={tmp_path}",
    )
    assert code == 1
    (line,) = [ln for ln in msg.splitlines() if ln.startswith("raycontrast: error:")]
    assert "fails: training failed after 0 restart(s)" in line
    assert f"Run dir: {tmp_path / 'fails'}" in line and "worker logs:" in line
    assert "Traceback" not in msg.split("raycontrast: error:")[-1]


# ------------------------------------------------------------------------------- installed package


@pytest.mark.slow
def test_installed_wheel_runs_from_an_empty_directory(tmp_path):
    """``pip install`` of the built wheel (not editable): ``raycontrast config`` and a tiny
    ``raycontrast train`` run the embedded default from a directory without the checkout. The fresh
    venv reuses this venv's dependencies through a ``.pth`` file (no network, seconds)."""
    import shutil
    import site

    src = (
        tmp_path / "src"
    )  # build from a copy: an in-tree build would write build/ into the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(
        REPO / "raycontrast", src / "raycontrast", ignore=shutil.ignore_patterns("__pycache__")
    )
    py = sys.executable

    def sh(*cmd, cwd=tmp_path, env=None, timeout=600):
        out = subprocess.run(
            [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )
        assert out.returncode == 0, f"{cmd}: {out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        return out.stdout

    sh(py, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", "dist", src)
    (wheel,) = (tmp_path / "dist").glob("raycontrast-*.whl")
    sh(py, "-m", "venv", "--without-pip", "venv")
    fresh = tmp_path / "venv" / "bin" / "python"
    sh(py, "-m", "pip", "--python", fresh, "install", "-q", "--no-deps", "--no-index", wheel)
    purelib = sh(fresh, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip()
    Path(purelib, "_deps_from_dev_venv.pth").write_text(site.getsitepackages()[0] + "\n")

    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH")}
    env["RAY_TMPDIR"] = f"/tmp/rcw{os.getpid()}"  # a short path of its own for Ray's sockets
    where = sh(fresh, "-c", "import raycontrast; print(raycontrast.__file__)", cwd=empty, env=env)
    assert where.startswith(purelib), where  # the installed copy, not the checkout
    exe = tmp_path / "venv" / "bin" / "raycontrast"
    text = sh(exe, "config", "train.iterations=3", "optim.lr=1e-4", cwd=empty, env=env)
    assert "name: synthetic" in text and "iterations: 3" in text and "lr: 0.0001" in text
    tiny = [
        "train.iterations=2",
        "train.num_workers=0",
        "train.batch_size=2",
        "train.eval_every=2",
        "contrast.warmup_iters=1",
        "contrast.memory_size=50",
        "data.synthetic.num_train=4",
        "data.synthetic.num_val=2",
        "data.synthetic.image_size=[32,32]",
        "data.crop_size=[32,32]",
        "model.head_channels=8",
        "model.proj_dim=8",
    ]
    try:
        sh(exe, "train", *tiny, cwd=empty, env=env)
    finally:
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    summary = json.loads((empty / "runs" / "synthetic" / "summary.json").read_text())
    assert summary["iterations"] == 2 and summary["mIoU"] is not None


def test_numeric_text_in_files_and_non_finite_values_name_the_file(capsys, tmp_path):
    from raycontrast.config import DEFAULT_EXPERIMENT

    exp = tmp_path / "exp.yaml"
    exp.write_text(f"_base_: {DEFAULT_EXPERIMENT}\noptim:\n  lr: 1e-4\n  weight_decay: 5e-4\n")
    code, msg = run_cli(capsys, "config", exp)
    assert code == 0 and "lr: 0.0001" in msg and "weight_decay: 0.0005" in msg
    exp.write_text(f"_base_: {DEFAULT_EXPERIMENT}\ncontrast:\n  loss_weight: .nan\n")
    code, msg = run_cli(capsys, "config", exp)
    assert (
        code == 2 and "contrast.loss_weight=nan is not a finite number" in msg and str(exp) in msg
    )
