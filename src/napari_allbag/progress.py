"""Progress events for long work.

Long work (segmenting a folder, predicting, training) is written as a generator that yields
`Progress` events and *returns* its result. napari's `thread_worker` turns the yields into
`yielded` signals and the return value into `returned`; the CLI drives the same generator with
`drive`, which shows a tqdm bar.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


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


def drive_with_bar(work: Generator[Progress, None, T], quiet: bool = False) -> T:
    """Run a progress generator under tqdm bars (one bar per stage), for the CLI."""
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def show(event: Progress) -> None:
        if quiet:
            return
        bar = bars.get(event.stage)
        if bar is None:
            for old in bars.values():
                old.close()
            bars.clear()
            bar = bars[event.stage] = tqdm(
                total=event.total, desc=event.stage or "working", unit=""
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
