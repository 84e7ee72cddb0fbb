"""The Segment cells dock widget: pick an image layer and parameters, press Run.

The work (`segmentation.segment_image_progress`) runs in a napari `thread_worker` through
`widgets.base.WorkerControls`, so the viewer stays responsive; its progress events drive the progress bar and Cancel stops it at the next
event. The result goes into a Labels layer `cells [image]` (outlines; features: the per-cell
table) and an RGB image layer `cell crops [image]` (the N x S x S x 3 stack, placed to the right
of the image), both just above their image (`widgets.results`). Running an image again updates its
own two layers; other images' results are left alone. The image picker follows the active layer.
"""

from __future__ import annotations

from collections.abc import Generator

import numpy as np
import pandas as pd
from magicgui.widgets import CheckBox, ComboBox, Container, Label, PushButton, SpinBox
from napari.layers import Image, Labels
from napari.utils.notifications import show_warning
from qtpy.QtWidgets import QProgressBar, QVBoxLayout, QWidget

from napari_allbag.io.images import to_rgb_uint8
from napari_allbag.progress import Progress
from napari_allbag.segmentation.dark import (
    SegmentationParams,
    SegmentationResult,
    segment_image_progress,
)
from napari_allbag.widgets.base import WorkerControls
from napari_allbag.widgets.results import (
    CELLS,
    CLASSES,
    CROPS,
    CROPS_KEY,
    SUMMARY_KEY,
    find_result,
    image_of,
    is_result,
    place_above,
    result_metadata,
    result_name,
)

CELLS_LAYER, CROPS_LAYER = CELLS, CROPS  # kinds; a layer's name is `cells [image]`

_GAP = 20  # pixels between the image and the crops placed beside it


def segment_layer_data(
    data, params: SegmentationParams, source: str
) -> Generator[Progress, None, SegmentationResult]:
    """Convert layer data to RGB uint8 and segment it (the worker's job)."""
    yield Progress(0, None, "segmenting", "converting the image to 8-bit RGB")
    image = to_rgb_uint8(np.asarray(data))
    return (yield from segment_image_progress(image, params, source))


class SegmentWidget(QWidget):
    """Segment the cells of an image layer into a "cells" Labels layer and a crop stack."""

    def __init__(self, napari_viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self._cells_layer: Labels | None = None
        self._crops_layer: Image | None = None
        self._source_layer: Image | None = None
        defaults = SegmentationParams()

        self.image_choice = ComboBox(label="image", choices=self._image_layer_choices)
        self.crop_size = SpinBox(label="crop size (px)", value=defaults.crop_size, min=8, max=4096)
        self.erosion_size = SpinBox(
            label="erosion size (px)", value=defaults.erosion_size, min=0, max=99
        )
        self.min_area = SpinBox(
            label="min cell area (px)", value=defaults.min_area, min=0, max=10**9
        )
        self.largest_only = CheckBox(
            text="largest cell only (one cell per image)", value=defaults.largest_only
        )
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(value="")
        self.progress_bar = QProgressBar()
        self.controls = WorkerControls(
            [self.run_button],
            self.cancel_button,
            self.progress_bar,
            on_progress=self._on_progress,
            hide_bar=True,
        )
        self.image_choice.tooltip = "the image layer to segment (the plane shown, for stacks)"
        self.erosion_size.tooltip = "side of the square erosion footprint; 0 or 1: no erosion"
        self.min_area.tooltip = "regions with fewer pixels are debris, not cells"

        form = Container(
            widgets=[
                self.image_choice,
                self.crop_size,
                self.erosion_size,
                self.min_area,
                self.largest_only,
                self.run_button,
                self.cancel_button,
                self.status,
            ]
        )
        layout = QVBoxLayout(self)
        layout.addWidget(form.native)
        layout.addWidget(self.progress_bar)
        layout.addStretch(1)
        self._form = form

        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        for event in (
            napari_viewer.layers.events.inserted,
            napari_viewer.layers.events.removed,
            napari_viewer.layers.events.moved,
        ):
            event.connect(self._refresh_choices)
        napari_viewer.layers.selection.events.active.connect(self._follow_active)
        self._refresh_choices()

    # --- parameters -----------------------------------------------------------------------

    def params(self) -> SegmentationParams:
        return SegmentationParams(
            crop_size=int(self.crop_size.value),
            erosion_size=int(self.erosion_size.value),
            min_area=int(self.min_area.value),
            largest_only=bool(self.largest_only.value),
        )

    def _image_layer_choices(self, _widget=None) -> list[tuple[str, Image]]:
        return [
            (layer.name, layer)
            for layer in self.viewer.layers
            if isinstance(layer, Image) and not is_result(layer)
        ]

    def _refresh_choices(self, _event=None) -> None:
        current = self.image_choice.value
        self.image_choice.reset_choices()
        layers = [layer for _, layer in self._image_layer_choices()]
        active = self.viewer.layers.selection.active
        if current in layers:
            self.image_choice.value = current
        elif active in layers:
            self.image_choice.value = active

    def _follow_active(self, event=None) -> None:
        """The picker follows the active layer (an image, or one of its results)."""
        image = image_of(self.viewer, self.viewer.layers.selection.active)
        if image is not None and image in [layer for _, layer in self._image_layer_choices()]:
            self.image_choice.value = image

    # --- running ----------------------------------------------------------------------------

    @property
    def worker(self):
        """The running worker (None when idle)."""
        return self.controls.worker

    def run(self) -> None:
        """Segment the chosen layer in a background worker."""
        if self.controls.is_running:
            return
        layer = self.image_choice.value
        if layer is None:
            show_warning(
                "Segment cells: open an image first (File > Open, or File > Open "
                "Sample > ALL bagging ensemble)."
            )
            return
        try:
            data = self._plane_shown(layer)
        except ValueError as error:
            show_warning(f"Segment cells: cannot use layer '{layer.name}': {error}")
            return
        self._source_layer = layer
        self.status.value = f"segmenting '{layer.name}'..."
        self.controls.start(
            segment_layer_data,
            data,
            self.params(),
            layer.name,
            on_result=self._on_result,
            on_error=self._on_error,
            on_aborted=self._on_aborted,
        )

    def cancel(self) -> None:
        """Stop the running segmentation at its next progress event."""
        if self.controls.cancel():
            self.status.value = "cancelling..."

    def _plane_shown(self, layer: Image) -> np.ndarray:
        """The 2-D image (H x W, or H x W x C for RGB) the viewer shows of `layer`."""
        data = layer.data[0] if layer.multiscale else layer.data
        leading = layer.ndim - 2
        if leading < 0:
            raise ValueError(f"it has {layer.ndim} dimension(s); an image has 2")
        if leading:
            position = layer.world_to_data(self.viewer.dims.point[-layer.ndim :])
            index = tuple(
                int(np.clip(round(float(p)), 0, size - 1))
                for p, size in zip(position[:leading], data.shape[:leading], strict=True)
            )
            data = data[index]
        return data

    def _on_progress(self, event: Progress) -> None:
        if event.message:
            self.status.value = event.message

    def _on_result(self, result: SegmentationResult) -> None:
        layer = self._source_layer
        if result.n_cells == 0:
            self._clear_results(result)
            self.status.value = result.message
            show_warning(f"Segment cells: {result.message}")
            return
        self._show_cells(result, layer)
        self._show_crops(result, layer)
        self.status.value = f"{result.n_cells} cell(s) found"
        if result.message:
            show_warning(f"Segment cells: {result.message}")

    def _on_error(self, error: Exception) -> None:
        self.status.value = f"failed: {error}"
        show_warning(f"Segment cells failed: {error}")

    def _on_aborted(self) -> None:
        self.status.value = "cancelled"

    # --- layers -----------------------------------------------------------------------------

    def _result_layer(self, kind: str, source: Image | None):
        """This image's layer of `kind` (None when it has none yet)."""
        if source is None:
            return None
        return find_result(self.viewer, kind, source.name)

    def _show_cells(self, result: SegmentationResult, source: Image | None) -> None:
        features = pd.DataFrame({"index": result.table["cell_id"], **result.table})
        scale, translate = _plane_geometry(source)
        name = source.name if source is not None else "image"
        layer = self._result_layer(CELLS, source)
        if layer is None:
            layer = self.viewer.add_labels(
                result.labels,
                name=result_name(CELLS, name),
                features=features,
                metadata=result_metadata(CELLS, name),
                scale=scale,
                translate=translate,
            )
            layer.contour = 2
        else:
            layer.data = result.labels
            layer.features = features
            layer.scale, layer.translate = scale, translate
        layer.metadata[CROPS_KEY] = result.crops
        layer.metadata[SUMMARY_KEY] = f"{result.n_cells} cell(s) found, not classified yet"
        self._cells_layer = layer
        place_above(self.viewer, layer, source)

    def _show_crops(self, result: SegmentationResult, source: Image | None) -> None:
        scale, translate = _plane_geometry(source)
        width = result.labels.shape[1] if result.labels is not None else 0
        translate = (0.0, translate[0], translate[1] + (width + _GAP) * scale[1])
        scale = (1.0, *scale)
        name = source.name if source is not None else "image"
        layer = self._result_layer(CROPS, source)
        if layer is None:
            layer = self.viewer.add_image(
                result.crops,
                name=result_name(CROPS, name),
                rgb=True,
                metadata=result_metadata(CROPS, name),
                scale=scale,
                translate=translate,
            )
            self._refresh_choices()
        else:
            layer.data = result.crops
            layer.scale, layer.translate = scale, translate
        self._crops_layer = layer
        place_above(self.viewer, layer, source)

    def _clear_results(self, result: SegmentationResult) -> None:
        """An empty result: no stale cells or crops left on screen."""
        source = self._source_layer
        layer = self._result_layer(CELLS, source)
        if layer is not None and result.labels is not None:
            layer.data = np.zeros_like(result.labels)
            layer.features = pd.DataFrame({"index": result.table["cell_id"], **result.table})
            layer.metadata[SUMMARY_KEY] = "0 cells found"
        for kind in (CROPS, CLASSES):
            stale = self._result_layer(kind, source)
            if stale is not None:
                self.viewer.layers.remove(stale)
        self._crops_layer = None


def _plane_geometry(layer: Image | None) -> tuple[tuple[float, float], tuple[float, float]]:
    """Scale and translate of the layer's last two (row, column) dimensions."""
    if layer is None:
        return (1.0, 1.0), (0.0, 0.0)
    scale = tuple(float(v) for v in layer.scale[-2:])
    translate = tuple(float(v) for v in layer.translate[-2:])
    return scale, translate
