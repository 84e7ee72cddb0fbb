"""How responsive the viewer stays while the Train widget trains, and how fast Cancel stops it.

A 50 ms QTimer records the longest gap between its ticks (the worst event-loop stall a user
feels) while a tiny training runs in the Train widget's worker thread; then Cancel is pressed
and the time until the worker has stopped is measured. The epochs trained in the measured
window show what the GUI's share costs the training. Run under a display:

    xvfb-run -a python benchmarks/bench_gui_latency.py [--seconds 20] [--torch-threads N]
        [--worker-niceness N]

Prints one line per figure. Not a test: the figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="training time measured")
    parser.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument(
        "--worker-niceness", type=int, default=None, help="widgets.base.WORKER_NICENESS"
    )
    return parser.parse_args()


class GapMeter:
    """A 50 ms timer that keeps the longest interval between its ticks."""

    def __init__(self, interval_ms: int = 50):
        from qtpy.QtCore import QTimer

        self.interval = interval_ms / 1000
        self.last = time.perf_counter()
        self.worst = 0.0
        self.gaps: list[float] = []
        self.timer = QTimer()
        self.timer.timeout.connect(self._tick)
        self.timer.start(interval_ms)

    def _tick(self) -> None:
        now = time.perf_counter()
        gap = now - self.last
        self.last = now
        self.gaps.append(gap)
        self.worst = max(self.worst, gap)

    def reset(self) -> None:
        self.last, self.worst, self.gaps = time.perf_counter(), 0.0, []


def wait(condition, timeout: float) -> bool:
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + timeout
    while not condition() and time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.005)
    return condition()


def main() -> None:
    args = parse_args()
    import napari
    import torch

    from napari_allbag.data.synthetic import write_annotated_folder
    from napari_allbag.widgets import base
    from napari_allbag.widgets.train import TrainWidget

    if args.worker_niceness is not None:
        base.WORKER_NICENESS = args.worker_niceness
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_gui_"))
    data = tmp / "annotated"
    write_annotated_folder(data, n_all=40, n_hem=40, n_subjects=4, seed=2, size=96)
    viewer = napari.Viewer()
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Train ensemble")
    widget.data_edit.setText(str(data))
    widget.out_edit.setText(str(tmp / "run"))
    widget.backbone_edit.setText("test_resnet")
    widget.epochs_spin.setValue(500)
    widget.batch_spin.setValue(16)
    widget.img_size_spin.setValue(args.img_size)
    widget.crop_size_spin.setValue(args.img_size)
    widget.pretrained_check.setChecked(False)
    meter = GapMeter()
    wait(lambda: False, 1.0)
    meter.reset()
    started = time.perf_counter()
    assert widget.start(), widget.last_error
    first_epoch = wait(lambda: bool(widget._rows) or not widget.is_running, 300)
    before_epoch = meter.worst
    to_first = time.perf_counter() - started
    meter.reset()
    epochs_before = len(widget._rows)
    wait(lambda: not widget.is_running, args.seconds)
    epochs = len(widget._rows) - epochs_before
    training_worst = meter.worst
    ticks = sorted(meter.gaps)
    cancel_at = time.perf_counter()
    widget.cancel()
    wait(lambda: not widget.is_running, 120)
    cancel_latency = time.perf_counter() - cancel_at
    p95 = ticks[int(0.95 * (len(ticks) - 1))] if ticks else float("nan")
    niceness = getattr(base, "WORKER_NICENESS", None)  # None: a version before it
    print(f"torch threads: {torch.get_num_threads()}, worker niceness {niceness}")
    print(
        f"time to the first epoch: {to_first:.1f} s (reached: {first_epoch and bool(widget._rows)})"
    )
    print(f"worst event-loop gap before the first epoch: {1000 * before_epoch:.0f} ms")
    print(
        f"worst event-loop gap while training ({args.seconds:.0f} s): {1000 * training_worst:.0f} ms"
    )
    print(f"95th percentile gap while training: {1000 * p95:.0f} ms (timer 50 ms)")
    print(f"epochs trained while measured: {epochs} (the training's own speed)")
    print(f"cancel latency: {1000 * cancel_latency:.0f} ms")
    viewer.close()
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
