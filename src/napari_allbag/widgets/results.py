"""Result layers that belong to their image: names, placement, colours, the active image.

Every result layer (the Segment widget's cells and crops, the Classify widget's class labels) is
named after its image, `cells [name]`, `cell crops [name]`, `classes [name]`, records that image in
its metadata (`allbag_source`) and sits just above it, so a second image opened later neither
overwrites nor hides the first image's results. Re-running an image updates its own layers and
leaves every other image's alone. `image_of` maps any layer (an image or one of its results) to
its image, which is what the pickers and the cell table follow.

Colours: outlines by class (ALL orange-red, HEM sky blue), a corrected cell green, a cell flagged
for review yellow; `legend_html` shows them in the widgets. Before classification (the Segment
widget) every cell is cyan but one whose nucleus is small, which is yellow: the warning names it
by number, the colour shows which it is.

Labels: a `classes [name]` layer's text ("HEM 0.61 ?") is drawn in screen pixels, so in a dense
field at the zoom that fits the image the labels pile on one another and hide the cells;
`hide_labels_when_crowded` shows them only while the cells lie far enough apart on screen (the
coloured dots stay), and again as soon as the user zooms in.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SOURCE_KEY = "allbag_source"  # metadata: the name of the image a result layer belongs to
KIND_KEY = "allbag_kind"  # metadata: "cells", "cell crops" or "classes"
SUMMARY_KEY = "allbag_summary"  # metadata of a cells layer: its one-line summary
CROPS_KEY = "allbag_crops"  # metadata of a cells layer: the cells' crops (N x S x S x 3 uint8)
CELLS, CROPS, CLASSES = "cells", "cell crops", "classes"

ALL_COLOUR = (0.93, 0.33, 0.05, 1.0)  # orange-red and sky blue: distinct for colour-blind eyes
HEM_COLOUR = (0.15, 0.62, 0.95, 1.0)
CORRECTED_COLOUR = (0.20, 0.85, 0.30, 1.0)
FLAGGED_COLOUR = (1.00, 0.85, 0.10, 1.0)
UNCLASSIFIED_COLOUR = (0.6, 0.6, 0.6, 1.0)
#: Cells found, not classified yet (the Segment widget): cyan shows on pale bright-field
#: backgrounds, pink red cells and black alike (grey outlines were lost on a smear)
SEGMENTED_COLOUR = (0.0, 0.9, 0.9, 1.0)
#: Columns a review flag may come in: a non-empty reason text or True means "flagged".
REVIEW_COLUMNS = ("review", "review_reasons", "flagged", "needs_review")


def result_name(kind: str, image_name: str) -> str:
    """`cells [image]`: the layer of `kind` that belongs to the image `image_name`."""
    return f"{kind} [{image_name}]"


def is_result(layer: Any) -> bool:
    return bool(getattr(layer, "metadata", {}).get(KIND_KEY))


def result_metadata(kind: str, image_name: str) -> dict:
    """The metadata that makes a new layer a result of `image_name` (given when it is added,
    so the widgets listening to `inserted` already see it as one)."""
    return {KIND_KEY: kind, SOURCE_KEY: image_name}


def mark_result(layer: Any, kind: str, image_name: str) -> None:
    layer.metadata[KIND_KEY] = kind
    layer.metadata[SOURCE_KEY] = image_name


def find_result(viewer: Any, kind: str, image_name: str) -> Any:
    """The layer of `kind` belonging to `image_name` (by its metadata, else by its name)."""
    for layer in viewer.layers:
        meta = layer.metadata
        if meta.get(KIND_KEY) == kind and meta.get(SOURCE_KEY) == image_name:
            return layer
    name = result_name(kind, image_name)
    return viewer.layers[name] if name in viewer.layers else None


def image_of(viewer: Any, layer: Any) -> Any:
    """The image a layer belongs to: itself for an image, its source for a result, else None."""
    from napari.layers import Image

    if layer is None:
        return None
    if is_result(layer):
        source = layer.metadata.get(SOURCE_KEY)
        return viewer.layers[source] if source in viewer.layers else None
    return layer if isinstance(layer, Image) else None


def image_layers(viewer: Any) -> list[Any]:
    """The viewer's images, results (crop stacks) left out."""
    from napari.layers import Image

    return [la for la in viewer.layers if isinstance(la, Image) and not is_result(la)]


def place_above(viewer: Any, layer: Any, anchor: Any) -> None:
    """Move `layer` just above `anchor` in the layer list (drawn over it, under the rest)."""
    if anchor is None or anchor not in viewer.layers or layer not in viewer.layers:
        return
    layers = viewer.layers
    source, target = layers.index(layer), layers.index(anchor)
    if source == target + 1:
        return
    layers.move(source, target + 1)  # napari inserts before the item now at that index


#: A label's width on screen per character, in font sizes (napari's default sans-serif).
CHAR_WIDTH = 0.6


def median_spacing(points: np.ndarray) -> float:
    """The median distance from each point (N x 2) to its nearest neighbour; inf under two."""
    if len(points) < 2:
        return float("inf")
    from scipy.spatial import cKDTree

    distances, _ = cKDTree(points).query(points, k=2)
    return float(np.median(distances[:, 1]))


def hide_labels_when_crowded(viewer: Any, layer: Any, texts: list[str], font_size: float) -> None:
    """Show `layer`'s text only while most of its points lie a label's width apart on screen:
    hidden at a zoom where labels would overlap, shown when zoomed in; follows the zoom until
    the layer is removed from the viewer, and leaves the text alone while the user has set it
    otherwise (the layer controls' "display text")."""
    scale = float(np.min(np.abs(np.asarray(layer.scale)[-2:])))
    spacing = median_spacing(np.asarray(layer.data)[:, -2:]) * scale  # world units
    width = CHAR_WIDTH * font_size * max((len(text) for text in texts), default=0)
    camera = getattr(viewer, "scene", viewer).camera  # napari 0.9 moved it to viewer.scene
    layers = viewer.layers
    shown: bool | None = None  # what this function last set

    def update(event: Any = None) -> None:
        nonlocal shown
        if shown is not None and layer.text.visible != shown:
            return  # the user's choice
        shown = bool(spacing * camera.zoom >= width)  # zoom: screen pixels per unit
        layer.text.visible = shown

    def forget(event: Any) -> None:
        if _unwrapped(event.value) is _unwrapped(layer):
            camera.events.zoom.disconnect(update)
            layers.events.removed.disconnect(forget)

    camera.events.zoom.connect(update)
    layers.events.removed.connect(forget)
    update()


def _unwrapped(obj: Any) -> Any:
    """The object behind napari's proxy (a plugin's viewer returns proxied layers)."""
    return getattr(obj, "__wrapped__", obj)


def flagged_mask(table: Any, n: int) -> np.ndarray:
    """Which rows of a features table are flagged for review (all False without a flag column)."""
    for name in REVIEW_COLUMNS:
        if name in table:
            values = np.asarray(table[name], dtype=object)
            return np.array([bool(v) and str(v).lower() not in ("false", "nan") for v in values])
    return np.zeros(n, dtype=bool)


def corrected_mask(table: Any, n: int) -> np.ndarray:
    if "corrected" in table:
        return np.asarray(table["corrected"], dtype=bool)
    return np.zeros(n, dtype=bool)


def cell_colours(table: Any) -> dict:
    """A DirectLabelColormap dict: each cell's colour from its label, correction and flag."""
    ids = np.asarray(table["index"]).astype(int).tolist()
    labels = [str(v) for v in np.asarray(table["label"])] if "label" in table else []
    corrected, flagged = corrected_mask(table, len(ids)), flagged_mask(table, len(ids))
    colours = {None: UNCLASSIFIED_COLOUR, 0: (0.0, 0.0, 0.0, 0.0)}
    for row, cell_id in enumerate(ids):
        if corrected[row]:
            colours[cell_id] = CORRECTED_COLOUR
        elif flagged[row]:
            colours[cell_id] = FLAGGED_COLOUR
        elif row < len(labels):
            colours[cell_id] = ALL_COLOUR if labels[row] == "all" else HEM_COLOUR
    return colours


def segmented_colours(cell_ids, flagged_ids) -> dict:
    """A DirectLabelColormap dict for cells not classified yet: cyan, `flagged_ids` yellow."""
    colours = {None: SEGMENTED_COLOUR, 0: (0.0, 0.0, 0.0, 0.0)}
    colours.update({int(cell_id): SEGMENTED_COLOUR for cell_id in cell_ids})
    colours.update({int(cell_id): FLAGGED_COLOUR for cell_id in flagged_ids})
    return colours


def legend_html() -> str:
    """Coloured squares naming what each outline colour means."""

    def swatch(colour: tuple, text: str) -> str:
        hex_colour = "#" + "".join(f"{round(255 * c):02x}" for c in colour[:3])
        return f'<span style="color:{hex_colour}">&#9632;</span>&nbsp;{text}'

    parts = (
        swatch(ALL_COLOUR, "ALL"),
        swatch(HEM_COLOUR, "HEM"),
        swatch(CORRECTED_COLOUR, "corrected"),
        swatch(FLAGGED_COLOUR, "flagged"),
    )
    return "&nbsp;&nbsp; ".join(parts)


def cell_summary(labels: Any) -> str:
    """`8 cell(s): 4 ALL, 4 HEM — ALL fraction 50.0%`."""
    names = [str(v) for v in labels]
    cells, n_all = len(names), sum(name == "all" for name in names)
    fraction = f"{100 * n_all / cells:.1f}%" if cells else "n/a"
    return f"{cells} cell(s): {n_all} ALL, {cells - n_all} HEM — ALL fraction {fraction}"
