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
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RAYCONTRAST_PROGRESS", "1")
    bar = progress(total=2, desc="forced")
    assert not bar.disable
    bar.fp = io.StringIO()
    bar.update(2)
    bar.close()
