"""Studies: validation of study files, the analysis of finished runs, and a reduced smoke study."""

import csv
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from raycontrast.config import ConfigError
from raycontrast.tune import load_study, run_study
from raycontrast.tune._study_results import write_results
from raycontrast.tune.study import Cell
from raycontrast.tune.study_run import finished
from tests.train.conftest import TINY

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def write_study(tmp_path):
    """``write_study(name, arms, **fields)`` -> path of a study YAML over the tiny experiment."""

    def make(name: str, arms, **fields) -> Path:
        doc = {
            "base": str(REPO / "experiments" / "synthetic.yaml"),
            "name": name,
            "storage_path": str(tmp_path / "studies"),
            "overrides": [
                *TINY,
                "train.num_workers=1",
                "train.cpus_per_worker=0.75",
                "train.batch_size=2",
            ],
            "seeds": [0, 1],
            "reference": "ce",
            "arms": arms,
            "trial_cpus": 0.25,
            **fields,
        }
        doc = {k: v for k, v in doc.items() if v is not None}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    return make


ARMS = {"ce": {"contrast.enabled": False}, "contrast": {}}


@pytest.mark.parametrize(
    ("arms", "fields", "message"),
    [
        (
            {"ce": {"contrast.enabled": False}, "mem": {"contrast.memroy_size": 100}},
            {},
            r"arm 'mem': key 'contrast.memroy_size': unknown config key.*did you mean "
            r"'contrast.memory_size'",
        ),
        (
            {"ce": {"contrast.enabled": False}, "mem": {"contrast.memory_size": "big"}},
            {},
            r"arm 'mem': key 'contrast.memory_size': contrast.memory_size must be int",
        ),
        (
            {"ce": {"contrast.enabled": False}, "both": {"contrast.memory": "both"}},
            {},
            r"arm 'both': contrast.memory='both' changes nothing",
        ),
        (
            {"ce": {"contrast.enabled": False}, "a": {}, "b": {}},
            {},
            r"arm 'b' changes nothing: its experiment is the same as arm 'a'",
        ),
        (ARMS, {"reference": "baseline"}, r"reference arm 'baseline' is not one of the arms"),
        (ARMS, {"reference": "cee"}, r"reference arm 'cee'.*did you mean 'ce'"),
        (ARMS, {"seeds": [3]}, r"'seeds' has 1 seed\(s\); a study needs at least 2"),
        (ARMS, {"seeds": 1}, r"'seeds' has 1 seed\(s\)"),
        (ARMS, {"seeds": None}, r"'seeds' is required"),
        (ARMS, {"seeds": [1, 1]}, r"'seeds' repeats a seed"),
        (ARMS, {"metric": "dice"}, r"metric 'dice' is never reported by a training run"),
        (ARMS, {"metric": "miou"}, r"did you mean 'mIoU'"),
        (ARMS, {"refrence": "ce"}, r"unknown config key 'refrence'.*did you mean 'reference'"),
        (
            {"ce": {"contrast.enabled": False}, "s": {"train.seed": 3}},
            {},
            r"arm 's': 'train.seed' is set by the study itself",
        ),
        ({"ce": ["contrast.enabled=false"], "c": {}}, {}, r"arm 'ce': expected a mapping"),
        ({"c e": {"contrast.enabled": False}}, {}, r"arm 'c e': names are letters"),
        (None, {}, r"'arms' must be a non-empty mapping"),
        (
            ARMS,
            {"regimes": {"few": {"data.synthetic.num_train": 32}}},
            r"regime 'few': data.synthetic.num_train=32 changes nothing",
        ),
        (
            ARMS,
            {"regimes": {"few": {"data.synthetic.num_tran": 8}}},
            r"regime 'few': key 'data.synthetic.num_tran'",
        ),
        (
            # values each key accepts, but the experiment rejects (contrast on without any term)
            {
                "ce": {"contrast.enabled": False},
                "none": {"contrast.inbatch": False, "contrast.memory": "none"},
            },
            {},
            r"arm 'none': .*has no contrast term",
        ),
    ],
)
def test_bad_study_files_fail_fast_naming_arm_and_key(write_study, arms, fields, message):
    path = write_study("bad", arms, **fields)
    with pytest.raises(ConfigError, match=message):
        load_study(path)


def test_runs_are_seed_major_and_each_arm_is_its_own_experiment(write_study):
    study = load_study(
        write_study(
            "ok",
            {**ARMS, "inbatch": {"contrast.memory": "none"}},
            seeds=3,
            regimes={"all": {}, "few": {"data.synthetic.num_train": 8}},
        )
    )
    cells = study.cells()
    assert len(cells) == 3 * 2 * 3
    assert [c.seed for c in cells[:6]] == [0] * 6  # a study cut short holds whole seeds
    assert cells[0].run_name == "all-ce-s0" and cells[-1].run_name == "few-inbatch-s2"
    cfg = study.run_config(Cell("inbatch", "few", 2))
    assert (cfg.train.seed, cfg.data.synthetic.num_train, cfg.contrast.memory) == (2, 8, "none")
    assert cfg.name == "ok_few-inbatch-s2"
    assert study.run_config(Cell("ce", "all", 0)).contrast.enabled is False


def _fake_run(run_dir: Path, evals: dict[int, float], per_class: dict[str, float]) -> None:
    run_dir.mkdir(parents=True)
    classes = [f"IoU/{c}" for c in per_class]
    with (run_dir / "val.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["iteration", "mIoU", "mAcc", "aAcc", "fwIoU", *classes])
        for i, (it, miou) in enumerate(evals.items()):
            last = i == len(evals) - 1
            w.writerow(
                [it, miou, 0.5, 0.9, 0.8, *(per_class.values() if last else [0] * len(classes))]
            )
    with (run_dir / "metrics.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["iteration", "loss", "ce"])
        for it in evals:
            w.writerow([it, 1.0, 1.0 / it])
    (run_dir / "summary.json").write_text(json.dumps({"train_wall_s": 10.0}))  # fmt: skip


def test_analysis_matches_plain_computations_and_labels_a_partial_study(write_study, tmp_path):
    # runs written by hand: final (iteration 4) and best values known; ce seed 2 never finished
    study = load_study(write_study("fake", ARMS, seeds=[0, 1, 2]))
    final = {("ce", 0): 0.50, ("ce", 1): 0.54, ("contrast", 0): 0.53, ("contrast", 1): 0.55,
             ("contrast", 2): 0.60}  # fmt: skip
    for (arm, seed), value in final.items():
        _fake_run(
            Path(study.run_dir(Cell(arm, "", seed))),
            {2: value + 0.01, 4: value},  # best is the earlier evaluation
            {"background": value, "disc": value / 2},
        )
    _fake_run(Path(study.run_dir(Cell("ce", "", 2))), {2: 0.3}, {"background": 0.3, "disc": 0.1})
    # a rerun of the study (e.g. with an added arm) does not start finished runs again
    assert finished(study, Cell("ce", "", 0)) and not finished(study, Cell("ce", "", 2))
    out = write_results(study)
    runs = pd.read_parquet(Path(out["results_dir"]) / "runs.parquet")
    assert len(runs) == 6 and list(runs["status"]).count("completed") == 5
    assert runs.set_index("run").loc["ce-s2", "status"] == "incomplete"

    arms = {a["arm"]: a for a in out["arms"]}
    ce = [0.50, 0.54]
    assert arms["ce"]["n"] == 2
    assert arms["ce"]["final_mean"] == pytest.approx(0.52)
    assert arms["ce"]["final_std"] == pytest.approx(math.sqrt(((0.02) ** 2 * 2) / 1))
    half = 12.706204736174707 * arms["ce"]["final_std"] / math.sqrt(2)
    assert arms["ce"]["final_ci_high"] == pytest.approx(0.52 + half)
    assert arms["ce"]["best_mean"] == pytest.approx(sum(ce) / 2 + 0.01)
    assert arms["contrast"]["n"] == 3
    # every run fell by 0.01 over its last evaluation interval (iterations 2 -> 4)
    assert arms["contrast"]["last_gain_mean"] == pytest.approx(-0.01)
    assert arms["ce"]["last_gain_from"] == 2

    paired = {p["value"]: p for p in out["paired"]}
    diffs = [0.03, 0.01]  # seed 2 has no reference: paired over seeds 0 and 1
    assert paired["final"]["seeds"] == "0 1"
    assert paired["final"]["mean"] == pytest.approx(sum(diffs) / 2)
    t = (sum(diffs) / 2) / (math.sqrt((0.01**2 * 2) / 1) / math.sqrt(2))
    assert paired["final"]["t"] == pytest.approx(t)
    assert paired["final"]["p"] == pytest.approx(1 - 2 / math.pi * math.atan(abs(t)))  # df 1

    disc = next(c for c in out["per_class"] if c["arm"] == "contrast" and c["class"] == "disc")
    assert disc["diff_mean"] == pytest.approx(sum(diffs) / 4)
    md = (Path(out["results_dir"]) / "study.md").read_text()
    assert "**Partial study**: 1 run(s) not completed (ce-s2)" in md
    assert "`contrast` -1.00 [-1.00, -1.00] (from iteration 2)" in md
    assert "| `ce` | `contrast.enabled=False` | 2/3 | 52.00 ± 2.83" in md
    assert "| `contrast` | (base) | 3/3 |" in md and "+2.00" in md
    for name in ("runs.csv", "arms.csv", "paired.csv", "per_class.csv", "mIoU_per_arm.png",
                 "curves.png"):  # fmt: skip
        assert (Path(out["results_dir"]) / name).stat().st_size > 0
    # every completed run side by side, by raycontrast.eval.compare_runs
    table = pd.read_csv(Path(out["results_dir"]) / "comparison" / "runs.csv")
    assert sorted(table["run"]) == ["ce-s0", "ce-s1", "contrast-s0", "contrast-s1", "contrast-s2"]


def test_test_split_analysis_holm_wilcoxon_and_bootstrap_over_test_images(write_study):
    import numpy as np

    from raycontrast.eval.final_test import write_final_test
    from raycontrast.tune._stats import bootstrap_paired_miou, holm

    seeds = [0, 1, 2, 3, 4, 5]
    over = [*TINY, "train.num_workers=1", "train.cpus_per_worker=0.75", "train.batch_size=2",
            "data.test_split=test"]  # fmt: skip
    arms = {**ARMS, "inbatch": {"contrast.memory": "none"}}
    study = load_study(write_study("conf", arms, seeds=seeds, overrides=over))
    rng = np.random.default_rng(0)
    counts = {}
    for arm, bonus in (("ce", 0), ("contrast", 6), ("inbatch", 1)):
        for seed in seeds:
            run_dir = Path(study.run_dir(Cell(arm, "", seed)))
            _fake_run(run_dir, {2: 0.4, 4: 0.5}, {"background": 0.5, "disc": 0.5})
            c = rng.integers(1, 30, (16, 2, 2))
            c[:, 0, 0] += bonus * (seed + 1)  # contrast: better on every seed, by distinct amounts
            counts[arm, seed] = c
            write_final_test(
                str(run_dir), c, [f"t{i}" for i in range(16)], ["bg", "disc"], 4, "test"
            )
    lost = Path(study.run_dir(Cell("inbatch", "", 5))) / "test.json"
    lost.unlink()  # trained, but the test split was never evaluated: not finished, not counted
    assert not finished(study, Cell("inbatch", "", 5)) and finished(study, Cell("ce", "", 5))
    out = write_results(study)
    test = {p["arm"]: p for p in out["paired"] if p["value"] == "test"}
    assert test["contrast"]["n"] == 6 and test["inbatch"]["n"] == 5
    assert test["contrast"]["wilcoxon_p"] == pytest.approx(2 / 64)  # 6 positive differences, exact
    assert [test[a]["p_holm"] for a in ("contrast", "inbatch")] == pytest.approx(
        holm([test["contrast"]["p"], test["inbatch"]["p"]])
    )
    boot = bootstrap_paired_miou(
        {s: counts["contrast", s] for s in seeds}, {s: counts["ce", s] for s in seeds}
    )
    assert test["contrast"]["mean"] == pytest.approx(boot.estimate)
    assert (test["contrast"]["boot_ci_low"], test["contrast"]["boot_ci_high"]) == pytest.approx(
        (boot.ci_low, boot.ci_high)
    )
    pc = [c for c in out["per_class"] if c["arm"] != "ce"]
    assert all("p_holm" in c for c in pc) and {c["class"] for c in pc} == {"bg", "disc"}
    md = (Path(out["results_dir"]) / "study.md").read_text()
    assert "mIoU on `test` with each run's last weights" in md
    assert "| paired n | p | p Holm | Wilcoxon p | boot CI |" in md
    assert "Still rising" not in md and "does not show that training converged" in md


@pytest.mark.ray
@pytest.mark.slow
def test_smoke_study_end_to_end_and_a_rerun_of_one_seed_is_identical(
    ray_session, write_study, tmp_path
):
    # The shipped smoke study in a reduced form: 2 arms x 2 seeds of the tiny experiment, 4
    # iterations each, 2 runs at once (0.25 + 0.75 CPUs each on 2 cores).
    shipped = load_study(REPO / "experiments" / "studies" / "smoke.yaml")
    assert len(shipped.arms) == 2 and len(shipped.seeds) == 2
    path = write_study("smoke", dict(shipped.arms), reference=shipped.config.reference)
    out = run_study(str(path))
    results = Path(out["results_dir"])
    runs = pd.read_csv(results / "runs.csv")
    assert sorted(runs["run"]) == sorted(c.run_name for c in load_study(path).cells())
    assert (runs["status"] == "completed").all() and (runs["iterations"] == 4).all()
    assert runs["final_mIoU"].between(0, 1).all()
    assert len(out["arms"]) == 2 and all(a["n"] == 2 for a in out["arms"])
    assert len(out["paired"]) == 2 and math.isfinite(out["paired"][0]["mean"])
    for name in ("study.md", "mIoU_per_arm.png", "curves.png", "runs.parquet", "paired.csv"):
        assert (results / name).stat().st_size > 0

    # same config and seed, run again outside the study: identical metrics on CPU (the contrast arm:
    # initial weights, data order, augmentation, anchor and bank sampling all follow train.seed)
    from raycontrast.train import run_training

    study = load_study(path)
    arm = next(a for a in study.arms if a != study.config.reference)
    cell = Cell(arm, "", 1)
    cfg = study.run_config(cell)
    cfg.name = "rerun"
    run_training(cfg)
    again = pd.read_csv(Path(cfg.storage_path) / "rerun" / "val.csv")
    first = pd.read_csv(Path(study.run_dir(cell)) / "val.csv")
    pd.testing.assert_frame_equal(again, first)
    train_a = pd.read_csv(Path(cfg.storage_path) / "rerun" / "metrics.csv")
    train_b = pd.read_csv(Path(study.run_dir(cell)) / "metrics.csv")
    cols = ["loss", "ce", "contrast", "anchors", "bank_entries"]
    pd.testing.assert_frame_equal(train_a[cols], train_b[cols])


def test_dry_run_checks_every_arm_and_prints_the_plan(write_study, capsys):
    from raycontrast.cli import main

    path = write_study("dry", {**ARMS, "inbatch": {"contrast.memory": "none"}}, seeds=3)
    assert main(["study", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "arm ce (reference): contrast.enabled=False" in out
    assert "arm inbatch: contrast.memory=none" in out
    assert "seeds [0, 1, 2]: 9 runs" in out
    assert not (Path(path).parent / "studies" / "dry").exists()  # nothing ran
    # a bad arm is refused with its name, before anything starts
    bad = write_study("bad", {**ARMS, "x": {"model.backbone": "resnet_nope"}})
    assert main(["study", str(bad), "--dry-run"]) == 2
    assert "arm 'x'" in capsys.readouterr().err


def test_resume_refuses_a_study_whose_grid_changed_since_it_started(write_study):
    # Tune resumes the grid it saved: an added arm or seed would never run, so --resume says so
    from raycontrast.tune.study import study_dict
    from raycontrast.tune.study_run import _check_same_grid

    study = load_study(write_study("grown", ARMS))
    _check_same_grid(study)  # never started: nothing to compare
    results = Path(study.results_dir)
    results.mkdir(parents=True)
    (results / "study.yaml").write_text(yaml.safe_dump(study_dict(study), sort_keys=False))
    _check_same_grid(study)  # unchanged
    grown = load_study(
        write_study("grown", {**ARMS, "inbatch": {"contrast.memory": "none"}}, seeds=3)
    )
    with pytest.raises(
        ConfigError,
        match=r"grown\.yaml: cannot --resume study 'grown': .*arms: added \['inbatch'\], removed "
        r"\[\]; seeds: added \[2\].*restore the file to resume, or start .* \(name=\.\.\.\)",
    ):
        _check_same_grid(grown)


def test_relative_paths_mean_what_they_meant_where_the_command_ran(
    write_study, tmp_path, monkeypatch
):
    # Tune runs each trial in its own directory: relative storage and dataset paths are fixed on the
    # driver, so a trial (here: a chdir) still finds them
    monkeypatch.chdir(tmp_path)
    path = write_study("rel", ARMS, storage_path="out/studies")
    study = load_study(path)
    folder = load_study(path, ["data.dataset=folder", "data.root=data/x"])
    monkeypatch.chdir(REPO)
    cfg = study.run_config(Cell("ce", "", 0))
    assert cfg.storage_path == str(tmp_path / "out" / "studies" / "rel" / "runs")
    assert folder.experiment("ce").data.root == str(tmp_path / "data" / "x")
