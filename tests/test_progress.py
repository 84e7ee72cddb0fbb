"""Progress generators: driven to their return value, with and without a bar."""

from __future__ import annotations

import io

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


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def two_stages():
    yield Progress(0, 3, "load")
    for i in range(1, 4):
        yield Progress(i, 3, "load")
    for i in range(1, 501):
        yield Progress(i, 500, "segmenting", metrics={"cells": i})
    return "done"


def test_outside_a_terminal_progress_is_a_line_per_stage_and_per_ten_percent():
    log = io.StringIO()  # a file, a pipe, CI: not a terminal
    assert drive_with_bar(two_stages(), stream=log) == "done"
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    load = [line for line in lines if "] load: " in line]
    segmenting = [line for line in lines if "] segmenting: " in line]
    assert len(load) == 4  # start at 0/3, then 1/3 (33%), 2/3 (67%), 3/3: each passes 10% steps
    assert len(segmenting) == 11  # the stage's start (1/500), then every 10% up to 500/500
    assert segmenting[-1].endswith("segmenting: 500/500 (100%) cells=500")
    assert len(lines) == len(load) + len(segmenting)


def test_on_a_terminal_progress_is_a_tqdm_bar():
    screen = Terminal()
    assert drive_with_bar(two_stages(), stream=screen) == "done"
    assert "\r" in screen.getvalue() and "segmenting" in screen.getvalue()


def test_quiet_bar_prints_nothing(capsys):
    assert drive_with_bar(counting(2), quiet=True) == 20
    assert capsys.readouterr().err == ""
