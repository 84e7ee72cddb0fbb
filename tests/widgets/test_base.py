"""WorkerControls: a generator run in a worker thread, its events paced for the GUI, Cancel."""

from __future__ import annotations

import sys
import threading

import pytest
from qtpy.QtWidgets import QProgressBar, QPushButton

from napari_allbag.progress import Progress
from napari_allbag.widgets.base import WorkerControls

TIMEOUT_MS = 30_000


def _controls(qtbot, seen: list):
    run, cancel, bar = QPushButton("Run"), QPushButton("Cancel"), QProgressBar()
    for widget in (run, cancel, bar):
        qtbot.addWidget(widget)
    return WorkerControls([run], cancel, bar, on_progress=seen.append)


def _outcome() -> tuple[dict, dict]:
    outcome: dict = {}
    callbacks = {
        "on_result": lambda value: outcome.setdefault("result", value),
        "on_error": lambda error: outcome.setdefault("error", error),
        "on_aborted": lambda: outcome.setdefault("aborted", True),
    }
    return outcome, callbacks


def counting(n: int, cleaned: list):
    try:
        for i in range(1, n + 1):
            yield Progress(i, n + 1, "count")
        return "counted"
    finally:
        cleaned.append(threading.current_thread() is threading.main_thread())


def test_many_quick_events_are_thinned_and_the_last_one_arrives(qtbot):
    seen: list[Progress] = []
    cleaned: list[bool] = []
    controls = _controls(qtbot, seen)
    outcome, callbacks = _outcome()
    assert controls.start(counting, 2000, cleaned, **callbacks)
    assert not controls.start(counting, 1, cleaned, **callbacks)  # one at a time
    qtbot.waitUntil(lambda: not controls.is_running, timeout=TIMEOUT_MS)
    assert outcome == {"result": "counted"}
    assert seen[0].done == 1 and seen[-1].done == 2000  # the first and the last are shown
    assert len(seen) < 2000  # the GUI was not sent every one
    assert cleaned == [False]  # the generator was created and closed in the worker thread
    assert controls.progress_bar.value() == 2000


def endless(started: threading.Event, cleaned: list):
    yield Progress(0, None, "building", "a long step")
    started.set()
    try:
        i = 0
        while True:
            i += 1
            yield Progress(i, None, "working")
    finally:
        cleaned.append(threading.current_thread() is threading.main_thread())


def test_cancel_stops_at_the_next_event_and_cleans_up_in_the_worker(qtbot):
    seen: list[Progress] = []
    cleaned: list[bool] = []
    controls = _controls(qtbot, seen)
    outcome, callbacks = _outcome()
    started = threading.Event()
    assert controls.start(endless, started, cleaned, **callbacks)
    assert started.wait(TIMEOUT_MS / 1000)
    assert controls.cancel()
    qtbot.waitUntil(lambda: not controls.is_running, timeout=TIMEOUT_MS)
    assert outcome == {"aborted": True}
    assert cleaned == [False]
    assert not controls.cancel()  # nothing runs
    assert controls.run_buttons[0].isEnabled() and not controls.cancel_button.isEnabled()


def test_cancel_before_the_worker_began_runs_nothing(qtbot):
    seen: list[Progress] = []
    cleaned: list[bool] = []
    controls = _controls(qtbot, seen)
    outcome, callbacks = _outcome()
    assert controls.start(counting, 5, cleaned, **callbacks)
    controls.cancel()
    qtbot.waitUntil(lambda: not controls.is_running, timeout=TIMEOUT_MS)
    assert outcome == {"aborted": True}
    assert len(seen) <= 1 and cleaned in ([], [False])


def failing():
    yield Progress(1, 2, "fail")
    raise ValueError("broken input")


def test_an_error_reaches_on_error(qtbot):
    controls = _controls(qtbot, [])
    outcome, callbacks = _outcome()
    assert controls.start(failing, **callbacks)
    qtbot.waitUntil(lambda: not controls.is_running, timeout=TIMEOUT_MS)
    assert isinstance(outcome.get("error"), ValueError) and "result" not in outcome


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness: Linux")
def test_the_worker_thread_runs_at_a_lower_priority(qtbot):
    import os

    from napari_allbag.widgets.base import WORKER_NICENESS

    niceness: list[int] = []

    def measure():
        niceness.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        yield Progress(1, 1, "measure")

    controls = _controls(qtbot, [])
    outcome, callbacks = _outcome()
    assert controls.start(measure, **callbacks)
    qtbot.waitUntil(lambda: not controls.is_running, timeout=TIMEOUT_MS)
    assert niceness and niceness[0] >= WORKER_NICENESS
