"""RunLogger: a resumed run's training time counts every segment; loss.png labels its terms."""

import json
import time

from raycontrast.eval._plots import write_plots
from raycontrast.train._logger import WALL_FILE, RunLogger

NAMES = ["a", "b"]
VAL = {"mIoU": 0.5, "mAcc": 0.5, "aAcc": 0.5, "fwIoU": 0.5, "IoU": [0.5, 0.5]}


def _segment(run_dir, start, evals, pause=0.05):
    log = RunLogger(str(run_dir), "wall", start, 8, NAMES)
    for it in evals:
        time.sleep(pause)
        log.val(it, VAL)
    log.close()
    return log


def test_wall_time_of_a_resumed_run_counts_every_segment(tmp_path):
    first = _segment(tmp_path, 0, [2, 4, 6])  # evaluated at 6, then interrupted
    assert first.previous_wall == 0.0
    segments = json.loads((tmp_path / WALL_FILE).read_text())
    assert [s[:2] for s in segments] == [[0, 6]] and segments[0][2] >= 0.15
    second = _segment(tmp_path, 6, [8])  # resumed from the checkpoint at 6
    assert second.previous_wall == segments[0][2]
    both = json.loads((tmp_path / WALL_FILE).read_text())
    assert [s[:2] for s in both] == [[0, 6], [6, 8]]
    # a rerun from the checkpoint at 6 replaces the second segment, not the first
    third = _segment(tmp_path, 6, [8])
    assert third.previous_wall == segments[0][2]
    assert len(json.loads((tmp_path / WALL_FILE).read_text())) == 2


def test_loss_plot_says_the_contrast_term_is_unweighted(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    (tmp_path / "metrics.csv").write_text(
        "iteration,loss,ce,contrast\n1,2.0,1.9,1.0\n2,1.8,1.7,0.9\n"
    )
    import matplotlib.pyplot as plt

    seen = {}
    real_legend = plt.Axes.legend

    def spy(ax, *args, **kwargs):
        seen["labels"] = [line.get_label() for line in ax.get_lines()]
        return real_legend(ax, *args, **kwargs)

    plt.Axes.legend = spy
    try:
        write_plots(tmp_path, NAMES, None)
    finally:
        plt.Axes.legend = real_legend
    assert seen["labels"][0] == "loss (total, weighted)"
    assert seen["labels"][2].startswith("contrast (unweighted; total adds contrast.loss_weight")
    assert (tmp_path / "plots" / "loss.png").stat().st_size > 0
