"""`napari-allbag demo --napari`: the viewer with the sample field, the widgets and a bundle.

The only demo module that imports napari. `open_demo(viewer, bundle)` does the wiring on a viewer
it is given (so tests use `make_napari_viewer`); `show_demo(bundle)` makes the viewer and runs
napari's event loop until the window is closed.
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
WIDGETS = ("Segment cells", "Classify cells", "Train ensemble")
FIELD_SAMPLE = "field"


def open_demo(
    viewer: napari.Viewer, bundle_path: str | os.PathLike, demo_dir: str | os.PathLike | None = None
) -> dict[str, Any]:
    """Open the sample field, dock the three widgets and choose `bundle_path` in Classify.

    With `demo_dir` (a finished demo's folder) the Train widget is filled in to train the demo
    model again from its generated set. Returns the widgets by their display name. The model
    itself loads when Run is pressed.
    """
    layers = viewer.open_sample(PLUGIN, FIELD_SAMPLE)
    widgets, docks = {}, {}
    for name in WIDGETS:
        # Train shares a tab with Classify, so the two widgets used first get the room
        docks[name], widgets[name] = viewer.window.add_plugin_dock_widget(
            PLUGIN, name, tabify=name == "Train ensemble"
        )
    # once the tabs exist (next event-loop turn), show Classify's rather than Train's
    QTimer.singleShot(0, partial(_raise_dock, docks["Classify cells"]))
    classify = widgets["Classify cells"]
    if classify.set_bundle(Path(bundle_path), remember=False):
        # crops made at the bundle's size are classified as they are, not cut again
        crop_size = (read_bundle_meta(bundle_path).get("segmentation") or {}).get("crop_size")
        if crop_size:
            widgets["Segment cells"].crop_size.value = int(crop_size)
    if demo_dir is not None:
        fill_train_widget(widgets["Train ensemble"], Path(demo_dir))
    if layers:
        viewer.layers.selection.active = layers[0]
    viewer.reset_view()
    return widgets


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
    open_demo(viewer, bundle_path, demo_dir)
    print(
        "napari is open: press Run in 'Segment cells' to find the cells, then Run in 'Classify "
        "cells' (it picks the image's 'cells [...]' layer) to tag them ALL or HEM with the bundle."
    )
    napari.run()
