"""Progress generators: driven to their return value, with and without a bar."""

from __future__ import annotations

from napari_allbag.progress import Progress, drive, drive_with_bar


def counting(n: int):
    for i in range(1, n + 1):
        yield Progress(i, n, "count", metrics={"i": float(i)})
    return n * 10


def test_drive_returns_the_result_and_reports_every_event():
    seen = []
    assert drive(counting(3), seen.append) == 30
    assert [e.done for e in seen] == [1, 2, 3]
    assert seen[-1].fraction == 1.0


def test_fraction_is_none_without_a_total():
    assert Progress(5).fraction is None


def test_drive_with_bar_shows_progress_on_stderr(capsys):
    assert drive_with_bar(counting(2)) == 20
    assert "count" in capsys.readouterr().err


def test_quiet_bar_prints_nothing(capsys):
    assert drive_with_bar(counting(2), quiet=True) == 20
    assert capsys.readouterr().err == ""
