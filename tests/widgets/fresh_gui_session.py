"""A user's first napari session, run as a script in a fresh process by test_fresh_process_gui.

Nothing is imported before napari (no torch, no timm): napari opens its OpenGL canvas first, as
when napari is started from a shell, and the plugin's widgets come from the Plugins machinery.
Usage: python fresh_gui_session.py BUNDLE_DIR ANNOTATED_DIR RUN_DIR. Prints one line per step
and SESSION-OK at the end; any failure exits non-zero (a crash kills the process).
"""

import napari  # first, before anything of the plugin's: the order a user's napari has

# isort: split
import sys
import time
from pathlib import Path

import yaml
from qtpy.QtWidgets import QApplication

TIMEOUT_S = 60.0


def wait_until(condition, what: str, timeout: float = TIMEOUT_S) -> None:
    """Run the Qt event loop until `condition()` holds; fail after `timeout` seconds."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise SystemExit(f"timed out waiting for {what}")
        QApplication.processEvents()
        time.sleep(0.01)


def settle(seconds: float = 0.3) -> None:
    """Let the viewer draw (the GL context is live from here on)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.01)


def dock_every_widget(viewer) -> dict:
    """Dock each widget the manifest lists, through napari's Plugins machinery."""
    import napari_allbag

    manifest = Path(napari_allbag.__file__).with_name("napari.yaml")
    names = [
        w["display_name"] for w in yaml.safe_load(manifest.read_text())["contributions"]["widgets"]
    ]
    docked = {}
    for name in names:
        _, widget = viewer.window.add_plugin_dock_widget("napari-allbag", name)
        settle()
        docked[name] = getattr(widget, "native", widget)
        print(f"docked {name}: {type(docked[name]).__name__}", flush=True)
    return docked


def classify(viewer, widget, bundle: Path) -> None:
    from napari_allbag.data.synthetic import make_field

    image, _ = make_field(seed=3, n_cells=4, shape=(256, 256))
    viewer.add_image(image, name="field", rgb=True)
    settle()
    assert widget.set_bundle(bundle), widget.bundle_info.text()
    widget.layer_combo.setCurrentText("field")
    widget.run()
    wait_until(lambda: not widget.is_running, "Classify to finish")
    table = widget.results_table
    assert table is not None and len(table) > 0, widget.status.text()
    print(f"classified {len(table)} cells: {widget.summary.text()}", flush=True)


def classify_folder(widget, folder: Path, overlays: Path) -> None:
    """A folder run with overlays: its four-line status must push the rows below it down (in a
    scroll area the layout kept its old height and the legend was drawn over the text)."""
    import cv2

    from napari_allbag.data.synthetic import make_field

    folder.mkdir()
    for seed in (4, 5):
        image, _ = make_field(seed=seed, n_cells=3, shape=(256, 256))
        cv2.imwrite(str(folder / f"field_{seed}.png"), image[..., ::-1].copy())
    widget.folder_edit.setText(str(folder))
    widget.overlays_edit.setText(str(overlays))
    widget.classify_folder()
    wait_until(lambda: not widget.is_running, "Classify folder to finish")
    settle()
    status, below = widget.status, widget.summary.geometry()
    assert widget.folder_run is not None, status.text()
    assert len(list(overlays.glob("*.png"))) == 2, status.text()
    assert status.geometry().bottom() < below.top(), f"{status.geometry()} over {below}"
    print(f"classified a folder: {status.text()[:60]}...", flush=True)


def segment(viewer, widget) -> None:
    """Segment a generated smear: its warning (small "hem" nuclei) must show whole in the dock
    (in a napari-first script, the status used to keep one short line's size: 88 x 34 px)."""
    from napari_allbag.data.synthetic_brightfield import BrightfieldLook, make_brightfield_field

    image, _ = make_brightfield_field(3, shape=(750, 1000), look=BrightfieldLook(scale=0.5))
    viewer.add_image(image, name="smear", rgb=True)
    settle()
    widget.image_choice.value = viewer.layers["smear"]
    widget.run()
    wait_until(lambda: widget.worker is None, "Segment to finish")
    settle()
    status = widget.status
    assert "nucleus smaller than a red cell" in status.value, status.value
    need = status.heightForWidth(status.width())
    assert status.height() >= need, f"status cut: {status.geometry()} needs {need} px"
    print(f"segmented: {status.value[:60]}...", flush=True)


def train_and_cancel(widget, data: Path, run: Path) -> None:
    widget.data_edit.setText(str(data))
    widget.out_edit.setText(str(run))
    widget.backbone_edit.setText("test_resnet")
    widget.epochs_spin.setValue(50)
    widget.batch_spin.setValue(8)
    widget.img_size_spin.setValue(32)
    widget.crop_size_spin.setValue(32)
    widget.pretrained_check.setChecked(False)
    assert widget.start(), widget.last_error
    wait_until(lambda: widget._rows or not widget.is_running, "the first training epoch")
    assert widget.is_running, f"training stopped early: {widget.last_error}"
    widget.cancel()
    wait_until(lambda: not widget.is_running, "training to stop after Cancel")
    assert widget.result is None and widget.last_error is None, widget.last_error
    print(f"training cancelled: {widget.stage_label.text()}", flush=True)


def main(bundle: Path, data: Path, run: Path) -> None:
    assert "torch" not in sys.modules, "torch was imported before napari"
    viewer = napari.Viewer()
    settle()
    docked = dock_every_widget(viewer)
    segment(viewer, docked["Segment cells"])
    classify(viewer, docked["Classify cells"], bundle)
    classify_folder(docked["Classify cells"], run.parent / "folder", run.parent / "overlays")
    train_and_cancel(docked["Train ensemble"], data, run)
    viewer.close()
    print(f"triton: {sys.modules.get('triton')!r}", flush=True)
    print("SESSION-OK", flush=True)


if __name__ == "__main__":
    main(*(Path(arg) for arg in sys.argv[1:4]))
