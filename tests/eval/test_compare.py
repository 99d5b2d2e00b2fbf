import csv
import json

import pytest
from PIL import Image

from raycontrast.cli import main
from raycontrast.eval.compare import ReportError, compare_runs, load_run, report
from raycontrast.train._logger import RunLogger


def _run(root, name, classes, losses, evals, final_iou, wall_s=12.5):
    """A run directory written the way training writes it: RunLogger's metrics.csv / val.csv and
    the launcher's summary.json. ``evals`` maps iteration -> mIoU; the last one is final."""
    run_dir = root / name
    logger = RunLogger(str(run_dir), name, 0, len(losses), classes)
    for it, loss in enumerate(losses, start=1):
        row = {"iteration": it, "epoch": 0, "loss": loss, "ce": loss * 0.8, "aux": None,
               "contrast": loss * 0.2, "inbatch": None, "memory": None, "lr": 0.01,
               "it_per_s": 2.0, "anchors": 0, "bank_entries": 0, "skipped_samples": 0}  # fmt: skip
        logger.train(row)
    for it, miou in evals.items():
        iou = [miou] * len(classes)
        logger.val(it, {"mIoU": miou, "mAcc": miou + 0.1, "aAcc": 0.9, "fwIoU": 0.8, "IoU": iou})
    logger.close()
    last = evals[max(evals)]
    summary = {"name": name, "status": "completed", "mIoU": last, "mAcc": last + 0.1,
               "aAcc": 0.9, "fwIoU": 0.8, "iterations": len(losses), "wall_s": wall_s,
               "per_class_IoU": dict(zip(classes, final_iou))}  # fmt: skip
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


@pytest.fixture
def two_runs(tmp_path):
    a = _run(tmp_path, "contrast", ["road", "car", "sky"], [2.0, 1.5, 1.2, 1.0],
             {2: 0.40, 4: 0.35}, [0.5, None, 0.2])  # fmt: skip
    b = _run(tmp_path, "baseline", ["car", "road", "bike"], [2.1, 1.9, 1.7, 1.6],
             {2: 0.20, 4: 0.30}, [0.1, 0.6, 0.05], wall_s=10.0)  # fmt: skip
    return a, b


def _csv(path):
    with path.open() as f:
        return list(csv.DictReader(f))


def test_compare_two_runs_tables_and_pictures(two_runs, tmp_path):
    out = tmp_path / "cmp"
    cmp = compare_runs(two_runs, out)
    rows = {r["run"]: r for r in _csv(out / "runs.csv")}
    assert set(rows) == {"contrast", "baseline"}
    # final = the last evaluation (summary.json); best = the highest val.csv mIoU and its iteration
    assert float(rows["contrast"]["mIoU"]) == pytest.approx(0.35)
    assert float(rows["contrast"]["best_mIoU"]) == pytest.approx(0.40)
    assert rows["contrast"]["best_iteration"] == "2"
    assert float(rows["baseline"]["best_mIoU"]) == pytest.approx(0.30)
    assert rows["baseline"]["best_iteration"] == "4" and rows["baseline"]["iterations"] == "4"
    assert float(rows["baseline"]["wall_s"]) == 10.0
    # per-class IoU side by side, classes matched by name across different class lists
    per_class = {r["class"]: r for r in _csv(out / "per_class_iou.csv")}
    assert list(per_class) == ["road", "car", "sky", "bike"]
    assert float(per_class["road"]["contrast"]) == 0.5
    assert float(per_class["road"]["baseline"]) == 0.6
    assert per_class["car"]["contrast"] == ""  # absent class (no IoU)
    assert per_class["sky"]["baseline"] == "" and float(per_class["bike"]["baseline"]) == 0.05
    md = (out / "comparison.md").read_text()
    assert md == cmp.markdown
    assert "| contrast | 4 | 35.00 | 45.00 | 90.00 | 80.00 | 40.00 (2) | 12 s |" in md
    assert "| road | 50.00 | 60.00 |" in md and "| car | - | 10.00 |" in md
    for name in ("curves.png", "per_class_iou.png"):
        assert Image.open(out / name).size[0] > 300 and out / name in cmp.files


def test_run_names_made_unique_and_labels(two_runs, tmp_path):
    a, _ = two_runs
    cmp = compare_runs([a, a], tmp_path / "same")
    assert [r["run"] for r in cmp.runs] == ["contrast", f"{a.parent.name}/contrast"]
    cmp = compare_runs([a, a], tmp_path / "named", labels=["x", "y"])
    assert [r["run"] for r in cmp.runs] == ["x", "y"]


def test_runs_without_summary_use_val_csv(two_runs, tmp_path):
    a, _ = two_runs
    (a / "summary.json").unlink()
    run = load_run(a)
    assert run.final()["mIoU"] == pytest.approx(0.35)  # the last val.csv row
    assert run.per_class_iou() == {"road": 0.35, "car": 0.35, "sky": 0.35}
    assert run.iterations() == 4 and run.best() == (pytest.approx(0.40), 2)


def test_report_one_run_rebuilds_its_plots(two_runs, tmp_path, capsys):
    from raycontrast.eval._visualize import write_confusion

    a, _ = two_runs
    write_confusion([[5, 1, 0], [0, 3, 1], [0, 0, 2]], ["road", "car", "sky"], a)
    (a / "plots" / "confusion.png").unlink()
    files = report([a])
    names = sorted(p.name for p in files)
    assert names == ["confusion.png", "loss.png", "miou.png", "per_class_iou.png"]
    assert all(p.parent == a / "plots" and p.is_file() for p in files)
    out = capsys.readouterr().out
    assert "road" in out and "mIoU 35.00" in out and "best mIoU 40.00 at iteration 2" in out
    elsewhere = report([a], out=tmp_path / "elsewhere")
    assert {p.parent for p in elsewhere} == {tmp_path / "elsewhere"}


def test_report_errors(tmp_path):
    with pytest.raises(ReportError, match="run directory not found"):
        load_run(tmp_path / "missing")
    with pytest.raises(ReportError, match="reads local"):
        load_run("s3://bucket/runs/x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match=r"empty: not a run directory \(expected metrics.csv"):
        load_run(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "summary.json").write_text("{not json")
    with pytest.raises(ReportError, match=r"summary.json: unreadable JSON"):
        load_run(tmp_path / "bad")


def test_cli_report(two_runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["report", *map(str, two_runs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| run | iterations | mIoU" in printed and f"to {out}" in printed
    assert (out / "comparison.md").is_file()
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "run directory not found" in capsys.readouterr().err


def test_report_refuses_the_same_run_twice(two_runs, tmp_path):
    from raycontrast.eval.compare import report

    alias = tmp_path / "alias"
    alias.symlink_to(two_runs[0], target_is_directory=True)
    with pytest.raises(
        ReportError, match=r"alias: the same run as .*; give each run directory once"
    ):
        report([two_runs[0], two_runs[1], alias], out=tmp_path / "cmp")
    assert not (tmp_path / "cmp").exists()
