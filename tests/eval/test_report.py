import math

from raycontrast.eval import SegMetrics, format_table
from raycontrast.eval.report import format_summary


def test_table_shows_percent_and_dashes():
    m = SegMetrics(3)
    m.update([0, 0, 1, 1], [0, 0, 1, 0])
    text = format_table(m.compute(), ["road", "car", "sky"])
    lines = text.splitlines()
    assert lines[0].split() == ["class", "IoU", "Acc"]
    road = next(line for line in lines if line.startswith("road"))
    assert road.split() == ["road", "66.67", "66.67"]
    sky = next(line for line in lines if line.startswith("sky"))
    assert sky.split() == ["sky", "-", "-"]
    assert lines[-1].startswith("mIoU 58.33")


def test_defaults_and_nan():
    assert format_summary({"mIoU": math.nan, "aAcc": 0.5}) == "mIoU -  aAcc 50.00"
    text = format_table({"IoU": [0.1, None], "Acc": [0.2, None], "mIoU": 0.1})
    assert text.splitlines()[2].split() == ["0", "10.00", "20.00"]
