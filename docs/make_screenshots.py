"""Take the user guide's screenshots from a real napari viewer (docs/images/*.png).

    xvfb-run -a python docs/make_screenshots.py [--demo-dir DIR] [--quick]

Opens the viewer the way `napari-allbag demo --napari` does (sample field of cells, the three
widgets docked, the demo bundle chosen in Classify), presses Run in Segment and Classify, runs a
short training in the Train widget, and saves:

    segment.png   the Segment widget and the cells it found (outlines, crops)
    classify.png  the Classify widget and the cells tagged ALL / HEM with confidence
    cell-table.png  the Cell table beside the viewer: a cell selected, one corrected
    train.png     the Train widget after a short run (curves, validation report)
    overview.png  the whole window, the README's picture
    demo-overlay.png  the demo's overlay.png (the sample field, each cell outlined and tagged)

The bundle comes from a finished demo folder (`--demo-dir`, e.g. one `napari-allbag demo` wrote);
without one a demo is run first into a temporary folder (`--quick` for the smallest one). Each
PNG is downscaled until it is under 300 KB.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from napari_allbag.demo.run import is_finished_demo, run_demo
from napari_allbag.demo.viewer import WIDGETS, fill_train_widget, open_demo
from napari_allbag.io.atomic import write_bytes_atomic
from napari_allbag.progress import drive

IMAGES = Path(__file__).resolve().parent / "images"
MAX_BYTES = 300_000
WINDOW = (1500, 950)


def wait_until(done, timeout: float, what: str) -> None:
    """Run the Qt event loop until `done()` is true (the widgets work in background threads)."""
    end = time.monotonic() + timeout
    while not done():
        if time.monotonic() > end:
            raise TimeoutError(f"{what} did not finish within {timeout:.0f} s")
        QApplication.processEvents()
        time.sleep(0.02)
    for _ in range(20):  # let the layers and the dock redraw
        QApplication.processEvents()
        time.sleep(0.02)


def save_small(rgba: np.ndarray, path: Path) -> None:
    """Save as PNG, halving the size step by step (INTER_AREA) until it is under MAX_BYTES."""
    rgb = np.ascontiguousarray(np.asarray(rgba)[..., :3])
    scale = 1.0
    while True:
        image = (
            rgb
            if scale == 1.0
            else cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        )
        ok, encoded = cv2.imencode(
            ".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9]
        )
        if ok and (len(encoded) <= MAX_BYTES or scale < 0.3):
            break
        scale *= 0.85
    write_bytes_atomic(path, encoded.tobytes())
    print(f"{path}: {image.shape[1]}x{image.shape[0]}, {path.stat().st_size // 1024} KB")


def show_only(viewer: napari.Viewer, names: tuple[str, ...]) -> None:
    """Show the named plugin docks and hide the others."""
    for name in WIDGETS:
        dock, _widget = viewer.window.add_plugin_dock_widget("napari-allbag", name)
        dock.setVisible(name in names)
    QApplication.processEvents()


def screenshot(viewer: napari.Viewer, name: str) -> None:
    for _ in range(10):
        QApplication.processEvents()
        time.sleep(0.05)
    save_small(viewer.screenshot(canvas_only=False, flash=False), IMAGES / name)


def demo_folder(args: argparse.Namespace, scratch: Path) -> Path:
    if args.demo_dir is not None:
        if not is_finished_demo(args.demo_dir):
            sys.exit(f"{args.demo_dir} does not hold a finished demo (run napari-allbag demo)")
        return args.demo_dir
    out_dir = scratch / "demo"
    print(f"running the {'quick ' if args.quick else ''}demo into {out_dir} ...")
    drive(run_demo(out_dir, quick=args.quick))
    return out_dir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo-dir", type=Path, default=None, help="a finished demo folder")
    parser.add_argument("--quick", action="store_true", help="run the quick demo for the bundle")
    parser.add_argument("--skip-train", action="store_true", help="no training (train.png kept)")
    args = parser.parse_args()
    IMAGES.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="allbag-screenshots-") as scratch:
        # the crop cache and the remembered bundle of this run stay out of the user's folders
        os.environ["NAPARI_ALLBAG_CACHE_DIR"] = str(Path(scratch) / "crop-cache")
        os.environ["NAPARI_ALLBAG_CONFIG_DIR"] = str(Path(scratch) / "config")
        demo_dir = demo_folder(args, Path(scratch))
        overlay = cv2.cvtColor(cv2.imread(str(demo_dir / "overlay.png")), cv2.COLOR_BGR2RGB)
        save_small(overlay, IMAGES / "demo-overlay.png")
        viewer = napari.Viewer(title="napari-allbag")
        viewer.window.resize(*WINDOW)
        widgets = open_demo(viewer, demo_dir / "bundle", demo_dir)
        segment = widgets["Segment cells"]
        classify = widgets["Classify cells"]
        train = widgets["Train ensemble"]

        show_only(viewer, ("Segment cells",))
        segment.run()
        wait_until(lambda: segment.worker is None, 120, "Segment")
        viewer.reset_view()
        screenshot(viewer, "segment.png")

        show_only(viewer, ("Classify cells",))
        classify.run()  # its picker followed the Segment widget's `cells [image]` layer
        wait_until(lambda: not classify.is_running, 300, "Classify")
        cells = next(layer for layer in viewer.layers if layer.name.startswith("cells ["))
        viewer.layers.selection.active = cells
        screenshot(viewer, "classify.png")

        show_only(viewer, ("Cell table",))
        _dock, table = viewer.window.add_plugin_dock_widget("napari-allbag", "Cell table")
        first = int(cells.features["index"].iloc[0])
        table.correct("hem" if cells.features["label"].iloc[0] == "all" else "all", first)
        table.table.selectRow(table.row_of(int(cells.features["index"].iloc[-1])))
        screenshot(viewer, "cell-table.png")
        viewer.reset_view()

        show_only(viewer, ("Segment cells", "Classify cells"))
        screenshot(viewer, "overview.png")

        if args.skip_train:
            viewer.close()
            return 0
        show_only(viewer, ("Train ensemble",))
        fill_train_widget(train, demo_dir)
        train.out_edit.setText(str(Path(scratch) / "training-again"))
        if not train.start():
            sys.exit(f"the Train widget did not start: {train.last_error}")
        wait_until(lambda: not train.is_running, 600, "Train")
        screenshot(viewer, "train.png")
        viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
