"""Progress events for long work.

Long work (segmenting a folder, predicting, training) is written as a generator that yields
`Progress` events and *returns* its result. napari's `thread_worker` turns the yields into
`yielded` signals and the return value into `returned`; the CLI drives the same generator with
`drive`, which shows a tqdm bar.
`drive_with_bar` shows tqdm bars on a terminal; where its stream is not a terminal (CI, SLURM,
`nohup`, a pipe) it prints plain lines instead: one when a stage starts, one every
`LOG_PERCENT_STEP` percent of it, one when it ends (stages without a total: every
`LOG_SECONDS` seconds), so a log file reads line by line without carriage-return updates.
`Pacer` thins the events for a GUI (a counter at most every `GUI_INTERVAL` seconds, but every
milestone), and `retold` passes a generator's events through a function, keeping its result.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, TextIO, TypeVar

T = TypeVar("T")

#: Outside a terminal: a progress line every this many percent of a stage.
LOG_PERCENT_STEP = 10
#: Outside a terminal, for stages without a total: a line at most this often (seconds).
LOG_SECONDS = 30.0
#: A GUI is shown a counting event at most this often (seconds); milestones always.
GUI_INTERVAL = 0.1
#: Metrics that make an event a milestone: text for a report, a history row, a rendered image.
MILESTONE_METRICS = ("text", "row", "image")


@dataclass
class Progress:
    """One step of long work: `done` of `total` units of `stage`, plus live figures."""

    done: int
    total: int | None = None
    stage: str = ""
    message: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(1.0, self.done / self.total)


def drive(
    work: Generator[Progress, None, T], on_progress: Callable[[Progress], None] | None = None
) -> T:
    """Run a progress generator to the end, calling `on_progress` on each event; return its result."""
    while True:
        try:
            event = next(work)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(event)


def retold(
    work: Generator[Progress, None, T], change: Callable[[Progress], Progress]
) -> Generator[Progress, None, T]:
    """`work`'s events passed through `change`, and its result; closing this closes `work`."""
    try:
        while True:
            try:
                event = next(work)
            except StopIteration as stop:
                return stop.value
            yield change(event)
    finally:
        work.close()


class Pacer:
    """Thins progress events for a GUI, whose every update costs the event loop time.

    A counting event (same stage, a total, not the last step) passes at most every `interval`
    seconds; the others wait in `pending`, replaced by newer ones, so `flush` gives the last
    one at the end. Milestones always pass: a new stage or a new numbered step (metrics `step`,
    as training's "Step 2 of 5"), a busy step (no total, e.g. "building the model": the GUI
    must say so while it lasts), a stage's last step, and events carrying `MILESTONE_METRICS`.
    A counter shown is therefore at most one step behind the work.
    """

    def __init__(self, interval: float = GUI_INTERVAL, clock: Callable[[], float] = time.monotonic):
        self.interval = float(interval)
        self.clock = clock
        self.pending: Progress | None = None
        self._stage: str | None = None
        self._step: Any = None
        self._shown_at = -float("inf")

    def is_milestone(self, event: Progress) -> bool:
        return (
            event.stage != self._stage
            or event.metrics.get("step") != self._step
            or not event.total
            or event.done >= event.total
            or any(key in event.metrics for key in MILESTONE_METRICS)
        )

    def offer(self, event: Progress) -> Progress | None:
        """`event` when it should be shown now, else None (it waits as `pending`)."""
        now = self.clock()
        if self.is_milestone(event) or now - self._shown_at >= self.interval:
            self.pending, self._stage, self._shown_at = None, event.stage, now
            self._step = event.metrics.get("step")
            return event
        self.pending = event
        return None

    def flush(self) -> Progress | None:
        """The event held back last (None when the last one was shown)."""
        event, self.pending = self.pending, None
        return event


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def drive_with_bar(
    work: Generator[Progress, None, T], quiet: bool = False, stream: TextIO | None = None
) -> T:
    """Run a progress generator under tqdm bars (one bar per stage) on `stream` (default
    stderr), for the CLI; plain log lines instead when `stream` is not a terminal."""
    stream = sys.stderr if stream is None else stream
    if quiet:
        return drive(work)
    if not _is_terminal(stream):
        return drive(work, LogLines(stream).show)
    return _drive_with_tqdm(work, stream)


def _drive_with_tqdm(work: Generator[Progress, None, T], stream: TextIO) -> T:
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def show(event: Progress) -> None:
        bar = bars.get(event.stage)
        if bar is None:
            for old in bars.values():
                old.close()
            bars.clear()
            bar = bars[event.stage] = tqdm(
                total=event.total, desc=event.stage or "working", unit="", file=stream
            )
        if event.total is not None and bar.total != event.total:
            bar.total = event.total
        bar.n = event.done
        postfix = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in event.metrics.items()}
        if event.message:
            postfix["info"] = event.message
        bar.set_postfix(postfix, refresh=False)
        bar.refresh()

    try:
        return drive(work, show)
    finally:
        for bar in bars.values():
            bar.close()


def _details(event: Progress) -> str:
    parts = [
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in event.metrics.items()
    ]
    if event.message:
        parts.append(event.message)
    return (" " + ", ".join(parts)) if parts else ""


class LogLines:
    """Progress as plain lines for logs: a stage's start, every `percent_step` %, its end."""

    def __init__(self, stream: TextIO, percent_step: int = LOG_PERCENT_STEP):
        self.stream = stream
        self.step = max(1, int(percent_step))
        self.stage: str | None = None
        self.next_percent = 0
        self.last_line = 0.0

    def show(self, event: Progress) -> None:
        if event.stage != self.stage:
            self.stage, self.next_percent = event.stage, self.step
            self._print(event)
            return
        if event.total:
            percent = 100 * event.done / event.total
            if percent >= self.next_percent or event.done >= event.total:
                self.next_percent = (int(percent) // self.step + 1) * self.step
                self._print(event)
        elif time.monotonic() - self.last_line >= LOG_SECONDS:
            self._print(event)

    def _print(self, event: Progress) -> None:
        clock = time.strftime("%H:%M:%S")
        count = (
            f"{event.done}/{event.total} ({100 * event.done / event.total:.0f}%)"
            if (event.total)
            else f"{event.done}"
        )
        print(
            f"[{clock}] {event.stage or 'working'}: {count}{_details(event)}",
            file=self.stream,
            flush=True,
        )
        self.last_line = time.monotonic()
