import csv
import math

import pytest
import torch
import torch.nn.functional as F

from raycontrast.contrast import BankRecords, MemoryBank
from raycontrast.contrast.health import KINDS, bank_health, sample_bank
from raycontrast.train._bank_plots import bank_health_figure, bank_map_figure
from raycontrast.train._logger import RunLogger

NAMES = ["road", "car", "sky", "tree"]


def _bank(steps, seed=0):
    """4 classes, both kinds; class 3 never seen; classes 0..2 pulled towards their own axis."""
    g = torch.Generator().manual_seed(seed)
    bank = MemoryBank(4, 6, 8)
    for _ in range(steps):
        cls = torch.randint(0, 3, (10,), generator=g)
        vec = F.one_hot(cls, 6).float() * 3 + torch.randn(10, 6, generator=g)
        bank.write(
            BankRecords(cls, torch.randint(0, 2, (10,), generator=g), F.normalize(vec, dim=1))
        )
    return bank


def _png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    return data


def test_logger_writes_rows_scalars_and_plots_at_each_evaluation(tmp_path):
    logger = RunLogger(str(tmp_path), "t", 0, 20, NAMES)
    rows = []
    for it, steps in ((10, 2), (20, 6)):
        bank = _bank(steps)
        sample = sample_bank(bank, max_entries=64)
        health = bank_health(
            bank, NAMES, sample=sample, loss_stats={"bank/loss/positive_share": 0.75}
        )
        logger.bank(it, health, sample)
        rows.append({"iteration": it, **health})
    logger.close()
    with (tmp_path / "bank.csv").open(newline="") as f:
        saved = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in saved] == [10, 20]
    for row, want in zip(saved, rows):
        assert list(row) == list(want)
        for key, value in want.items():
            got = float(row[key])
            assert (math.isnan(got) and math.isnan(value)) or got == pytest.approx(value)
    assert logger.last_bank == rows[-1]
    _png(tmp_path / "plots" / "bank_health.png")
    _png(tmp_path / "plots" / "bank_map_10.png")
    _png(tmp_path / "plots" / "bank_map_20.png")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"bank/pixel/fill/road", "bank/region/spread", "bank/loss/positive_share"} <= tags
    assert "bank/pixel/spread/tree" not in tags  # nan (empty class) is not logged
    fill = [e.value for e in events.Scalars("bank/pixel/fill")]
    assert fill == pytest.approx([rows[0]["bank/pixel/fill"], rows[1]["bank/pixel/fill"]])
    # a resumed run drops the evaluations past its checkpoint
    RunLogger(str(tmp_path), "t", 10, 20, NAMES).close()
    with (tmp_path / "bank.csv").open(newline="") as f:
        assert [int(r["iteration"]) for r in csv.DictReader(f)] == [10]


def test_health_figure_draws_every_evaluation_and_the_last_per_class_values():
    rows = [
        {"iteration": it, **bank_health(_bank(s), NAMES)} for it, s in ((5, 1), (10, 3), (15, 9))
    ]
    fig = bank_health_figure(rows, NAMES)
    fill_axis, geometry_axis, bars = fig.axes[0], fig.axes[2], fig.axes[4]
    lines = {line.get_label(): line for line in fill_axis.get_lines()}
    assert set(lines) == {"pixel", "region"}
    assert list(lines["pixel"].get_xdata()) == [5, 10, 15]
    assert list(lines["pixel"].get_ydata()) == pytest.approx([r["bank/pixel/fill"] for r in rows])
    spread = next(
        line for line in geometry_axis.get_lines() if line.get_label().startswith("region spread")
    )
    assert list(spread.get_ydata()) == pytest.approx([r["bank/region/spread"] for r in rows])
    heights = [p.get_height() for p in bars.patches[: len(NAMES)]]  # pixel fill of the last row
    assert heights == pytest.approx([rows[-1][f"bank/pixel/fill/{n}"] for n in NAMES])
    assert [t.get_text() for t in bars.get_xticklabels()] == NAMES
    with pytest.raises(ValueError, match="at least one row"):
        bank_health_figure([], NAMES)


def test_map_colours_each_class_and_labels_it_once():
    bank = _bank(4)
    sample = sample_bank(bank, max_entries=400)
    fig = bank_map_figure(sample, NAMES)
    ax = fig.axes[0]
    from matplotlib.legend import Legend

    legends = {lg.get_title().get_text(): lg for lg in ax.get_children() if isinstance(lg, Legend)}
    labels = [t.get_text() for t in legends["class"].get_texts()]
    assert labels == ["road", "car", "sky"]  # present classes only, each once, in class order
    # classes are colour squares (no marker), kinds are the markers drawn: pixel o, region x
    assert all(h.__class__.__name__ == "Rectangle" for h in legends["class"].legend_handles)
    kinds = sorted({KINDS[k] for k in sample.kind.tolist()})
    assert [t.get_text() for t in legends["kind"].get_texts()] == kinds
    assert [h.get_marker() for h in legends["kind"].legend_handles] == [
        {"pixel": "o", "region": "x"}[k] for k in kinds
    ]
    plotted = sum(len(c.get_offsets()) for c in ax.collections)
    assert plotted == len(sample)
    empty = bank_map_figure(sample_bank(MemoryBank(4, 6, 8)), NAMES)
    assert empty.axes[0].get_legend() is None and "empty" in empty.axes[0].texts[0].get_text()
