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


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_pacer_thins_counting_events_and_flush_gives_the_last():
    from napari_allbag.progress import Pacer

    clock = Clock()
    pacer = Pacer(0.1, clock)
    shown = []
    for i in range(1, 10):  # 9 of 10 steps within 0.09 s: only the stage's first is shown
        clock.now = i * 0.01
        shown += [e.done for e in [pacer.offer(Progress(i, 10, "count"))] if e is not None]
    assert shown == [1]
    assert pacer.flush().done == 9 and pacer.flush() is None
    clock.now = 0.2
    assert pacer.offer(Progress(9, 10, "count")).done == 9  # the interval has passed


def test_the_pacer_always_shows_milestones():
    from napari_allbag.progress import Pacer

    pacer = Pacer(60.0, Clock())  # the clock stands still: only milestones pass
    events = [
        Progress(1, 10, "count"),  # a new stage
        Progress(2, 10, "count"),
        Progress(3, 10, "count", metrics={"row": {"epoch": 1}}),
        Progress(0, None, "count", "building the model"),  # a busy step
        Progress(4, 10, "count", metrics={"text": "a note"}),
        Progress(5, 10, "count", metrics={"image": b"png"}),
        Progress(6, 10, "count"),
        Progress(7, 10, "count", metrics={"step": 2}),  # a new numbered step
        Progress(8, 10, "count", metrics={"step": 2}),
        Progress(10, 10, "count"),  # the stage's last step
        Progress(1, 5, "next"),
    ]
    shown = [e for e in events if pacer.offer(e) is not None]
    assert [(e.stage, e.done) for e in shown] == [
        ("count", 1),
        ("count", 3),
        ("count", 0),
        ("count", 4),
        ("count", 5),
        ("count", 7),
        ("count", 10),
        ("next", 1),
    ]
    assert pacer.flush() is None


def test_retold_changes_the_events_keeps_the_result_and_closes_the_work():
    from napari_allbag.progress import retold

    closed = []

    def work():
        try:
            yield Progress(1, 2, "a")
            yield Progress(2, 2, "a")
            return "result"
        finally:
            closed.append(True)

    seen = []
    assert drive(retold(work(), lambda e: Progress(e.done * 10, 20, "b")), seen.append) == "result"
    assert [(e.done, e.stage) for e in seen] == [(10, "b"), (20, "b")]
    stopped = retold(work(), lambda e: e)
    next(stopped)
    stopped.close()  # a cancelled worker: the work's clean-up runs now
    assert closed == [True, True]
