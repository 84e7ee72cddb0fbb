"""The Segment cells dock widget: pick an image layer, a background mode and parameters, Run.

The work (`segmentation.segment_auto_progress`, or `tiles.segment_large` for a multiscale layer
or a large image: its full-resolution level read window by window) runs in a napari
`thread_worker` through `widgets.base.WorkerControls`, so the viewer stays responsive; its
progress events drive the progress bar and Cancel stops it at the next event (the next tile).
The result goes into a Labels layer `cells [image]` drawn as outlines, cyan, a cell whose
nucleus is smaller than a red cell yellow (features: the per-cell table, with the mode the image
got) and an RGB image layer `cell crops [image]` (the N x S x S x 3
stack, placed to the right of the image), both just above their image (`widgets.results`). A
whole slide too large for a full-size label image gets a Shapes layer `cell outlines [image]`
(one box per cell) instead. Running an image again updates its own layers; other images'
results are left alone. The image picker follows the active layer.
"""

from __future__ import annotations

from collections.abc import Generator

import numpy as np
import pandas as pd
from magicgui.widgets import CheckBox, ComboBox, Container, PushButton, SpinBox
from napari.layers import Image, Labels
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.notifications import show_warning
from qtpy.QtWidgets import QProgressBar, QVBoxLayout, QWidget

from napari_allbag.defaults import BACKGROUND_HELP, BACKGROUND_MODES
from napari_allbag.io.images import to_rgb_uint8
from napari_allbag.progress import Progress
from napari_allbag.segmentation.brightfield import segment_auto_progress
from napari_allbag.segmentation.dark import SegmentationParams, SegmentationResult
from napari_allbag.segmentation.feedback import ImageFeedback
from napari_allbag.segmentation.tiles import TileOptions, needs_tiling, segment_large
from napari_allbag.widgets.base import WorkerControls, status_label
from napari_allbag.widgets.results import (
    CELLS,
    CLASSES,
    CROPS,
    CROPS_KEY,
    FLAGGED_COLOUR,
    SEGMENTED_COLOUR,
    SUMMARY_KEY,
    find_result,
    image_of,
    is_result,
    place_above,
    result_metadata,
    result_name,
    segmented_colours,
)

CELLS_LAYER, CROPS_LAYER = CELLS, CROPS  # kinds; a layer's name is `cells [image]`

OUTLINES_LAYER = "cell outlines"  # kind of the box outlines of a slide without a label image
_GAP = 20  # pixels between the image and the crops placed beside it
#: Outline width of the cells in the cells Labels layer (napari's `contour`).
CONTOUR = 2
#: Above this many megapixels a tiled result keeps no full-size label image (4 bytes a pixel).
LABELS_MEGAPIXELS = 100.0


def segment_layer_data(
    data, params: SegmentationParams, source: str, tile: int | None = None
) -> Generator[Progress, None, SegmentationResult]:
    """Segment layer data (the worker's job): in memory with `segment_auto_progress`, or in
    tiles (`tiles.segment_large`) when the data is large or lazily sliced (a multiscale layer's
    full-resolution level, a dask or zarr array), so only one window is in memory at a time.
    """
    shape = tuple(data.shape[:2])
    if tile is not None or not isinstance(data, np.ndarray) or needs_tiling(shape):
        keep_labels = not needs_tiling(shape, LABELS_MEGAPIXELS)
        sizes = {"tile": tile} if tile else {}
        options = TileOptions(workers=1, keep_labels=keep_labels, **sizes)
        return (yield from segment_large(data, params, options, source))
    yield Progress(0, None, "segmenting", "converting the image to 8-bit RGB")
    image = to_rgb_uint8(np.asarray(data))
    return (yield from segment_auto_progress(image, params, source))


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
        self.background = ComboBox(
            label="background", choices=list(BACKGROUND_MODES), value=defaults.background
        )
        self.background.tooltip = BACKGROUND_HELP
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
        self.status = status_label()
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
                self.background,
                self.crop_size,
                self.erosion_size,
                self.min_area,
                self.largest_only,
                self.run_button,
                self.cancel_button,
            ]
        )
        layout = QVBoxLayout(self)
        layout.addWidget(form.native)
        layout.addWidget(self.status)  # the form's full width, not its value column
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
            background=str(self.background.value),
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
            self.tile,
            on_result=self._on_result,
            on_error=self._on_error,
            on_aborted=self._on_aborted,
        )

    #: Tile side for tiled runs (None: the default, and tiles only where needed); tests set it.
    tile: int | None = None

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
        if event.stage == "segmenting tiles" and event.total:
            self.status.value = f"tile {event.done} of {event.total}"
        elif event.message:
            self.status.value = event.message

    def _on_result(self, result: SegmentationResult) -> None:
        layer = self._source_layer
        feedback = ImageFeedback.of(result)
        warnings = feedback.warnings()
        if result.n_cells == 0:
            self._clear_results(result)
        else:
            self._show_cells(result, layer, feedback.small_nuclei)
            self._show_crops(result, layer)
        said = [f"{result.n_cells} {feedback.cell_word}(s) found"] if result.n_cells else []
        shown = said + warnings
        if feedback.small_nuclei:
            shown.append("yellow outlines show which")
        self.status.value = f"{feedback.mode_text}: {'; '.join(shown)}"
        if warnings:
            show_warning(f"Segment cells ({feedback.mode_text}): {'; '.join(warnings)}")

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

    def _show_cells(
        self, result: SegmentationResult, source: Image | None, flagged: tuple[int, ...]
    ) -> None:
        """Outlines over the image: the cells Labels layer drawn as contours, or (no label
        image kept for a whole slide) a Shapes layer of one box per cell; cyan, the `flagged`
        cells (a small nucleus: the warning names them) yellow."""
        features = pd.DataFrame({"index": result.table["cell_id"], **result.table})
        scale, translate = _plane_geometry(source)
        name = source.name if source is not None else "image"
        if result.labels is None:
            self._show_outlines(result, features, source, flagged)
            return
        self._remove(OUTLINES_LAYER, source)
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
        else:
            layer.data = result.labels
            layer.features = features
            layer.scale, layer.translate = scale, translate
        layer.contour = CONTOUR  # outlines: the morphology stays visible
        layer.colormap = DirectLabelColormap(
            color_dict=segmented_colours(result.table["cell_id"], flagged)
        )
        layer.metadata[CROPS_KEY] = result.crops
        layer.metadata[SUMMARY_KEY] = f"{result.n_cells} cell(s) found, not classified yet"
        self._cells_layer = layer
        place_above(self.viewer, layer, source)

    def _show_outlines(self, result, features, source: Image | None, flagged) -> None:
        scale, translate = _plane_geometry(source)
        name = source.name if source is not None else "image"
        table = result.table
        corners = zip(
            table["bbox_min_row"],
            table["bbox_min_col"],
            table["bbox_max_row"],
            table["bbox_max_col"],
            strict=True,
        )
        boxes = [np.array([[t, left], [b, r]], float) for t, left, b, r in corners]
        self._remove(CELLS, source)
        self._remove(OUTLINES_LAYER, source)
        layer = self.viewer.add_shapes(
            boxes,
            shape_type="rectangle",
            name=result_name(OUTLINES_LAYER, name),
            metadata=result_metadata(OUTLINES_LAYER, name),
            edge_color=[
                FLAGGED_COLOUR if int(cell_id) in flagged else SEGMENTED_COLOUR
                for cell_id in table["cell_id"]
            ],
            face_color="transparent",
            edge_width=3.0,
            features=features,
            scale=scale,
            translate=translate,
        )
        place_above(self.viewer, layer, source)

    def _remove(self, kind: str, source: Image | None) -> None:
        stale = self._result_layer(kind, source)
        if stale is not None:
            self.viewer.layers.remove(stale)

    def _show_crops(self, result: SegmentationResult, source: Image | None) -> None:
        scale, translate = _plane_geometry(source)
        width = (
            result.labels.shape[1]
            if result.labels is not None
            else int(result.table["bbox_max_col"].max(initial=0))
        )
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
        for kind in (CROPS, CLASSES, OUTLINES_LAYER):
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
