"""The worker lifecycle every dock widget shares: start a core generator in napari's worker
thread, drive the progress bar, Cancel, show errors, and refuse a second Run while one runs.

`WorkerControls` is held by a widget (Segment, Classify, Train): the widget gathers its
parameters, calls `controls.start(generator_function, *args, on_result=...)`, and keeps only what
is its own (the status text, the layers). The Run buttons are disabled and Cancel enabled while
the worker runs; the bar shows the events' done/total (busy when the total is unknown).
`in_scroll_area` puts a dock's content in a scroll area, so a short screen scrolls it rather than
squeezing its rows (a squeezed word-wrapped label shows one clipped line); `wrapping_form` is a
form that puts a field below its label in a narrow dock.

What keeps the viewer responsive (benchmarks/bench_gui_latency.py): the worker thread creates,
runs and closes the generator itself (so imports, clean-up and garbage collection never run in
the GUI thread); it hands the GUI only the events a `progress.Pacer` lets through (a counter at
most 10 times a second, every milestone, the last one at the end), so the event loop is not
flooded by per-batch events (its scheduling priority can be lowered: `WORKER_NICENESS`, off by
default, see its note). Cancel sets a flag the worker reads after every event of
the generator (per batch while training), closes the generator there and reports "aborted";
once the work has imported torch, the flag is also read inside its computations
(`TorchCancelPoints`: before each module's forward and at each module's gradient), so a batch
of a large model on the CPU (seconds) does not delay Cancel.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Generator, Sequence
from typing import Any

from napari_allbag.progress import Pacer, Progress

#: The worker threads' niceness (Linux; 0: unchanged). Measured (docs/benchmarks.md): 10 did
#: not shorten the GUI's stalls on a busy machine but slowed the work and Cancel, so it is off.
WORKER_NICENESS = 0


class _Cancelled:
    """What a worker returns when Cancel stopped it."""


CANCELLED = _Cancelled()


def lower_thread_priority(niceness: int | None = None) -> bool:
    """Lower the calling thread's priority to `niceness` (default `WORKER_NICENESS`; Linux:
    per-thread niceness); False where it cannot.

    Threads the calling thread starts later (torch's pool) inherit it. Never raised again: a
    pool thread stays a background thread.
    """
    niceness = WORKER_NICENESS if niceness is None else niceness
    native_id = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, native_id)
        if current < niceness:
            os.setpriority(os.PRIO_PROCESS, native_id, niceness)
        return True
    except (AttributeError, OSError):  # not Linux, or not allowed
        return False


class _Stopped(BaseException):
    """Raised inside the work's torch computation when Cancel was pressed (a BaseException, so
    `except Exception` in the work does not take it for a failure of one item)."""


class TorchCancelPoints:
    """Cancel inside torch: global module hooks that raise `_Stopped` once `cancel` is set,
    before each module's forward in the installing thread, and in backward at the gradient of
    each module output that thread made. Installed once torch has been imported. Raises once:
    the work's clean-up (finally blocks) may then use torch as usual."""

    def __init__(self, cancel: threading.Event):
        self.cancel = cancel
        self.thread = threading.get_ident()
        self.handles: list[Any] = []
        self.raised = False

    def install(self) -> None:
        if self.handles or "torch" not in sys.modules:
            return
        from torch.nn.modules import module

        self.handles = [
            module.register_module_forward_pre_hook(self._before_forward),
            module.register_module_forward_hook(self._after_forward),
        ]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def _ours(self) -> bool:
        return threading.get_ident() == self.thread

    def _stop(self) -> None:
        if self.cancel.is_set() and not self.raised:
            self.raised = True
            raise _Stopped

    def _before_forward(self, module: Any, args: Any) -> None:
        if self._ours():
            self._stop()

    def _after_forward(self, module: Any, args: Any, output: Any) -> None:
        if getattr(output, "requires_grad", False) and self._ours():
            output.register_hook(self._at_gradient)  # runs in autograd's thread: no thread check

    def _at_gradient(self, grad: Any) -> None:
        self._stop()


def paced_run(
    function: Callable[..., Generator[Progress, None, Any]],
    args: tuple,
    cancel: threading.Event,
    pacer: Pacer,
) -> Generator[Progress, None, Any]:
    """The worker thread's generator: run `function(*args)` here, pass on the events `pacer`
    lets through (its last one at the end), stop at the first event after `cancel` is set.

    Returns the function's result, or `CANCELLED`; the function's generator is closed in this
    thread either way, so its clean-up never runs in the GUI thread.
    """
    lower_thread_priority()
    if cancel.is_set():
        return CANCELLED
    work = function(*args)
    points = TorchCancelPoints(cancel)
    try:
        while True:
            points.install()
            try:
                event = next(work)
            except StopIteration as stop:
                last = pacer.flush()
                if last is not None:
                    yield last
                return stop.value
            except _Stopped:
                return CANCELLED
            if cancel.is_set():
                return CANCELLED
            shown = pacer.offer(event)
            if shown is not None:
                yield shown
    finally:
        points.remove()  # the work's clean-up may use torch
        work.close()


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
    them as a message; `worker.quit()` stops calling the generator at its next yield
    (`on_aborted`; the generator is left suspended: `WorkerControls` cancels its own way).
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


def status_label() -> Any:
    """A status line for a dock: wraps at the dock's width and is always as tall as its text.

    napari's dock does not pass the dock's width down as a height (no `heightForWidth`), so a
    plain wrapped QLabel kept the height of its first short text, and a run's long warning
    showed as two half-cut lines (a Segment widget screenshot under Xvfb). This one sets its
    minimum height from its text whenever the text or its width changes. `value` is its text,
    as for the magicgui Label it replaces.
    """
    from qtpy.QtWidgets import QLabel, QSizePolicy

    class StatusLabel(QLabel):
        def __init__(self) -> None:
            super().__init__("")
            self.setWordWrap(True)  # a long warning must not widen the dock
            self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Minimum)

        @property
        def value(self) -> str:
            return self.text()

        @value.setter
        def value(self, text: str) -> None:
            self.setText(text)

        def setText(self, text: str) -> None:  # noqa: N802 - Qt's name
            super().setText(text)
            self._fit()

        def resizeEvent(self, event) -> None:  # noqa: N802 - Qt's name
            super().resizeEvent(event)
            self._fit()

        def _fit(self) -> None:
            height = self.heightForWidth(max(1, self.width()))
            if height > 0 and height != self.minimumHeight():
                self.setMinimumHeight(height)
                _relayout_parent(self)

    return StatusLabel()


def _relayout_parent(widget: Any) -> None:
    """Lay out `widget`'s parent again now. Inside a scroll area (`in_scroll_area`) the
    layout did not rerun when a status grew to four lines, so the rows below it were drawn over
    its text (a Classify screenshot under Xvfb); the scroll area then sizes its content anew."""
    parent = widget.parentWidget()
    layout = parent.layout() if parent is not None else None
    if layout is not None:
        layout.invalidate()
        layout.activate()


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
    `hide_bar` hides the progress bar while nothing runs. `succeeded`: whether the last job
    returned a result that `on_result` took without raising (False after Cancel or an error).
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
        self.succeeded = False
        self._cancel = threading.Event()
        self._gone = False  # the widgets were destroyed (their window closed)
        set_enabled(cancel_button, False)
        if hide_bar:
            progress_bar.setVisible(False)
        progress_bar.destroyed.connect(self._widgets_gone)

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
        """Run `function(*args)` (a progress generator function) in the background, its events
        paced for the GUI (see the module doc); False if one runs."""
        if self.worker is not None:
            return False
        self._set_running(True)
        self.succeeded = False
        self.progress_bar.setRange(0, 0)
        if self.hide_bar:
            self.progress_bar.setVisible(True)
        self._cancel = threading.Event()

        def returned(value: Any) -> None:
            if self._gone:
                return
            if value is CANCELLED:
                on_aborted()
            else:
                on_result(value)
                self.succeeded = True

        self.worker = start_worker(
            paced_run,
            function,
            args,
            self._cancel,
            Pacer(),
            on_progress=self._progress,
            on_result=returned,
            on_error=lambda error: None if self._gone else on_error(error),
            on_aborted=lambda: None if self._gone else on_aborted(),
            on_finished=self._finished,
        )
        return True

    def _widgets_gone(self, *_: Any) -> None:
        """The widgets are being destroyed (the napari window closed) while a job may run:
        stop the job (its clean-up, such as releasing a run folder's lock, runs in its thread)
        and let none of its later events reach them. Closing napari during training used to
        end in "Aborted": a progress event touched the deleted bar, and PyQt aborts the process
        on an exception in a slot."""
        self._gone = True
        self._cancel.set()

    def cancel(self) -> bool:
        """Ask the worker to stop after the generator's next event; False when nothing runs."""
        if self.worker is None:
            return False
        self._cancel.set()
        return True

    def _set_running(self, running: bool) -> None:
        for button in self.run_buttons:
            set_enabled(button, not running)
        set_enabled(self.cancel_button, running)

    def _progress(self, event: Progress) -> None:
        if self._gone:
            return
        show_progress(self.progress_bar, event)
        if self.on_progress is not None:
            self.on_progress(event)

    def _finished(self) -> None:
        self.worker = None
        if self._gone:
            return
        self._set_running(False)
        if self.hide_bar:
            self.progress_bar.setVisible(False)
        if self.on_finished is not None:
            self.on_finished()
