"""widgets.base in a real viewer: every dock fits a 1,000 px high window (scrolling where its
content is taller), and no row of it is squeezed (wrapped labels keep all their lines);
WorkerControls runs a generator in a worker thread, its events paced for the GUI, and Cancel."""

from __future__ import annotations

import sys
import threading

import pytest
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QApplication, QLabel, QProgressBar, QPushButton, QWidget

from napari_allbag.progress import Progress
from napari_allbag.widgets.base import WorkerControls

#: The window height every dock must fit, and a narrow dock's width (px).
SCREEN_HEIGHT = 1000
NARROW_DOCK = 300
DOCKS = ("Segment cells", "Classify cells", "Train ensemble", "Cell table")
TIMEOUT_MS = 30_000


def dock_in_window(viewer, qtbot, name: str, width: int = NARROW_DOCK, height: int = SCREEN_HEIGHT):
    """Dock the manifest's widget `name` in the shown window of `height`, the dock `width` wide;
    returns (dock, widget) once the layout has settled."""
    window = viewer.window._qt_window
    window.resize(1200, height)
    dock, widget = viewer.window.add_plugin_dock_widget("napari-allbag", name)
    window.resizeDocks([dock], [width], Qt.Orientation.Horizontal)
    qtbot.waitUntil(dock.isVisible)
    for _ in range(20):
        QApplication.processEvents()
    return dock, widget


def squeezed(content: QWidget) -> list[str]:
    """The widgets a layout placed in `content` that are shorter than they need: a wrapped label
    below the height of its text at its width, any other below its smaller size hint (the inner
    parts of tables and scroll bars are placed by their owner, not a layout)."""
    found = []
    for child in content.findChildren(QWidget):
        if not child.isVisibleTo(content) or child.width() <= 0 or _placed_by_owner(child):
            continue
        if isinstance(child, QLabel) and child.wordWrap() and child.text():
            need = child.heightForWidth(child.width())
        else:  # what a layout may shrink it to: its own minimum (a style sheet's), else the hint
            need = child.minimumSize().height() or child.minimumSizeHint().height()
            need = min(need, child.sizeHint().height())
        if child.height() < need:
            found.append(
                f"{type(child).__name__} {getattr(child, 'text', lambda: '')()!r}: "
                f"{child.height()} < {need} px"
            )
    return found


def _placed_by_owner(widget: QWidget) -> bool:
    """Whether `widget` is placed by its parent's code (a combo box's line edit, a table's
    header) rather than by a layout of its parent."""
    parent = widget.parentWidget()
    return parent is None or not _in_layout(parent.layout(), widget)


def _in_layout(layout, widget: QWidget) -> bool:
    if layout is None:
        return False
    for i in range(layout.count()):
        item = layout.itemAt(i)
        if item.widget() is widget or _in_layout(item.layout(), widget):
            return True
    return False


@pytest.mark.parametrize("name", DOCKS)
def test_each_dock_fits_a_1000_px_window(make_napari_viewer, qtbot, name):
    viewer = make_napari_viewer(show=True)
    dock, widget = dock_in_window(viewer, qtbot, name)
    window = viewer.window._qt_window
    assert window.height() <= SCREEN_HEIGHT, f"{name} makes the window {window.height()} px high"
    assert dock.minimumSizeHint().height() < SCREEN_HEIGHT - 100
    assert squeezed(getattr(widget, "native", widget)) == []


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


def test_closing_the_window_mid_run_stops_the_job_and_touches_no_deleted_widget(qtbot):
    """napari's window closed during training: the widgets are deleted while the job runs.
    Before, its next progress event touched the deleted bar (PyQt then aborts the process)."""
    window = QWidget()
    run, cancel, bar = (
        QPushButton("Run", window),
        QPushButton("Cancel", window),
        QProgressBar(window),
    )
    seen: list[Progress] = []
    cleaned: list[bool] = []
    controls = WorkerControls([run], cancel, bar, on_progress=seen.append)
    outcome, callbacks = _outcome()
    started = threading.Event()
    assert controls.start(endless, started, cleaned, **callbacks)
    assert started.wait(TIMEOUT_MS / 1000)
    window.deleteLater()
    qtbot.waitUntil(lambda: not controls.is_running, timeout=TIMEOUT_MS)  # an error would fail here
    assert cleaned == [False]  # stopped, and cleaned up in its own thread
    assert outcome == {}  # nothing reached the deleted widgets' callbacks


def endless_torch(started: threading.Event, cleaned: list, backward: bool):
    """One step that never ends by itself: only Cancel inside torch can stop it."""
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    x = torch.randn(4, 8)
    yield Progress(0, None, "training", "one endless batch")
    try:
        if backward:
            loss = model(x).sum()
            started.set()
            while True:
                loss.backward(retain_graph=True)
        started.set()
        while True:
            model(x)
    finally:
        model(x)  # the clean-up may use torch after Cancel
        cleaned.append(threading.current_thread() is threading.main_thread())


@pytest.mark.parametrize("backward", [False, True])
def test_cancel_stops_inside_a_long_torch_computation(qtbot, backward):
    cleaned: list[bool] = []
    controls = _controls(qtbot, [])
    outcome, callbacks = _outcome()
    started = threading.Event()
    assert controls.start(endless_torch, started, cleaned, backward, **callbacks)
    assert started.wait(TIMEOUT_MS / 1000)
    controls.cancel()
    qtbot.waitUntil(lambda: not controls.is_running, timeout=TIMEOUT_MS)
    assert outcome == {"aborted": True} and cleaned == [False]
    import torch  # the hooks are gone: torch runs as usual here

    torch.nn.Linear(2, 2)(torch.ones(1, 2)).sum().backward()


def gated(gate: threading.Event, n: int, cleaned: list):
    """`counting` once `gate` opens: the test cancels first, whatever the threads' timing (the
    worker ran all 5 quick events before `cancel()` in one full-suite run)."""
    assert gate.wait(TIMEOUT_MS / 1000)
    return (yield from counting(n, cleaned))


def test_cancel_before_the_worker_began_runs_nothing(qtbot):
    seen: list[Progress] = []
    cleaned: list[bool] = []
    controls = _controls(qtbot, seen)
    outcome, callbacks = _outcome()
    gate = threading.Event()
    assert controls.start(gated, gate, 5, cleaned, **callbacks)
    controls.cancel()
    gate.set()
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
def test_a_thread_can_lower_its_own_priority_only():
    import os

    from napari_allbag.widgets.base import lower_thread_priority

    seen: dict[str, int] = {}

    def lower():
        assert lower_thread_priority(7)
        seen["own"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    own_before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    thread = threading.Thread(target=lower)
    thread.start()
    thread.join()
    assert seen["own"] >= 7
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own_before


def test_the_worker_sets_its_priority(qtbot, monkeypatch):
    from napari_allbag.widgets import base

    calls: list[bool] = []
    monkeypatch.setattr(
        base, "lower_thread_priority", lambda: calls.append(threading.current_thread().name)
    )
    controls = _controls(qtbot, [])
    outcome, callbacks = _outcome()
    assert controls.start(counting, 1, [], **callbacks)
    qtbot.waitUntil(lambda: not controls.is_running, timeout=TIMEOUT_MS)
    assert len(calls) == 1 and calls[0] != threading.main_thread().name
