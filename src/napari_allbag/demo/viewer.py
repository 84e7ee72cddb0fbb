"""`napari-allbag demo --napari`: the viewer with the sample field, the widgets and a bundle.

The only demo module that imports napari. `open_demo(viewer, bundle)` does the wiring on a viewer
it is given (so tests use `make_napari_viewer`); `show_demo(bundle)` makes the viewer, classifies
the sample field (the Cell table then lists its cells) and runs napari's event loop until the
window is closed.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Any

import napari
from qtpy.QtCore import QTimer

from napari_allbag.model.bundle import read_bundle_meta

PLUGIN = "napari-allbag"
#: Dock widgets as napari.yaml names them, in the order they are used.
WIDGETS = ("Segment cells", "Classify cells", "Train ensemble", "Cell table")
#: Each widget's tab partner: Cell table shares Segment's place, Train shares Classify's (docked
#: in this order, each `tabify` joins the dock added just before it).
DOCK_ORDER = (
    ("Segment cells", False),
    ("Cell table", True),
    ("Classify cells", False),
    ("Train ensemble", True),
)
FIELD_SAMPLE = "field"


def open_demo(
    viewer: napari.Viewer,
    bundle_path: str | os.PathLike,
    demo_dir: str | os.PathLike | None = None,
    classify_field: bool = False,
) -> dict[str, Any]:
    """Open the sample field, dock the four widgets and choose `bundle_path` in Classify.

    With `demo_dir` (a finished demo's folder) the Train widget is filled in to train the demo
    model again from its generated set. With `classify_field` Classify runs on the field at once
    (in the background; the Cell table lists the cells when it is done). Returns the widgets by
    their display name, in `WIDGETS` order.
    """
    layers = viewer.open_sample(PLUGIN, FIELD_SAMPLE)
    widgets, docks = {}, {}
    for name, tabify in DOCK_ORDER:
        docks[name], widgets[name] = viewer.window.add_plugin_dock_widget(
            PLUGIN, name, tabify=tabify
        )
    # once the tabs exist (next event-loop turn), show the Cell table's and Classify's
    for name in ("Cell table", "Classify cells"):
        QTimer.singleShot(0, partial(_raise_dock, docks[name]))
    classify = widgets["Classify cells"]
    usable = classify.set_bundle(Path(bundle_path), remember=False)
    if usable:
        # crops made at the bundle's size are classified as they are, not cut again
        crop_size = (read_bundle_meta(bundle_path).get("segmentation") or {}).get("crop_size")
        if crop_size:
            widgets["Segment cells"].crop_size.value = int(crop_size)
    if demo_dir is not None:
        fill_train_widget(widgets["Train ensemble"], Path(demo_dir))
    if layers:
        viewer.layers.selection.active = layers[0]
        if usable and classify_field:
            classify.layer_combo.setCurrentText(layers[0].name)
            classify.run()
    viewer.reset_view()
    return {name: widgets[name] for name in WIDGETS}


def _raise_dock(dock: Any) -> None:
    try:
        dock.raise_()
    except RuntimeError:  # the window was closed before the event loop got here
        pass


def fill_train_widget(train: Any, demo_dir: Path) -> bool:
    """Set the Train widget to the demo's generated set and settings (False: not a demo)."""
    import json

    from napari_allbag.demo.run import DEMO_FILE

    try:
        settings = json.loads((demo_dir / DEMO_FILE).read_text(encoding="utf-8"))["settings"]
    except (OSError, ValueError, KeyError):
        return False
    train.data_edit.setText(str(demo_dir / "data"))
    train.out_edit.setText(str(demo_dir / "training-again"))
    train.backbone_edit.setText(str(settings["backbone"]))
    train.epochs_spin.setValue(int(settings["epochs"]))
    train.batch_spin.setValue(int(settings["batch_size"]))
    train.img_size_spin.setValue(int(settings["img_size"]))
    train.crop_size_spin.setValue(int(settings["img_size"]))
    train.seed_spin.setValue(int(settings.get("seed", 0)))
    train.pretrained_check.setChecked(False)
    return True


def show_demo(bundle_path: str | os.PathLike, demo_dir: str | os.PathLike | None = None) -> None:
    """Open a napari window set up by `open_demo` and run until it is closed."""
    viewer = napari.Viewer(title="napari-allbag demo (synthetic cells, not for diagnosis)")
    open_demo(viewer, bundle_path, demo_dir, classify_field=True)
    print(
        "napari is open: the sample field is being classified; the 'Cell table' then lists its "
        "cells (click a row to centre a cell, A / H to correct it). 'Segment cells' (the tab "
        "behind the table) finds the cells of another image, 'Classify cells' tags them."
    )
    napari.run()
