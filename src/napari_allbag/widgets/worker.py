"""Start a progress generator in napari's worker thread, wired to a widget's handlers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


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
