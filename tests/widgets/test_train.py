"""The Train dock widget: a tiny run in the background, cancel, resume, report, bundle hand-over."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from napari_allbag.data.synthetic import write_annotated_folder
from napari_allbag.io.images import find_images
from napari_allbag.progress import Progress, drive
from napari_allbag.segmentation.crop_cache import build_crop_cache
from napari_allbag.segmentation.dark import SegmentationParams
from napari_allbag.widgets.train import TrainWidget

TIMEOUT_MS = 180_000


@pytest.fixture(scope="module")
def annotated(tmp_path_factory) -> tuple[Path, Path]:
    """A generated annotated folder and a crop cache that already holds its crops."""
    root = tmp_path_factory.mktemp("annotated")
    write_annotated_folder(root, n_all=60, n_hem=30, n_subjects=3, seed=1, size=128)
    cache = tmp_path_factory.mktemp("cache")
    params = SegmentationParams(crop_size=64, largest_only=True)
    drive(build_crop_cache(find_images([root]), params, cache, workers=1))
    return root, cache


@pytest.fixture
def widget(make_napari_viewer, annotated, tmp_path, monkeypatch):
    data, cache = annotated
    monkeypatch.setenv("NAPARI_ALLBAG_CACHE_DIR", str(cache))
    monkeypatch.setenv("NAPARI_ALLBAG_CONFIG_DIR", str(tmp_path / "config"))
    viewer = make_napari_viewer()
    train_widget = TrainWidget(viewer)
    train_widget.data_edit.setText(str(data))
    train_widget.out_edit.setText(str(tmp_path / "run"))
    train_widget.backbone_edit.setText("test_resnet")
    train_widget.epochs_spin.setValue(2)
    train_widget.batch_spin.setValue(16)
    train_widget.img_size_spin.setValue(64)
    train_widget.crop_size_spin.setValue(64)
    train_widget.pretrained_check.setChecked(False)
    yield train_widget
    if train_widget.is_running:
        train_widget.cancel()


def _record_release(monkeypatch) -> list:
    """The devices the trainer's clean-up released (it runs in the worker thread)."""
    import threading

    from napari_allbag.model import devices
    from napari_allbag.training import run

    calls = []
    original = devices.release_memory

    def release(device=None):
        calls.append((device, threading.current_thread() is threading.main_thread()))
        original(device)

    monkeypatch.setattr(devices, "release_memory", release)
    monkeypatch.setattr(run, "release_memory", release)
    return calls


def _on_events(widget, hook) -> None:
    """Call `hook(event)` on every progress event the GUI thread gets, before the widget."""
    shown = widget.controls.on_progress
    widget.controls.on_progress = lambda event: (hook(event), shown(event))


def test_training_runs_in_the_background_and_hands_over_the_bundle(widget, qtbot, monkeypatch):
    from qtpy.QtCore import QTimer

    from napari_allbag.io.settings import last_bundle_dir
    from napari_allbag.widgets.classify import ClassifyWidget

    classify = ClassifyWidget(widget.viewer)
    widget.viewer.window.add_dock_widget(classify, name="Classify cells")
    released = _record_release(monkeypatch)
    ticks: list[int] = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start(10)
    ticks_at_epochs: list[int] = []
    kinds: list[str] = []
    _on_events(widget, lambda e: kinds.extend(key for key in ("row", "image") if key in e.metrics))
    _on_events(widget, lambda e: "row" in e.metrics and ticks_at_epochs.append(len(ticks)))

    assert widget.start()
    assert widget.is_running and not widget.start_button.isEnabled()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT_MS)
    timer.stop()

    assert widget.result is not None, widget.last_error
    # the event loop ran while training: timer ticks between the first and the last epoch
    assert len(ticks_at_epochs) >= 6 and ticks_at_epochs[-1] > ticks_at_epochs[0]
    assert "weighted avg" in widget.report.toPlainText()
    assert "Done" in widget.stage_label.text()
    bundle = widget.result.bundle_path
    assert (bundle / "bundle.json").is_file()
    assert classify.bundle_path == bundle
    assert last_bundle_dir() == bundle.resolve()
    assert released and not any(in_gui for _, in_gui in released)
    assert widget.start_button.isEnabled()
    # the worker rendered the curves, the last time after the last epoch's row
    assert widget.curves.shown >= 1 and widget.curves.widget.image is not None
    assert kinds.count("row") == len(widget._rows) == 6 and kinds[-1] == "image"


def test_cancel_keeps_the_checkpoint_and_resume_finishes(widget, qtbot, monkeypatch):
    released = _record_release(monkeypatch)
    run = Path(widget.out_edit.text())
    assert widget.start()
    qtbot.waitUntil(lambda: len(widget._rows) >= 1, timeout=TIMEOUT_MS)
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT_MS)

    assert widget.result is None
    assert "Cancelled" in widget.stage_label.text()
    assert released and not any(in_gui for _, in_gui in released)
    checkpoint = json.loads((run / "checkpoints" / "stage1-A.json").read_text())
    assert checkpoint["state"]["epoch"] >= 1
    assert not (run / "bundle").exists()

    # a new Start in the same folder must not overwrite it
    assert widget.start()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT_MS)
    assert "never overwritten" in (widget.last_error or "")

    widget.epochs_spin.setValue(7)  # the run's own settings win on resume
    assert widget.resume_run(run)
    assert widget.epochs_spin.value() == 2
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT_MS)
    assert widget.result is not None, widget.last_error
    assert (run / "bundle" / "bundle.json").is_file()
    stages = [row["stage"] for row in widget.result.history]
    assert stages.count("stage1-A") == 2 and stages.count("stage2") == 2


def test_cancel_before_the_first_epoch_stops_and_frees_the_run_folder(widget, qtbot, monkeypatch):
    """Cancel in a pre-epoch step (preprocessing, building the model) stops at the step's
    next event; the lock is released, so a new Start in the folder runs."""
    released = _record_release(monkeypatch)
    stages: list[str] = []

    def cancel_in(stage):
        def hook(event):
            stages.append(event.stage)
            if event.stage == stage:
                widget.cancel()

        return hook

    _on_events(widget, cancel_in("preprocess"))
    assert widget.start()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT_MS)
    assert "Cancelled" in widget.stage_label.text() and widget.result is None
    assert set(stages) == {"preprocess"} and released
    run = Path(widget.out_edit.text())
    assert not (run / "checkpoints" / "stage1-A.json").exists()

    widget.controls.on_progress = widget._on_progress
    _on_events(widget, cancel_in("stage1-A"))  # "building the model": before any batch
    assert widget.start(), widget.last_error  # the folder is free again
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT_MS)
    assert "Cancelled" in widget.stage_label.text(), widget.last_error
    assert stages[-1] == "stage1-A" and not (run / "checkpoints" / "stage1-A.json").exists()


def test_errors_are_shown_not_raised(widget, qtbot, tmp_path):
    widget.data_edit.setText("")
    assert not widget.start()
    assert "Choose the annotated folder" in widget.last_error
    widget.data_edit.setText(str(tmp_path / "missing"))
    assert widget.start()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT_MS)
    assert "not found" in widget.last_error
    assert not widget.resume_run(tmp_path / "not_a_run")
    assert "Nothing to resume" in widget.last_error


def test_fine_tune_device_workers_and_subjects_fields(make_napari_viewer, tmp_path):
    from tests.model_factory import TINY_BACKBONE, TINY_SIZE, make_tiny_bundle

    bundle = make_tiny_bundle(tmp_path / "parent", seed=4)
    widget = TrainWidget(make_napari_viewer())
    widget.data_edit.setText(str(tmp_path / "data"))
    widget.out_edit.setText(str(tmp_path / "run"))
    config = widget.config()
    assert config.init_from is None and config.device is None and config.workers is None
    widget.init_edit.setText(str(bundle))
    widget.device_combo.setCurrentText("cpu")
    widget.workers_spin.setValue(3)
    widget.subjects_edit.setText(str(tmp_path / "subjects.csv"))
    config = widget.config()
    assert config.init_from == bundle and config.device == "cpu" and config.workers == 3
    assert config.subjects_csv == tmp_path / "subjects.csv"
    assert (config.backbone, config.img_size) == (TINY_BACKBONE, TINY_SIZE)  # the bundle's
    assert widget.minimumSizeHint().height() < 1000  # the fields scroll in a small dock


def test_the_stage_label_says_the_core_s_numbered_steps(make_napari_viewer):
    from napari_allbag.training.steps import BUILD, SCAN, TRAIN, numbered

    widget = TrainWidget(make_napari_viewer())
    widget._on_progress(numbered(SCAN)(Progress(0, None, "preprocess", "scanning /data")))
    assert widget.stage_label.text() == "Step 1 of 5: scanning /data"
    widget._on_progress(numbered(BUILD)(Progress(0, None, "stage1-A", "building model-A")))
    assert widget.stage_label.text() == "Step 4 of 5: building model-A"
    widget._on_progress(numbered(TRAIN)(Progress(1, 10, "stage1-A", "epoch 1/2")))
    assert widget.stage_label.text() == "Step 5 of 5: Stage 1: model-A — epoch 1/2"


def test_every_step_before_the_first_epoch_is_shown_in_order(widget, qtbot):
    shown: list[str] = []
    real_set_text = widget.stage_label.setText
    widget.stage_label.setText = lambda text: (shown.append(text), real_set_text(text))
    assert widget.start()
    qtbot.waitUntil(lambda: any("— epoch 1/2" in text for text in shown), timeout=TIMEOUT_MS)
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT_MS)

    steps = [text for text in shown if text.startswith("Step ")]
    numbers = [int(text.split()[1]) for text in steps]
    assert numbers == sorted(numbers) and set(numbers) == {1, 2, 3, 4, 5}
    assert all(" of 5: " in text for text in steps)
    expected = [
        f"Step 1 of 5: scanning {widget.data_edit.text()}",
        f"Step 1 of 5: scanning {widget.data_edit.text()} (90 images)",
        "Step 2 of 5: reading files",
        "Step 2 of 5: segmenting 90/90",
        "Step 3 of 5: caching crops: 90 cells, splitting by subject",
        "Step 4 of 5: building model-A (test_resnet, random weights)",
        "Step 5 of 5: Stage 1: model-A — starting the first batch",
        "Step 5 of 5: Stage 1: model-A — epoch 1/2",
    ]
    positions = [next(i for i, text in enumerate(steps) if text.startswith(e)) for e in expected]
    assert positions == sorted(positions), steps
