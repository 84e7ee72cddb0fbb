"""The worker lifecycle every dock widget shares: start a core generator in napari's worker
thread, drive the progress bar, Cancel, show errors, and refuse a second Run while one runs.

`WorkerControls` is held by a widget (Segment, Classify, Train): the widget gathers its
parameters, calls `controls.start(generator_function, *args, on_result=...)`, and keeps only what
is its own (the status text, the layers). The Run buttons are disabled and Cancel enabled while
the worker runs; the bar shows the events' done/total (busy when the total is unknown).
`in_scroll_area` puts a dock's content in a scroll area, so a short screen scrolls it rather than
squeezing its rows (a squeezed word-wrapped label shows one clipped line); `wrapping_form` is a
form that puts a field below its label in a narrow dock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from napari_allbag.progress import Progress


def start_worker(
    function: Callable[..., Any],
    *args: Any,
    on_progress: Callable,
    on_result: Callable,
    on_error: Callable,
    on_aborted: Callable,
    on_finished: Callable,
):
    """Run `function(*args)` in a napari worker thread and return the started worker.

    Errors reach `on_error` rather than being re-raised in the GUI thread, so a widget can show
    them as a message; `worker.quit()` cancels at the generator's next yield (`on_aborted`).
    """
    from napari.qt.threading import create_worker

    worker = create_worker(function, *args, _start_thread=False, _ignore_errors=True)
    worker.yielded.connect(on_progress)
    worker.returned.connect(on_result)
    worker.errored.connect(on_error)
    worker.aborted.connect(on_aborted)
    worker.finished.connect(on_finished)
    worker.start()
    return worker


def in_scroll_area(owner: Any, content: Any) -> Any:
    """Show `content` (a QWidget with its layout) inside `owner` through a scroll area; returns it.

    The scroll area gives `content` at least the height its layout needs at the dock's width
    (`heightForWidth`: wrapped labels keep all their lines) and scrolls when the dock is shorter.
    """
    from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout

    scroll = QScrollArea()
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    scroll.setWidget(content)
    outer = QVBoxLayout(owner)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(scroll)
    return scroll


def wrapping_form() -> Any:
    """A QFormLayout whose fields go below their labels when the dock is too narrow for both."""
    from qtpy.QtWidgets import QFormLayout

    form = QFormLayout()
    form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
    return form


def set_enabled(button: Any, enabled: bool) -> None:
    """Enable or disable a Qt or a magicgui button."""
    getattr(button, "native", button).setEnabled(enabled)


def show_error(title: str, message: str) -> None:
    """A napari error notification `title: message`; never raises (no viewer, headless)."""
    try:
        from napari.utils.notifications import show_error as notify

        notify(f"{title}: {message}")
    except Exception:  # noqa: BLE001 - a notification must never break the widget
        pass


def show_progress(bar: Any, event: Progress) -> None:
    """Show `event` on a QProgressBar: done of total, or busy when the total is unknown."""
    if event.total:
        bar.setRange(0, int(event.total))
        bar.setValue(int(event.done))
    else:
        bar.setRange(0, 0)


class WorkerControls:
    """One widget's background worker: Run buttons, Cancel button, progress bar, re-entrancy.

    `on_progress(event)` (optional) updates the widget's own status text after the bar moved;
    `on_finished()` (optional) runs after the buttons are reset, whatever the outcome.
    `hide_bar` hides the progress bar while nothing runs.
    """

    def __init__(
        self,
        run_buttons: Sequence[Any],
        cancel_button: Any,
        progress_bar: Any,
        on_progress: Callable[[Progress], None] | None = None,
        on_finished: Callable[[], None] | None = None,
        hide_bar: bool = False,
    ):
        self.run_buttons = list(run_buttons)
        self.cancel_button = cancel_button
        self.progress_bar = progress_bar
        self.on_progress = on_progress
        self.on_finished = on_finished
        self.hide_bar = hide_bar
        self.worker: Any = None
        set_enabled(cancel_button, False)
        if hide_bar:
            progress_bar.setVisible(False)

    @property
    def is_running(self) -> bool:
        return self.worker is not None

    def start(
        self,
        function: Callable[..., Any],
        *args: Any,
        on_result: Callable[[Any], None],
        on_error: Callable[[BaseException], None],
        on_aborted: Callable[[], None],
    ) -> bool:
        """Run `function(*args)` (a progress generator) in the background; False if one runs."""
        if self.worker is not None:
            return False
        self._set_running(True)
        self.progress_bar.setRange(0, 0)
        if self.hide_bar:
            self.progress_bar.setVisible(True)
        self.worker = start_worker(
            function,
            *args,
            on_progress=self._progress,
            on_result=on_result,
            on_error=on_error,
            on_aborted=on_aborted,
            on_finished=self._finished,
        )
        return True

    def cancel(self) -> bool:
        """Ask the worker to stop at its next yield; False when nothing runs."""
        if self.worker is None:
            return False
        self.worker.quit()
        return True

    def _set_running(self, running: bool) -> None:
        for button in self.run_buttons:
            set_enabled(button, not running)
        set_enabled(self.cancel_button, running)

    def _progress(self, event: Progress) -> None:
        show_progress(self.progress_bar, event)
        if self.on_progress is not None:
            self.on_progress(event)

    def _finished(self) -> None:
        self.worker = None
        self._set_running(False)
        if self.hide_bar:
            self.progress_bar.setVisible(False)
        if self.on_finished is not None:
            self.on_finished()
