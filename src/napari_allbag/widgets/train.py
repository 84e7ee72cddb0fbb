"""The Train dock widget: pick an annotated folder and a run folder, press Start.

Training (`training.run.train`) runs in a napari worker thread (`widgets.base.WorkerControls`),
so the viewer stays responsive; its progress events drive the stage label, the progress bar and
live loss/accuracy curves. The worker imports the trainer and renders the curves itself
(`_LiveCurves`, at most every `CURVES_INTERVAL` seconds, the last epoch always): a matplotlib
redraw would cost the GUI thread 0.2-1 s per epoch; the GUI thread only shows the image. Cancel
stops inside the running batch (`widgets.base.TorchCancelPoints`) and keeps the last epoch's
checkpoint; Resume continues a run folder. When training ends the validation report appears,
and the new bundle goes to the Classify widget (if docked) and is remembered for the next
session.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Generator
from dataclasses import replace
from pathlib import Path
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtGui import QFont, QImage, QPixmap
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_allbag.model.networks import DEFAULT_BACKBONE
from napari_allbag.progress import Progress, retold
from napari_allbag.training.steps import step_text
from napari_allbag.widgets.base import (
    WorkerControls,
    in_scroll_area,
    show_error,
    status_label,
    wrapping_form,
)

#: The worker renders the live curves at most this often (seconds; a render costs 0.1-0.5 s).
CURVES_INTERVAL = 2.0


def _run_training(config, curves: _LiveCurves) -> Generator[Progress, None, Any]:
    """The worker's generator function: import and run the trainer in the worker thread (the
    import alone would freeze the GUI for a second), rendering the curves on the way."""
    from napari_allbag.training.run import train

    result = yield from retold(train(config), curves.see)
    last = curves.final()
    if last is not None:
        yield last
    return result


class _LiveCurves:
    """The worker's side of the live curves: the history rows so far, and an RGBA image of the
    current stage's curves attached (metrics "image") to an event when a render is due: at most
    every `interval` seconds after a new row, and once more at the end when rows came since.

    `size()` gives the view's (width, height, device pixel ratio), set by the GUI thread.
    """

    def __init__(
        self,
        rows: list[dict[str, Any]],
        size: Callable[[], tuple[int, int, float]],
        interval: float = CURVES_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.rows = list(rows)
        self.size = size
        self.interval = interval
        self.clock = clock
        self.dirty = bool(self.rows)
        self.rendered_at = -math.inf
        self.last: Progress | None = None

    def see(self, event: Progress) -> Progress:
        """`event`, with the curves image when one is due."""
        self.last = event
        row = event.metrics.get("row")
        if row:
            self.rows.append(row)
            self.dirty = True
        if self.dirty and self.clock() - self.rendered_at >= self.interval:
            return replace(event, metrics={**event.metrics, "image": self.render()})
        return event

    def final(self) -> Progress | None:
        """An event with the last rows' image, when they were not rendered yet."""
        if not self.dirty:
            return None
        last = self.last or Progress(0)
        return Progress(last.done, last.total, last.stage, last.message, {"image": self.render()})

    def render(self) -> tuple[Any, float]:
        """(RGBA array of the last stage's curves, device pixel ratio)."""
        from napari_allbag.training.curves import render_curves_rgba

        width, height, ratio = self.size()
        stage = self.rows[-1]["stage"] if self.rows else None
        current = [row for row in self.rows if row["stage"] == stage]
        image = render_curves_rgba(current, round(width * ratio), round(height * ratio), 80 * ratio)
        self.dirty, self.rendered_at = False, self.clock()
        return image, ratio


class TrainWidget(QWidget):
    """Dock widget: train the bagging ensemble on an annotated folder."""

    def __init__(self, napari_viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self._device = None
        self._rows: list[dict[str, Any]] = []
        self.result = None
        self.last_error: str | None = None

        self._build_fields()
        self._build_run_controls()
        self._build_layout()
        self._connect_signals()

    def _build_fields(self) -> None:
        """The parameter fields: folders, network, schedule, hardware."""
        self.data_edit = QLineEdit()
        self.data_edit.setPlaceholderText("folder with all/ and hem/ cells")
        self.data_browse = QPushButton("Browse…")
        self.out_edit = QLineEdit()
        self.out_edit.setPlaceholderText("new or empty folder for the run")
        self.out_browse = QPushButton("Browse…")
        self.backbone_edit = QLineEdit(DEFAULT_BACKBONE)
        self.epochs_spin = _spin(1, 1000, 50)
        self.batch_spin = _spin(0, 4096, 0, special="auto")
        self.img_size_spin = _spin(0, 2048, 0, special="backbone's")
        self.crop_size_spin = _spin(8, 2048, 299)
        self.seed_spin = _spin(0, 2**31 - 1, 0)
        self.pretrained_check = QCheckBox("ImageNet weights (download)")
        self.pretrained_check.setChecked(True)
        self.finetune_check = QCheckBox("fine-tune backbones in stage 2")
        self.init_edit = QLineEdit()
        self.init_edit.setPlaceholderText("optional: a bundle to fine-tune (warm start)")
        self.init_edit.setToolTip(
            "Fine-tune from bundle: the backbones and head start from this bundle's weights "
            "(its backbone is used when Backbone is left at the default); the new bundle "
            "records it as its parent. CLI: train --init-from BUNDLE"
        )
        self.init_browse = QPushButton("Browse…")
        self.device_combo = QComboBox()
        self.device_combo.setEditable(True)  # any torch device: cuda:1, mps, ...
        self.device_combo.addItems(["auto", "cpu", "cuda", "mps"])
        self.workers_spin = _spin(0, 256, 0, special="auto")
        self.subjects_edit = QLineEdit()
        self.subjects_edit.setPlaceholderText("optional: CSV with file,subject columns")
        self.subjects_browse = QPushButton("Browse…")

    def _build_run_controls(self) -> None:
        """Start, cancel and resume, the stage and progress, the curves and the report."""
        self.start_button = QPushButton("Start")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.resume_button = QPushButton("Resume…")
        self.stage_label = status_label()
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.curves = _CurvesView()
        self.report = QPlainTextEdit()
        self.report.setReadOnly(True)
        self.report.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.report.setFont(QFont("monospace"))
        self.report.setMinimumHeight(140)
        self.controls = WorkerControls(
            [self.start_button, self.resume_button],
            self.cancel_button,
            self.progress,
            on_progress=self._on_progress,
            on_finished=self._on_finished,
        )

    def _build_layout(self) -> None:
        """The form above the run controls, in a scroll area so the dock fits a small screen."""
        form = wrapping_form()
        form.addRow("Annotated folder", _row(self.data_edit, self.data_browse))
        form.addRow("Run folder", _row(self.out_edit, self.out_browse))
        form.addRow("Backbone", self.backbone_edit)
        form.addRow("Epochs", self.epochs_spin)
        form.addRow("Batch size", self.batch_spin)
        form.addRow("Image size", self.img_size_spin)
        form.addRow("Crop size", self.crop_size_spin)
        form.addRow("Seed", self.seed_spin)
        form.addRow("", self.pretrained_check)
        form.addRow("", self.finetune_check)
        form.addRow("Fine-tune from bundle", _row(self.init_edit, self.init_browse))
        form.addRow("Subjects CSV", _row(self.subjects_edit, self.subjects_browse))
        form.addRow("Device", self.device_combo)
        form.addRow("Workers", self.workers_spin)
        inner = QWidget()
        layout = QVBoxLayout(inner)
        layout.addLayout(form)
        layout.addLayout(_row(self.start_button, self.cancel_button, self.resume_button))
        layout.addWidget(self.stage_label)
        layout.addWidget(self.progress)
        layout.addWidget(self.curves.widget)
        layout.addWidget(self.report)
        self.scroll = in_scroll_area(self, inner)  # the dock fits a small screen: it scrolls

    def _connect_signals(self) -> None:
        """Browse buttons pick paths; Start, Cancel and Resume… run the work."""
        self.data_browse.clicked.connect(lambda: self._pick_folder(self.data_edit, "annotated"))
        self.out_browse.clicked.connect(lambda: self._pick_folder(self.out_edit, "run"))
        self.init_browse.clicked.connect(lambda: self._pick_folder(self.init_edit, "bundle"))
        self.subjects_browse.clicked.connect(self._pick_subjects)
        self.start_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.resume_button.clicked.connect(self._resume_dialog)

    # ------------------------------------------------------------------ settings

    def config(self, resume: bool = False):
        """The `TrainConfig` the fields describe."""
        from napari_allbag.training.config import TrainConfig, TrainingError

        data, out = self.data_edit.text().strip(), self.out_edit.text().strip()
        if not data or not out:
            raise TrainingError("Choose the annotated folder and a run folder first.")
        init = self.init_edit.text().strip()
        backbone = self.backbone_edit.text().strip() or DEFAULT_BACKBONE
        img_size = self.img_size_spin.value() or None
        if init and backbone == DEFAULT_BACKBONE:
            backbone, img_size = _bundle_backbone(Path(init), img_size)
        device = self.device_combo.currentText().strip()
        subjects = self.subjects_edit.text().strip()
        return TrainConfig(
            data_dir=Path(data),
            out_dir=Path(out),
            backbone=backbone,
            img_size=img_size,
            init_from=Path(init) if init else None,
            device=None if device in ("", "auto") else device,
            workers=self.workers_spin.value() or None,
            subjects_csv=Path(subjects) if subjects else None,
            pretrained=self.pretrained_check.isChecked(),
            epochs=self.epochs_spin.value(),
            batch_size=self.batch_spin.value() or None,
            crop_size=self.crop_size_spin.value(),
            seed=self.seed_spin.value(),
            finetune_backbones=self.finetune_check.isChecked(),
            resume=resume,
        )

    def _pick_folder(self, edit: QLineEdit, what: str) -> None:
        start = edit.text().strip() or str(Path.home())
        chosen = QFileDialog.getExistingDirectory(self, f"Choose the {what} folder", start)
        if chosen:
            edit.setText(chosen)

    def _pick_subjects(self) -> None:
        start = self.subjects_edit.text().strip() or str(Path.home())
        chosen, _ = QFileDialog.getOpenFileName(self, "Subjects CSV", start, "CSV (*.csv)")
        if chosen:
            self.subjects_edit.setText(chosen)

    def _resume_dialog(self) -> None:
        start = self.out_edit.text().strip() or str(Path.home())
        chosen = QFileDialog.getExistingDirectory(self, "Choose the run folder to resume", start)
        if chosen:
            self.resume_run(chosen)

    # ------------------------------------------------------------------ running

    @property
    def is_running(self) -> bool:
        return self.controls.is_running

    def start(self) -> bool:
        """Start a new run with the fields' settings; False (and a message) when it cannot."""
        from napari_allbag.training.config import TrainingError

        try:
            config = self.config()
        except TrainingError as error:
            self._show_error(str(error))
            return False
        self._rows = []
        return self._launch(config)

    def resume_run(self, run_dir: str | os.PathLike) -> bool:
        """Continue the run in `run_dir` with its own settings."""
        from napari_allbag.training.config import TrainingError, load_run_config
        from napari_allbag.training.curves import read_log

        try:
            saved = load_run_config(run_dir)
        except TrainingError as error:
            self._show_error(str(error))
            return False
        data_dir = saved.data_dir
        typed = self.data_edit.text().strip()
        if not data_dir.is_dir() and typed:
            data_dir = Path(typed)  # the data moved: use the folder typed in the widget
        self.data_edit.setText(str(data_dir))
        self.out_edit.setText(str(run_dir))
        self._show_settings(saved)
        config = saved.__class__.from_dict(
            {**saved.to_dict(), "data_dir": str(data_dir), "out_dir": str(run_dir), "resume": True}
        )
        self._rows = read_log(Path(run_dir) / "log.csv")  # the worker draws them first
        return self._launch(config)

    def _show_settings(self, config) -> None:
        self.backbone_edit.setText(config.backbone)
        self.epochs_spin.setValue(config.epochs)
        self.batch_spin.setValue(config.batch_size or 0)
        self.img_size_spin.setValue(config.img_size or 0)
        self.crop_size_spin.setValue(config.crop_size)
        self.seed_spin.setValue(config.seed)
        self.pretrained_check.setChecked(config.pretrained)
        self.finetune_check.setChecked(config.finetune_backbones)

    def _launch(self, config) -> bool:
        from napari_allbag.model.devices import select_device

        if self.controls.is_running:
            return False
        try:
            self._device = select_device(config.device)
        except ValueError as error:
            self._show_error(str(error))
            return False
        self.result = None
        self.last_error = None
        self.report.setPlainText("")
        self.stage_label.setText("starting…")
        self.curves.clear()
        return self.controls.start(
            _run_training,
            config,
            _LiveCurves(self._rows, self.curves.size),
            on_result=self._on_result,
            on_error=self._on_error,
            on_aborted=self._on_aborted,
        )

    def cancel(self) -> None:
        """Stop now (inside the running batch); the checkpoint of the last finished epoch stays."""
        if self.controls.cancel():
            self.stage_label.setText("cancelling…")

    # ------------------------------------------------------------------ events

    def _on_progress(self, event: Progress) -> None:
        text = step_text(event)  # "Step 2 of 5: segmenting 120/400", the core's numbered steps
        figures = [
            f"{key} {event.metrics[key]:.3g}"
            for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr")
            if isinstance(event.metrics.get(key), float)
        ]
        if figures:
            text += "\n" + ", ".join(figures)
        self.stage_label.setText(text)
        note = event.metrics.get("text")
        if note:
            self.report.appendPlainText(str(note))
        row = event.metrics.get("row")
        if row:
            self._rows.append(row)
        image = event.metrics.get("image")
        if image is not None:
            self.curves.show(*image)

    def _on_result(self, result) -> None:
        from napari_allbag.io.settings import remember_bundle_dir

        self.result = result
        self.report.setPlainText(result.report_text)
        f1 = result.report["weighted_f1"]["ensemble"]
        self.stage_label.setText(
            f"Done: validation weighted F1 {f1:.3f} (ensemble). Bundle: {result.bundle_path}"
        )
        remember_bundle_dir(result.bundle_path)
        classify = self.classify_widget()
        if classify is not None:
            classify.set_bundle(result.bundle_path)

    def classify_widget(self):
        """The docked Classify widget, if any."""
        from napari_allbag.widgets.classify import ClassifyWidget

        try:
            docked = dict(self.viewer.window.dock_widgets)
        except Exception:  # noqa: BLE001 - no window (headless) or an older napari
            return None
        for widget in docked.values():
            inner = getattr(widget, "native", widget)
            if isinstance(inner, ClassifyWidget):
                return inner
        return None

    def _on_error(self, error: BaseException) -> None:
        self._show_error(str(error))

    def _on_aborted(self) -> None:
        self.stage_label.setText(
            "Cancelled. Finished epochs are saved: press Resume… and choose "
            f"{self.out_edit.text().strip()} to continue."
        )

    def _on_finished(self) -> None:
        # the trainer's clean-up (memory, the run folder's lock) ran in the worker thread
        self.progress.setRange(0, 1)
        self.progress.setValue(1 if self.result is not None else 0)

    def _show_error(self, message: str) -> None:
        self.last_error = message
        self.stage_label.setText(f"Error: {message}")
        show_error("Train", message)

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        self.cancel()
        super().closeEvent(event)


class _CurvesView:
    """The live loss and accuracy curves: an image the worker rendered, in a label (the GUI
    thread never draws them). `size()` is the label's size, for the worker's next render."""

    PLACEHOLDER = "Training curves appear after the first epoch."

    def __init__(self) -> None:
        self.widget = _ImageLabel(self.PLACEHOLDER)
        self.shown = 0

    def size(self) -> tuple[int, int, float]:
        return self.widget.size_px

    def show(self, rgba: Any, ratio: float = 1.0) -> None:
        """Show an RGBA array (H x W x 4 uint8) rendered for `ratio` device pixels per pixel."""
        height, width = rgba.shape[:2]
        image = QImage(rgba.tobytes(), width, height, 4 * width, QImage.Format.Format_RGBA8888)
        image.setDevicePixelRatio(ratio)
        self.widget.show_image(image)
        self.shown += 1

    def clear(self) -> None:
        self.widget.show_image(None)


class _ImageLabel(QLabel):
    """A label showing one image, scaled to its size; keeps its size (and device pixel ratio)
    where another thread can read it."""

    def __init__(self, placeholder: str):
        super().__init__(placeholder)
        from qtpy.QtWidgets import QSizePolicy

        self.placeholder = placeholder
        self.image: QImage | None = None
        self.size_px: tuple[int, int, float] = (400, 256, 1.0)
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Ignored)
        self.setMinimumHeight(240)

    def show_image(self, image: QImage | None) -> None:
        self.image = image
        if image is None:
            self.setText(self.placeholder)
        else:
            self._fit()

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        super().resizeEvent(event)
        self.size_px = (max(1, self.width()), max(1, self.height()), self.devicePixelRatioF())
        if self.image is not None:
            self._fit()

    def _fit(self) -> None:
        pixmap = QPixmap.fromImage(self.image)
        ratio = self.image.devicePixelRatio()
        if (pixmap.width() / ratio, pixmap.height() / ratio) != (self.width(), self.height()):
            pixmap = pixmap.scaled(
                round(self.width() * ratio),
                round(self.height() * ratio),
                Qt.AspectRatioMode.KeepAspectRatio,
                Qt.TransformationMode.SmoothTransformation,
            )
            pixmap.setDevicePixelRatio(ratio)
        self.setPixmap(pixmap)


def _bundle_backbone(bundle: Path, img_size: int | None) -> tuple[str, int | None]:
    """A bundle's backbone name and image size, to fine-tune it (TrainingError when unusable)."""
    from napari_allbag.model.bundle import BundleError, read_bundle_meta
    from napari_allbag.training.run import TrainingError

    try:
        backbone = read_bundle_meta(bundle)["backbone"]
    except BundleError as error:
        raise TrainingError(f"Fine-tune from bundle: {error}") from error
    return backbone["name"], img_size or backbone.get("img_size")


def _spin(low: int, high: int, value: int, special: str | None = None) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(low, high)
    spin.setValue(value)
    if special:
        spin.setSpecialValueText(special)
    return spin


def _row(*widgets: QWidget) -> QHBoxLayout:
    row = QHBoxLayout()
    for widget in widgets:
        row.addWidget(widget)
    return row
