"""The Classify dock widget: tag every cell of an image ALL or HEM with a model bundle.

Pick a bundle folder (the last one is remembered) and a layer: an Image layer (the widget segments
it with the bundle's segmentation parameters) or the "cells" Labels layer of the Segment widget
(its "cell crops" layer is used when it matches, otherwise the crops are cut again from the image).
Run works in a background worker (progress, Cancel). The result: the "cells" layer coloured by class,
a "cell classes" Points layer showing label and confidence at each cell, the features table gaining
p_all_model_a, p_all_model_b, p_all_combined, label and confidence, a summary line, Export CSV.
The model (and its GPU memory) is released when another bundle is chosen or the widget closes.

Classify folder runs every image of a folder as `napari-allbag predict` does (`inference.folder`):
progress, Cancel, a results CSV (`<folder>/allbag-results.csv` or a chosen file; a cancelled run
keeps its rows as `<csv>.partial`) and the per-image summary `<csv stem>.images.csv` beside it
(a NaN probability stops the run, as in `predict`), with an Overlays folder each image drawn as
`predict --overlays` draws it, then lists the run's images; "Open with results" adds one with
its `cells [name]` and `classes [name]` layers, as a single Run makes them.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_allbag.defaults import BACKGROUND_HELP, BACKGROUND_MODES, ENSEMBLE_RULES
from napari_allbag.io.atomic import atomic_path
from napari_allbag.progress import Progress
from napari_allbag.widgets.base import (
    WorkerControls,
    in_scroll_area,
    show_error,
    status_label,
    wrapping_form,
)
from napari_allbag.widgets.results import (
    ALL_COLOUR,
    CELLS,
    CLASSES,
    CORRECTED_COLOUR,
    CROPS,
    CROPS_KEY,
    FLAGGED_COLOUR,
    HEM_COLOUR,
    SOURCE_KEY,
    SUMMARY_KEY,
    cell_colours,
    cell_summary,
    corrected_mask,
    find_result,
    flagged_mask,
    hide_labels_when_crowded,
    image_of,
    is_result,
    legend_html,
    mark_result,
    place_above,
    result_metadata,
    result_name,
)

CELLS_LAYER, CROPS_LAYER, CLASSES_LAYER = CELLS, CROPS, CLASSES  # a layer is `cells [image]`
#: The rule choice that keeps the bundle's own rule.
BUNDLE_RULE = "bundle's rule"
#: The background choice that keeps the bundle's own segmentation mode.
BUNDLE_BACKGROUND = "bundle's"
#: Text size of the label and confidence shown at each cell (points).
TEXT_SIZE = 12
#: The class dot at each cell: this fraction of the cells' median diameter, 2 to 8 pixels (a
#: fixed 8 px dot hid the whole nucleus of a 20 px white cell in a low-resolution smear).
MARKER_FRACTION = 0.15


class _ModelHolder:
    """The loaded bundle, kept apart from the Qt object so it can be released after destruction."""

    def __init__(self) -> None:
        self.bundle: Any = None
        self.path: Path | None = None

    def release(self) -> None:
        if self.bundle is None:
            return
        from napari_allbag.model.devices import release_memory

        device = self.bundle.device
        self.bundle = None
        self.path = None
        release_memory(device)


@dataclass
class _Job:
    """What one Run needs, gathered on the GUI thread."""

    bundle_path: Path
    device: Any
    image: np.ndarray | None  # RGB uint8, when cells must be found or cut again
    labels: np.ndarray | None  # existing cells layer data
    table: dict[str, np.ndarray] | None  # existing features (column -> values)
    crops: np.ndarray | None  # matching "cell crops", when usable
    source: str
    background: str | None = None  # the segmentation's mode (None: the bundle's)
    rule: str | None = None  # the ensemble rule (None: the bundle's)
    tta: bool = False  # test-time augmentation (8 views)


def _classify_job(holder: _ModelHolder, job: _Job) -> Generator[Progress, None, Any]:
    """Load the bundle (if needed), then the one pipeline on the image or on the given cells
    (runs in a worker thread); returns `inference.pipeline.ImagePredictions`."""
    from napari_allbag.inference.pipeline import PipelineOptions, classify_image, classify_labels

    bundle = yield from _loaded(holder, job.bundle_path, job.device)
    options = PipelineOptions(background=job.background, rule=job.rule, tta=job.tta)
    if job.labels is None:
        return (yield from classify_image(bundle, job.image, options, job.source))
    return (
        yield from classify_labels(bundle, job.image, job.labels, job.table, job.crops, options)
    )


def _loaded(holder: _ModelHolder, path: Path, device: Any) -> Generator[Progress, None, Any]:
    """The holder's bundle, loaded from `path` first when another (or none) is held."""
    from napari_allbag.model.bundle import load_bundle

    if holder.bundle is None or holder.path != path:
        yield Progress(0, None, "loading model", str(path))
        holder.release()
        holder.bundle = load_bundle(path, device)
        holder.path = path
    return holder.bundle


@dataclass
class _FolderJob:
    """What "Classify folder" needs; `work` is the core run once the bundle is loaded."""

    bundle_path: Path
    device: Any
    folder: Path
    out: Path
    options: Any
    overlays: Path | None = None  # a folder for overlay PNGs, where asked for
    work: Any = None  # inference.folder.FolderClassification


def _folder_job(holder: _ModelHolder, job: _FolderJob) -> Generator[Progress, None, Any]:
    """Load the bundle, then classify the folder (worker thread); returns a `FolderRun`."""
    from napari_allbag.inference.folder import FolderClassification

    bundle = yield from _loaded(holder, job.bundle_path, job.device)
    job.work = FolderClassification(bundle, job.folder, job.out, job.options, job.overlays)
    yield Progress(0, len(job.work.paths), "classifying folder", f"{len(job.work.paths)} images")
    return (yield from job.work.run())


def _reopen_job(holder: _ModelHolder, bundle_path: Path, device: Any, item: Any, options: Any):
    """Load the bundle (if needed) and reopen one image of a folder run (worker thread)."""
    from napari_allbag.inference.folder import reopen_image

    bundle = yield from _loaded(holder, bundle_path, device)
    return (yield from reopen_image(bundle, item, options))


def _cell_ids(table: dict[str, Any], labels: np.ndarray) -> np.ndarray:
    from napari_allbag.inference.pipeline import cell_ids

    return cell_ids(table, labels)


class ClassifyWidget(QWidget):
    """Dock widget: classify the cells of an image layer with a model bundle."""

    def __init__(self, napari_viewer, parent: QWidget | None = None):
        super().__init__(parent)
        from napari_allbag.io.settings import last_bundle_dir
        from napari_allbag.model.devices import device_description, select_device

        self.viewer = napari_viewer
        self._holder = _ModelHolder()
        self._table: Any = None  # pandas DataFrame of the last result
        self._found_afresh = False  # whether the running job segments the image itself
        self.device = select_device()

        self._build_model_controls()
        self.device_label = QLabel(f"Device: {device_description(self.device)}")
        self._build_run_controls()
        folder_rows = self._build_folder_controls()
        self.controls = WorkerControls(
            [self.run_button, self.folder_button, self.open_button],
            self.cancel_button,
            self.progress,
            on_progress=self._on_progress,
            on_finished=self._on_finished,
        )

        self._lay_out(folder_rows)

        self._connect_signals()

        remembered = last_bundle_dir()
        if remembered is not None and (remembered / "bundle.json").is_file():
            self.set_bundle(remembered, remember=False)

    def _build_model_controls(self) -> None:
        """The bundle picker and the classification options: layer, rule, TTA, background."""
        self.bundle_edit = QLineEdit()
        self.bundle_edit.setPlaceholderText("model bundle folder (bundle.json + .safetensors)")
        self.browse_button = QPushButton("Browse…")
        self.bundle_info = status_label()
        self.layer_combo = QComboBox()
        self.rule_combo = QComboBox()
        self.rule_combo.addItems([BUNDLE_RULE, *ENSEMBLE_RULES])
        self.rule_combo.setToolTip(
            "max: the paper's (highest of the six probabilities); mean of the three models; "
            "agree: A and B where they agree, else the combined model; combined alone"
        )
        self.tta_check = QCheckBox("Test-time augmentation (8 views)")
        self.tta_check.setToolTip(
            "averages the 8 flips and rotations of each crop: about 8x slower"
        )
        self.heatmap_button = QPushButton("Show heatmap of selected cell")
        self.heatmap_button.setToolTip("Grad-CAM of the combined model's evidence for ALL")
        self.background_combo = QComboBox()
        self.background_combo.addItems([BUNDLE_BACKGROUND, *BACKGROUND_MODES])
        self.background_combo.setToolTip(
            f"segmentation of an image layer: {BACKGROUND_HELP}; {BUNDLE_BACKGROUND}: the "
            "bundle's own setting"
        )

    def _build_run_controls(self) -> None:
        """Run and Cancel, the progress, the status, summary and legend, the export."""
        self.run_button = QPushButton("Run")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status = status_label()
        self.summary = status_label()
        self.legend = QLabel(legend_html())
        self.legend.setWordWrap(True)  # its entries go onto a second line in a narrow dock
        self.legend.setToolTip("outline colours: class, corrected by you, flagged for review")
        self.export_button = QPushButton("Export CSV…")
        self.export_button.setEnabled(False)

    def _connect_signals(self) -> None:
        """Buttons to their actions; the layer list follows the viewer's layers."""
        self.browse_button.clicked.connect(self._browse)
        self.bundle_edit.editingFinished.connect(lambda: self.set_bundle(self.bundle_edit.text()))
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.export_button.clicked.connect(self._export_dialog)
        self.heatmap_button.clicked.connect(self._heatmap_clicked)
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self.viewer.layers.selection.events.active.connect(self._follow_active)
        self.layer_combo.currentTextChanged.connect(self._show_summary)
        for layer in self.viewer.layers:
            layer.events.name.connect(self._refresh_layers)
        holder = self._holder
        self.destroyed.connect(lambda *_: holder.release())
        self._refresh_layers()

    def _lay_out(self, folder_rows: QFormLayout) -> None:
        """Bundle and options form, Run/Cancel, progress, results, then the folder section, in a
        scroll area."""
        bundle_row = QHBoxLayout()
        bundle_row.addWidget(self.bundle_edit)
        bundle_row.addWidget(self.browse_button)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        form = wrapping_form()
        form.addRow("Bundle", bundle_row)
        form.addRow(self.bundle_info)  # its own row, both columns wide: it wraps, never clipped
        form.addRow("Layer", self.layer_combo)
        form.addRow("Background", self.background_combo)
        form.addRow("Rule", self.rule_combo)
        form.addRow(self.tta_check)
        content = QWidget()
        layout = QVBoxLayout(content)
        layout.addLayout(form)
        layout.addWidget(self.device_label)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.summary)
        layout.addWidget(self.legend)
        layout.addWidget(self.export_button)
        layout.addWidget(self.heatmap_button)
        layout.addLayout(folder_rows)
        layout.addStretch(1)
        self.scroll = in_scroll_area(self, content)  # a short dock scrolls, no row is squeezed

    def _build_folder_controls(self) -> QFormLayout:
        """Folder, results CSV, "Classify folder", and the run's images to open."""
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("folder of images (searched recursively)")
        self.folder_browse = QPushButton("Browse…")
        self.results_edit = QLineEdit()
        self.results_edit.setPlaceholderText("results CSV (default: <folder>/allbag-results.csv)")
        self.overlays_edit = QLineEdit()
        self.overlays_edit.setPlaceholderText("folder for overlay PNGs (optional; not inside it)")
        self.overlays_edit.setToolTip(
            "each image with its cells outlined and tagged, as predict --overlays writes them"
        )
        self.folder_button = QPushButton("Classify folder")
        self.run_images = QComboBox()
        self.run_images.setToolTip("the images of the last folder run")
        self.open_button = QPushButton("Open with results")
        self.open_button.setEnabled(False)
        folder_row = QHBoxLayout()
        folder_row.addWidget(self.folder_edit)
        folder_row.addWidget(self.folder_browse)
        open_row = QHBoxLayout()
        open_row.addWidget(self.run_images, 1)
        open_row.addWidget(self.open_button)
        form = wrapping_form()
        form.addRow("Folder", folder_row)
        form.addRow("Results", self.results_edit)
        form.addRow("Overlays", self.overlays_edit)
        form.addRow("", self.folder_button)
        form.addRow("Run's images", open_row)
        self.folder_browse.clicked.connect(self._browse_folder)
        self.folder_button.clicked.connect(self.classify_folder)
        self.open_button.clicked.connect(lambda: self.open_run_image())
        self._folder_run: Any = None  # inference.folder.FolderRun of the last folder run
        self._folder_job: _FolderJob | None = None
        return form

    # ------------------------------------------------------------------ bundle

    @property
    def bundle_path(self) -> Path | None:
        text = self.bundle_edit.text().strip()
        return Path(text).expanduser() if text else None

    def set_bundle(self, path: str | os.PathLike, remember: bool = True) -> bool:
        """Choose a bundle folder (e.g. one the Train widget just wrote); False when unusable.

        The previous model is released at once; the new one loads when Run is pressed.
        """
        from napari_allbag.io.settings import remember_bundle_dir
        from napari_allbag.model.bundle import BundleError, read_bundle_meta

        path = Path(path).expanduser()
        if self._holder.path is not None and self._holder.path != path:
            self._holder.release()
        self.bundle_edit.setText(str(path))
        try:
            meta = read_bundle_meta(path)
        except BundleError as error:
            self.bundle_info.setText(f"<b>Not usable:</b> {error}")
            return False
        backbone = meta.get("backbone", {})
        crop = (meta.get("segmentation") or {}).get("crop_size")
        info = f"{backbone.get('name')} at {backbone.get('img_size')} px"
        if crop and crop != backbone.get("img_size"):
            info += f" (crops {crop} px)"
        created = meta.get("created")
        if created:
            info += f", made {created[:10]}"
        f1 = _validation_f1(meta.get("metrics") or {})
        if f1 is not None:
            info += f", validation weighted F1 {f1:.3f}"
        self.bundle_info.setText(info)
        if remember:
            remember_bundle_dir(path)
        return True

    def _browse(self) -> None:
        start = str(self.bundle_path or Path.home())
        chosen = QFileDialog.getExistingDirectory(self, "Choose a model bundle folder", start)
        if chosen:
            self.set_bundle(chosen)

    def release_model(self) -> None:
        """Drop the loaded model and give its (GPU) memory back."""
        self._holder.release()

    # ------------------------------------------------------------------ layers

    def _candidate_layers(self) -> list[Any]:
        from napari.layers import Image, Labels

        names = []
        for layer in self.viewer.layers:
            if isinstance(layer, Labels) and _is_cells_layer(layer):
                names.append(layer)
            elif isinstance(layer, Image) and not is_result(layer) and layer.name != CROPS_LAYER:
                names.append(layer)
        return names

    def _follow_active(self, event=None) -> None:
        """Pick the active layer's image: its cells layer when it has one, else the image."""
        image = image_of(self.viewer, self.viewer.layers.selection.active)
        if image is None:
            return
        cells = find_result(self.viewer, CELLS, image.name)
        wanted = cells.name if cells is not None else image.name
        if self.layer_combo.findText(wanted) >= 0:
            self.layer_combo.setCurrentText(wanted)

    def image_name(self) -> str | None:
        """The name of the image the picked layer is or belongs to."""
        name = self.layer_combo.currentText()
        if not name or name not in self.viewer.layers:
            return None
        layer = self.viewer.layers[name]
        if is_result(layer):
            return layer.metadata.get(SOURCE_KEY)
        from napari.layers import Labels

        if isinstance(layer, Labels):
            source = self._source_image(layer)
            return source.name if source is not None else None
        return name

    def _show_summary(self, _text: str = "") -> None:
        """The summary of the picked image's cells (empty before it was classified)."""
        name = self.image_name()
        cells = find_result(self.viewer, CELLS, name) if name else None
        self.summary.setText(cells.metadata.get(SUMMARY_KEY, "") if cells is not None else "")

    def _refresh_layers(self, event=None) -> None:
        current = self.layer_combo.currentText()
        if event is not None and getattr(event, "type", "") == "inserted":
            event.value.events.name.connect(self._refresh_layers)
            if _is_cells_layer(event.value):
                current = event.value.name  # fresh Segment widget output: the recommended input
        names = [layer.name for layer in self._candidate_layers()]
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        self.layer_combo.addItems(names)
        if current in names:
            self.layer_combo.setCurrentText(current)
        else:
            images = [n for n in names if n != CELLS_LAYER]
            if images:
                self.layer_combo.setCurrentText(images[-1])
        self.layer_combo.blockSignals(False)
        self._show_summary()

    def _prepare_job(self) -> _Job:
        from napari.layers import Labels

        from napari_allbag.model.bundle import read_bundle_meta

        path = self.bundle_path
        if path is None:
            raise ValueError("choose a model bundle folder first")
        meta = read_bundle_meta(path)
        name = self.layer_combo.currentText()
        if not name or name not in self.viewer.layers:
            raise ValueError("choose an image layer, or the 'cells' layer of the Segment widget")
        layer = self.viewer.layers[name]
        if not isinstance(layer, Labels):
            image = _layer_rgb(layer)
            return _Job(path, self.device, image, None, None, None, layer.name, self.background())
        labels = np.asarray(layer.data)
        if labels.ndim != 2:
            raise ValueError(f"the '{name}' layer is not a 2-D label image")
        table = {str(k): np.asarray(v) for k, v in layer.features.items()}
        crop_size = int((meta.get("segmentation") or {}).get("crop_size") or 0)
        ids = _cell_ids(table, labels)
        crops = self._matching_crops(layer, len(ids), crop_size)
        image = None
        if crops is None:
            image_layer = self._source_image(layer)
            if image_layer is None:
                raise ValueError(
                    f"the '{CROPS_LAYER}' layer is missing or does not match, and no image of the "
                    f"same size as '{name}' is open to cut the cells from: open the image, or pick "
                    "the image layer instead"
                )
            image = _layer_rgb(image_layer)
        return _Job(path, self.device, image, labels, table, crops, layer.name)

    def background(self) -> str | None:
        """The background mode chosen (None: the bundle's own)."""
        text = self.background_combo.currentText()
        return None if text == BUNDLE_BACKGROUND else text

    def _matching_crops(self, cells_layer, count: int, crop_size: int) -> np.ndarray | None:
        source = cells_layer.metadata.get(SOURCE_KEY)
        crops_layer = find_result(self.viewer, CROPS, source) if source else None
        if crops_layer is None and CROPS_LAYER in self.viewer.layers:
            crops_layer = self.viewer.layers[CROPS_LAYER]
        if crops_layer is None:
            return None
        data = np.asarray(crops_layer.data)
        if data.ndim == 3 and count == 1:
            data = data[None]
        if (
            data.ndim == 4
            and data.shape[0] == count
            and data.shape[-1] == 3
            and data.shape[1] == data.shape[2] == crop_size
            and data.dtype == np.uint8
        ):
            return data
        return None

    def _source_image(self, labels_layer) -> Any:
        from napari.layers import Image

        meta = labels_layer.metadata
        wanted = meta.get(SOURCE_KEY) or meta.get("source_layer") or meta.get("image")
        shape = labels_layer.data.shape
        candidates = [
            layer
            for layer in self.viewer.layers
            if isinstance(layer, Image)
            and not is_result(layer)
            and layer.name != CROPS_LAYER
            and np.asarray(layer.data.shape[:2]).tolist() == list(shape)
        ]
        for layer in candidates:
            if layer.name == wanted:
                return layer
        return candidates[0] if candidates else None

    # ------------------------------------------------------------------ running

    def run(self) -> None:
        """Start classifying in a background worker."""
        from napari_allbag.model.bundle import BundleError

        if self.controls.is_running:
            return
        try:
            job = self._prepare_job()
        except (BundleError, ValueError) as error:
            self._show_error(str(error))
            return
        from dataclasses import replace

        rule = self.rule_combo.currentText()
        job = replace(
            job, rule=None if rule == BUNDLE_RULE else rule, tta=self.tta_check.isChecked()
        )
        self.status.setText("starting…")
        self._found_afresh = job.labels is None
        self._running_image = self.image_name() or job.source
        self.controls.start(
            _classify_job,
            self._holder,
            job,
            on_result=self._on_result,
            on_error=self._on_error,
            on_aborted=self._on_aborted,
        )

    def _browse_folder(self) -> None:
        start = self.folder_edit.text().strip() or str(Path.home())
        chosen = QFileDialog.getExistingDirectory(self, "Choose a folder of images", start)
        if chosen:
            self.folder_edit.setText(chosen)

    def results_path(self) -> Path | None:
        """The results CSV chosen, else `<folder>/allbag-results.csv` (None without a folder)."""
        from napari_allbag.inference.folder import default_results_path

        text, folder = self.results_edit.text().strip(), self.folder_edit.text().strip()
        if text:
            return Path(text).expanduser()
        return default_results_path(Path(folder).expanduser()) if folder else None

    def classify_folder(self) -> None:
        """Classify every image of the folder in the background, writing the results CSV."""
        from napari_allbag.model.bundle import BundleError, read_bundle_meta

        if self.controls.is_running:
            return
        folder, path = Path(self.folder_edit.text().strip()).expanduser(), self.bundle_path
        try:
            if path is None:
                raise ValueError("choose a model bundle first")
            read_bundle_meta(path)
            if not self.folder_edit.text().strip() or not folder.is_dir():
                raise ValueError(f"choose a folder of images ({folder} is not one)")
        except (BundleError, ValueError) as error:
            self._show_error(str(error))
            return
        overlays = self.overlays_edit.text().strip()
        self._folder_job = _FolderJob(
            path,
            self.device,
            folder,
            self.results_path(),
            self._options(),
            Path(overlays).expanduser() if overlays else None,
        )
        self.status.setText("starting…")
        self.controls.start(
            _folder_job,
            self._holder,
            self._folder_job,
            on_result=self._on_folder_result,
            on_error=self._on_error,
            on_aborted=self._on_aborted,
        )

    def _options(self) -> Any:
        from napari_allbag.inference.pipeline import PipelineOptions

        rule = self.rule_combo.currentText()
        return PipelineOptions(
            background=self.background(),
            rule=None if rule == BUNDLE_RULE else rule,
            tta=self.tta_check.isChecked(),
        )

    def _on_folder_result(self, run: Any) -> None:
        """List the run's images and say what was written."""
        self._folder_run = run
        self.run_images.clear()
        for item in run.files:
            label = f"{item.path.name} ({len(item.predictions)} cells)"
            self.run_images.addItem(label if not item.error else f"{item.path.name} (unreadable)")
            self.run_images.setItemData(self.run_images.count() - 1, str(item.path))
        self.open_button.setEnabled(bool(run.files))
        result = run.run
        overlays = ""
        if run.overlays_path is not None:
            overlays = f"; overlays of {run.overlays_written} image(s) in {run.overlays_path}"
        self.status.setText(
            f"{len(result.files)} image(s), {result.cells} cell(s), {result.n_all} ALL; "
            f"results in {run.csv_path}, per-image summary in {run.summary_path}{overlays}"
        )

    @property
    def folder_run(self) -> Any:
        """The last folder run (`inference.folder.FolderRun`), None before one finished."""
        return self._folder_run

    def open_run_image(self, index: int | None = None) -> bool:
        """Open one image of the last folder run with its results (in the background)."""
        if self._folder_run is None or self.controls.is_running:
            return False
        index = self.run_images.currentIndex() if index is None else index
        if not 0 <= index < len(self._folder_run.files):
            return False
        item = self._folder_run.files[index]
        self.status.setText(f"opening {item.path.name}…")
        return self.controls.start(
            _reopen_job,
            self._holder,
            self._holder.path or self.bundle_path,
            self.device,
            item,
            self._folder_job.options if self._folder_job else self._options(),
            on_result=lambda opened: self._show_reopened(item.path, opened),
            on_error=self._on_error,
            on_aborted=self._on_aborted,
        )

    def _show_reopened(self, path: Path, opened: Any) -> None:
        """The image as a layer (reused when open), then its results as a single run shows them."""
        name = path.stem
        if name in self.viewer.layers:
            self.viewer.layers[name].data = opened.image
        else:
            self.viewer.add_image(opened.image, name=name, rgb=True)
        self._found_afresh = False
        self._running_image = name
        self._show_result(opened.result)
        self.layer_combo.setCurrentText(result_name(CELLS, name))

    def cancel(self) -> None:
        if self.controls.cancel():
            self.status.setText("cancelling…")

    @property
    def is_running(self) -> bool:
        return self.controls.is_running

    def _on_progress(self, event: Progress) -> None:
        text = event.stage
        if event.message:
            text += f": {event.message}"
        rate = event.metrics.get("cells/s")
        if isinstance(rate, (int, float)):
            text += f" ({rate:.0f} cells/s)"
        self.status.setText(text)
        if self._holder.bundle is not None:
            from napari_allbag.model.devices import device_description

            self.device_label.setText(f"Device: {device_description(self._holder.bundle.device)}")

    def _on_result(self, result: Any) -> None:
        self._show_result(result)

    def _on_error(self, error: BaseException) -> None:
        self._show_error(str(error))

    def _on_aborted(self) -> None:
        self.status.setText("cancelled")

    def _on_finished(self) -> None:
        job = self._folder_job
        if job is not None and job.work is not None:
            kept = job.work.close()  # a cancelled or failed run: its rows so far
            if kept is not None:
                self.status.setText(f"{self.status.text()}; cells so far kept in {kept}")
        self.progress.setRange(0, 1)
        self.progress.setValue(1 if self.controls.succeeded else 0)  # a folder run too: 100 %

    def _show_error(self, message: str) -> None:
        self.status.setText(f"<b>Error:</b> {message}")
        show_error("Classify", message)

    # ------------------------------------------------------------------ results

    def _show_result(self, result: Any) -> None:
        """Show an `ImagePredictions` in the image's own layers: outlines by class, the table,
        the label text, the summary; other images' layers are left alone."""
        import pandas as pd

        predictions = result.predictions
        table = {k: np.asarray(v) for k, v in result.table.items()}
        for name in (*PREDICTION_NAMES, "predicted_label", "corrected"):
            table.pop(name, None)
        table.update(predictions.columns())
        frame = pd.DataFrame(table)
        if "index" not in frame:
            frame.insert(0, "index", _cell_ids(table, result.labels))
        frame["predicted_label"] = frame["label"]
        frame["corrected"] = False
        self._table = frame
        image_name = getattr(self, "_running_image", None) or self.layer_combo.currentText()
        layer = self._cells_layer_for(image_name, result.labels, frame)
        layer.metadata[CROPS_KEY] = result.crops
        if self._found_afresh:
            crops_layer = find_result(self.viewer, CROPS, image_name)
            if crops_layer is not None:  # keep the Segment widget's crops in step with the cells
                crops_layer.data = result.crops
        self.refresh_display(layer)
        cells = len(predictions)
        self.status.setText(_segmentation_note(result.segmentation) or "done")
        self.export_button.setEnabled(cells > 0)

    def _cells_layer_for(self, image_name: str, labels: np.ndarray, frame) -> Any:
        """The image's `cells [name]` layer, updated or made, just above the image."""
        image = self.viewer.layers[image_name] if image_name in self.viewer.layers else None
        layer = find_result(self.viewer, CELLS, image_name)
        if layer is None and CELLS_LAYER in self.viewer.layers:
            layer = self.viewer.layers[CELLS_LAYER]  # an unnamed cells layer (older sessions)
            layer.name = result_name(CELLS, image_name)
            mark_result(layer, CELLS, image_name)
        if layer is None:
            geometry = {}
            if image is not None:
                geometry = {"scale": image.scale[-2:], "translate": image.translate[-2:]}
            layer = self.viewer.add_labels(
                labels,
                name=result_name(CELLS, image_name),
                features=frame,
                metadata=result_metadata(CELLS, image_name),
                **geometry,
            )
        else:
            if layer.data is not labels:
                layer.data = labels
            layer.features = frame
        layer.contour = 2  # outlines: the morphology stays visible
        layer.opacity = 1.0
        place_above(self.viewer, layer, image)
        return layer

    def _heatmap_clicked(self) -> None:
        try:
            self.show_heatmap()
        except ValueError as error:
            self._show_error(str(error))

    def show_heatmap(self) -> Any:
        """Add the Grad-CAM overlay of the cells layer's selected cell as an image layer over
        its crop (centred on the cell); returns the layer."""
        from napari_allbag.inference.gradcam import ensemble_grad_cam, overlay_heatmap

        image_name = self.image_name() or self.layer_combo.currentText()
        layer = find_result(self.viewer, CELLS, image_name)
        bundle = self._holder.bundle
        if layer is None or bundle is None or CROPS_KEY not in layer.metadata:
            raise ValueError("classify the image first (Run), then select a cell")
        frame = layer.features
        ids = np.asarray(frame["index"])
        rows = np.flatnonzero(ids == int(layer.selected_label))
        if not len(rows):
            raise ValueError("select a cell: pick its label in the cells layer")
        row = int(rows[0])
        crop = np.asarray(layer.metadata[CROPS_KEY])[row]
        heat = ensemble_grad_cam(bundle.ensemble, crop[None], "combined", 1)[0]
        centre = frame[["centroid_row", "centroid_col"]].to_numpy(dtype=float)[row]
        corner = centre - np.array(crop.shape[:2]) / 2.0
        scale = np.asarray(layer.scale[-2:], dtype=float)
        return self.viewer.add_image(
            overlay_heatmap(crop, heat),
            name=f"heatmap cell {ids[row]} [{image_name}]",
            translate=np.asarray(layer.translate[-2:], dtype=float) + corner * scale,
            scale=scale,
            opacity=0.8,
        )

    def refresh_display(self, cells_layer: Any) -> None:
        """Colours, label text and summary of one cells layer from its features."""
        refresh_cells_display(self.viewer, cells_layer)
        self._show_summary()

    @property
    def results_table(self):
        """The last result as a pandas DataFrame (None before the first run)."""
        return self._table

    def export_csv(self, path: str | os.PathLike) -> Path:
        """Write the last result's table to `path` atomically."""
        if self._table is None:
            raise ValueError("nothing to export yet: press Run first")
        path = Path(path)
        with atomic_path(path, mode=None, sync=False) as temp:
            self._table.to_csv(temp, index=False)
        return path

    def _export_dialog(self) -> None:
        chosen, _ = QFileDialog.getSaveFileName(
            self, "Export cells as CSV", "cells_classified.csv", "CSV (*.csv)"
        )
        if chosen:
            try:
                self.status.setText(f"exported to {self.export_csv(chosen)}")
            except OSError as error:
                self._show_error(f"could not write {chosen}: {error}")

    # ------------------------------------------------------------------ lifetime

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        self.cancel()
        self.release_model()
        super().closeEvent(event)


def refresh_cells_display(viewer: Any, cells_layer: Any) -> None:
    """Colours, label text and summary of one cells layer from its features (after a run
    or a correction: the Classify and Cell table widgets)."""
    from napari.utils.colormaps import DirectLabelColormap

    frame = cells_layer.features
    cells_layer.colormap = DirectLabelColormap(color_dict=cell_colours(frame))
    summary = cell_summary(frame["label"]) if "label" in frame else ""
    corrected = int(corrected_mask(frame, len(frame)).sum())
    flagged = int(flagged_mask(frame, len(frame)).sum())
    if corrected:
        summary += f"; {corrected} corrected"
    if flagged:
        summary += f"; {flagged} flagged for review"
    cells_layer.metadata[SUMMARY_KEY] = summary
    _show_classes(viewer, frame, cells_layer)


def _show_classes(viewer: Any, frame, cells_layer) -> None:
    """The image's `classes [name]` Points layer: label and confidence at each cell."""
    image_name = cells_layer.metadata.get(SOURCE_KEY, "image")
    if {"centroid_row", "centroid_col"} <= set(frame.columns):
        points = frame[["centroid_row", "centroid_col"]].to_numpy(dtype=float)
    else:
        points = _centroids(cells_layer.data, frame["index"].to_numpy())
    text, colours = _class_texts(frame)
    old = find_result(viewer, CLASSES, image_name)
    if old is not None:
        viewer.layers.remove(old)
    if not len(points):
        return
    text_style = {
        "string": "{text}",
        "size": TEXT_SIZE,
        "color": "white",
        "anchor": "upper_left",
    }
    layer = viewer.add_points(
        points,
        name=result_name(CLASSES, image_name),
        metadata=result_metadata(CLASSES, image_name),
        features={"text": text},
        text=text_style,
        face_color=np.asarray(colours),
        border_color=np.asarray(colours),
        size=marker_size(frame),
        scale=cells_layer.scale,
        translate=cells_layer.translate,
    )
    place_above(viewer, layer, cells_layer)
    hide_labels_when_crowded(viewer, layer, text, TEXT_SIZE)
    viewer.layers.selection.active = cells_layer


def marker_size(frame) -> float:
    """The class dot's size in data pixels: small beside the cells (`MARKER_FRACTION`)."""
    if "equivalent_diameter" not in frame or not len(frame):
        return 8.0
    diameter = float(np.nanmedian(np.asarray(frame["equivalent_diameter"], dtype=float)))
    return float(np.clip(MARKER_FRACTION * diameter, 2.0, 8.0)) if diameter > 0 else 8.0


PREDICTION_NAMES = ("p_all_model_a", "p_all_model_b", "p_all_combined", "label", "confidence")


def _is_cells_layer(layer: Any) -> bool:
    """A cells Labels layer of the Segment or Classify widget (or one named plainly "cells")."""
    return layer.metadata.get("allbag_kind") == CELLS or layer.name == CELLS_LAYER


def _class_texts(frame) -> tuple[list[str], list[tuple]]:
    """Each cell's text ("ALL 0.93", "HEM 0.61 ?" flagged, "ALL ✓" corrected) and colour."""
    n = len(frame)
    corrected, flagged = corrected_mask(frame, n), flagged_mask(frame, n)
    labels = [str(v) for v in frame["label"]]
    confidence = np.asarray(frame.get("confidence", np.full(n, np.nan)), dtype=float)
    texts, colours = [], []
    for row, label in enumerate(labels):
        if corrected[row]:
            texts.append(f"{label.upper()} \u2713")
            colours.append(CORRECTED_COLOUR)
            continue
        mark = " ?" if flagged[row] else ""
        texts.append(f"{label.upper()} {confidence[row]:.2f}{mark}")
        if flagged[row]:
            colours.append(FLAGGED_COLOUR)
        else:
            colours.append(ALL_COLOUR if label == "all" else HEM_COLOUR)
    return texts, colours


def _segmentation_note(segmented: Any) -> str:
    """The mode the image got and any warning, in words (the message alone for given cells)."""
    from napari_allbag.segmentation.feedback import ImageFeedback

    feedback = ImageFeedback.of(segmented)
    if not feedback.mode:
        return segmented.message or ""
    warnings = feedback.warnings()
    return f"{feedback.mode_text}" + (f": {'; '.join(warnings)}" if warnings else "")


def _validation_f1(metrics: dict[str, Any]) -> float | None:
    """The ensemble's validation weighted F1 from a bundle's metrics, where the trainer stored it."""
    validation = metrics.get("validation")
    if isinstance(validation, dict):
        value = (validation.get("ensemble") or {}).get("weighted_f1")
    else:
        value = metrics.get("weighted_f1")
    return float(value) if isinstance(value, (int, float)) else None


def _layer_rgb(layer) -> np.ndarray:
    """An Image layer's pixels as HxWx3 uint8 RGB (2-D images only)."""
    from napari_allbag.io.images import to_rgb_uint8

    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    data = np.asarray(data)
    planes = data.ndim - (1 if layer.rgb else 0)
    if planes != 2:
        raise ValueError(
            f"the '{layer.name}' layer has {planes} dimensions: pick a 2-D image (one plane)"
        )
    return to_rgb_uint8(data)


def _centroids(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    if not len(ids):
        return np.zeros((0, 2))
    return np.asarray(ndimage.center_of_mass(labels > 0, labels, ids.tolist()), dtype=float)
