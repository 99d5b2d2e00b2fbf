"""The confirmatory study files implement their pre-registered protocol: fresh seeds, a large test
set apart from validation, selection never on test, the arms and regimes the protocol names."""

import os
import shutil
import subprocess
from pathlib import Path

import yaml

from raycontrast.tune.study import Cell, load_study

STUDIES = Path(__file__).resolve().parents[2] / "experiments" / "studies"
CONFIRMATORY = ("confirmatory.yaml", "confirmatory_convergence.yaml")


def _earlier_seeds() -> set[int]:
    seeds: set[int] = set()
    for path in STUDIES.glob("*.yaml"):
        if path.name in CONFIRMATORY:
            continue
        raw = yaml.safe_load(path.read_text()).get("seeds")
        if raw is not None:
            seeds |= set(range(raw)) if isinstance(raw, int) else set(raw)
    return seeds


def test_confirmatory_studies_follow_the_protocol():
    assert (STUDIES / "confirmatory.protocol.md").is_file()
    earlier = _earlier_seeds()
    assert earlier  # the other study files were read
    for name in CONFIRMATORY:
        study = load_study(STUDIES / name)
        assert len(study.seeds) >= 10 and not set(study.seeds) & earlier, name
        assert study.config.reference == "ce_only"
        for cell in study.cells():
            cfg = study.run_config(cell)
            data = cfg.data
            assert (data.val_split, data.test_split) == ("val", "test"), cell
            assert data.synthetic.num_test >= 512 and data.synthetic.num_val >= 64
    main = load_study(STUDIES / "confirmatory.yaml")
    assert set(main.regimes) == {"all", "scarce", "pretrained"}
    assert set(main.arms) == {"ce_only", "inbatch_w0.01", "memory_w0.01", "full_w0.01",
                              "full_w0.003", "full_w0.1"}  # fmt: skip
    primary = main.run_config(Cell("full_w0.01", "pretrained", 100))
    assert primary.contrast.loss_weight == 0.01 and primary.contrast.inbatch
    assert primary.contrast.memory == "both"
    assert str(primary.model.pretrained).endswith("runs/pretrain_synthetic/backbone.pth")
    assert main.run_config(Cell("full_w0.1", "all", 100)).contrast.loss_weight == 0.1


SCRIPT = STUDIES / "run_confirmatory.sh"


def _script(cwd: Path, *args: str, raycontrast: str = "true") -> subprocess.CompletedProcess:
    """run_confirmatory.sh in ``cwd`` with ``raycontrast`` replaced (by default by ``true``)."""
    env = dict(os.environ, RAYCONTRAST=raycontrast)
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def _write(path: Path, text: str = "x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _archived(root: Path) -> list[str]:
    archive = root / "experiments" / "studies" / "results" / "confirmatory" / "runs"
    return sorted(str(p.relative_to(archive)) for p in archive.rglob("*") if p.is_file())


def test_finished_runs_are_archived_without_checkpoints_and_restored_on_a_fresh_machine(tmp_path):
    runs = tmp_path / "runs" / "studies" / "confirmatory" / "runs"
    for f in ("test.json", "summary.json", "val.csv", "workers/rank-0.json"):
        _write(runs / "confirmatory_all-ce_only-s100" / f)
    for f in ("checkpoint_1/model.pt", "tb/events", "plots/miou.png", "bank/snapshot.pt"):
        _write(runs / "confirmatory_all-ce_only-s100" / f)
    _write(runs / "confirmatory_all-full_w0.01-s100" / "checkpoint_1" / "model.pt")  # training
    _write(runs / "confirmatory_all-full_w0.1-s100" / "test.json")  # tested, summary not yet
    done = _script(tmp_path, "--archive")
    assert done.returncode == 0, done.stderr
    assert _archived(tmp_path) == [
        f"confirmatory_all-ce_only-s100/{f}"
        for f in ("summary.json", "test.json", "val.csv", "workers/rank-0.json")
    ]

    # a fresh clone: the archive, a backbone, no runs/studies; the script restores, then archives
    fresh = tmp_path / "fresh"
    shutil.copytree(tmp_path / "experiments", fresh / "experiments")
    _write(fresh / "runs" / "pretrain_synthetic" / "backbone.pth", "weights")
    done = _script(fresh)
    assert done.returncode == 0, done.stderr
    restored = (
        fresh / "runs" / "studies" / "confirmatory" / "runs" / "confirmatory_all-ce_only-s100"
    )
    assert (restored / "test.json").is_file() and (restored / "workers" / "rank-0.json").is_file()
    sha = fresh / "experiments" / "studies" / "results" / "confirmatory" / "backbone.sha256"
    assert len(sha.read_text().strip()) == 64
    assert (sha.parent / "backbone.pth").read_text() == "weights"  # carried with the runs

    # the machine after: no runs/ at all; the archived backbone comes back instead of a retrained one
    later = tmp_path / "later"
    shutil.copytree(fresh / "experiments", later / "experiments")
    done = _script(later)
    assert done.returncode == 0, done.stderr
    assert (later / "runs" / "pretrain_synthetic" / "backbone.pth").read_text() == "weights"

    # a study stopped by Ctrl-C (exit 130) after a run finished: the run is archived, 130 kept
    stub = tmp_path / "raycontrast-stub"
    stub.write_text(
        "#!/usr/bin/env bash\n"
        "d=runs/studies/confirmatory/runs/confirmatory_all-ce_only-s101\n"
        "mkdir -p $d && touch $d/summary.json $d/test.json\n"
        "exit 130\n"
    )
    stub.chmod(0o755)
    stopped = _script(fresh, raycontrast=str(stub))
    assert stopped.returncode == 130, stopped.stderr
    assert "confirmatory_all-ce_only-s101/test.json" in _archived(fresh)

    # the next machine's backbone trained to other bytes: stop before pretrained runs could mix
    _write(fresh / "runs" / "pretrain_synthetic" / "backbone.pth", "other weights")
    stopped = _script(fresh)
    assert stopped.returncode == 1
    assert "backbone.sha256" in stopped.stderr and "confirmatory_pretrained-*" in stopped.stderr


def test_a_storage_path_the_archive_cannot_follow_is_refused(tmp_path):
    refused = _script(tmp_path, "storage_path=/elsewhere")
    assert refused.returncode == 2 and "storage_path=" in refused.stderr
