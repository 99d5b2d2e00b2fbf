import io

from raycontrast._progress import progress, progress_enabled


def test_progress_choice(monkeypatch):
    monkeypatch.delenv("RAYCONTRAST_PROGRESS", raising=False)
    assert progress_enabled() is None  # tqdm decides: only on a terminal
    assert progress_enabled(False) is False and progress_enabled(True) is True
    monkeypatch.setenv("RAYCONTRAST_PROGRESS", "0")
    assert progress_enabled() is False and progress_enabled(True) is True
    monkeypatch.setenv("RAYCONTRAST_PROGRESS", "1")
    assert progress_enabled() is True


def test_bar_hidden_off_a_terminal_and_forced_on(monkeypatch, capsys):
    monkeypatch.delenv("RAYCONTRAST_PROGRESS", raising=False)
    bar = progress(range(3), desc="x")  # pytest's captured stderr is not a terminal
    assert list(bar) == [0, 1, 2] and bar.disable
    captured = capsys.readouterr()
    assert captured.err == ""  # no bar: a plain line on stdout instead
    assert captured.out.splitlines()[-1].startswith("[x] 3/3 it (100%) in ")
    monkeypatch.setenv("RAYCONTRAST_PROGRESS", "0")
    assert list(progress(range(3), desc="off")) == [0, 1, 2]
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("RAYCONTRAST_PROGRESS", "1")
    bar = progress(total=2, desc="forced")
    assert not bar.disable
    bar.fp = io.StringIO()
    bar.update(2)
    bar.close()


def test_lines_off_a_terminal_every_ten_percent_and_every_n_seconds(monkeypatch):
    import time

    from raycontrast._progress import LineProgress

    out = io.StringIO()
    bar = LineProgress(total=100, desc="eval", unit="img", every_s=3600, stream=out)
    bar._last -= 10  # as if the last line were long ago: percent lines are due
    for _ in range(100):
        bar.update(1)
        bar._last -= 2  # at most one line a second: let each step count as 2 s later
    bar.close()
    lines = out.getvalue().splitlines()
    # 10%, 20%, ..., 90% (100% is the closing line), each with a rate and an ETA
    assert [ln.split("(")[1].split(")")[0] for ln in lines[:-1]] == [
        f"{p}%" for p in range(10, 100, 10)
    ]
    assert all("img/s, ETA " in ln for ln in lines[:-1])
    assert lines[-1].startswith("[eval] 100/100 img (100%) in ")

    # no total: a line every every_s seconds
    out = io.StringIO()
    bar = LineProgress(desc="convert", unit="img", every_s=0.05, stream=out)
    for _ in range(3):
        time.sleep(0.06)
        bar.update(1)
    assert bar.lines == 3 and out.getvalue().splitlines()[0].startswith("[convert] 1 img, ")
