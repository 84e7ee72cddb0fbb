"""The Cell table dock widget: one row per cell of the active image's results, and corrections.

It follows the active layer (an image or one of its results, `widgets.results.image_of`) and lists
the cells of that image's `cells [name]` layer: a crop thumbnail, the cell id, label, confidence,
the three models' P(ALL), the review flag (when the layer's features have one) and whether you
corrected it. Columns sort on click (numbers as numbers). Clicking a row selects the cell and
centres the viewer on it; clicking a cell in the viewer selects its row.

Corrections: with a cell selected, press A (ALL) or H (HEM) in the viewer (the keys are bound
while this dock is open) or use the "Set class" dropdown. The new label goes into the layer's
`label` column, `corrected` becomes True and `predicted_label` keeps the model's answer. "Export
annotated folder" writes every classified cell's crop (corrections included) into `all/` and
`hem/` under C-NMC-style names `UID_<subject>_<image>_<cell>_<class>.png`, so `napari-allbag
train` reads the subject back (`data.annotations`): the image layer's `subject` metadata, the
subject of a C-NMC image name, or else the image's own name (each image its own subject).
"""

from __future__ import annotations

import os
import re
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QIcon, QImage, QPixmap
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_allbag.widgets.base import show_error, status_label
from napari_allbag.widgets.results import (
    CELLS,
    CROPS_KEY,
    SOURCE_KEY,
    corrected_mask,
    find_result,
    flagged_mask,
    image_of,
    legend_html,
)

#: Table columns: header -> features column (None: made here).
COLUMNS = (
    ("crop", None),
    ("cell", "index"),
    ("label", "label"),
    ("confidence", "confidence"),
    ("P A", "p_all_model_a"),
    ("P B", "p_all_model_b"),
    ("P comb.", "p_all_combined"),
    ("review", None),
    ("corrected", None),
)
HEADER_TIPS = {
    4: "P(ALL) of model-A (stage 1, bagging subset A)",
    5: "P(ALL) of model-B (stage 1, bagging subset B)",
    6: "P(ALL) of the combined model (both backbones' features)",
    7: "why the cell is flagged for review (when the results have review flags)",
}
THUMBNAIL_PX = 40
CLASS_KEYS = {"a": "all", "h": "hem"}
_C_NMC_NAME = re.compile(r"^UID_(?P<subject>[^_]+)_", re.I)


class _NumberItem(QTableWidgetItem):
    """A table item that sorts by its number, not its text."""

    def __init__(self, value: float, text: str):
        super().__init__(text)
        self.value = value

    def __lt__(self, other):  # noqa: D105 - Qt's sort
        if isinstance(other, _NumberItem):
            return self.value < other.value
        return super().__lt__(other)


class CellTableWidget(QWidget):
    """Dock widget: the cells of the active image, sortable, linked to the viewer; corrections."""

    def __init__(self, napari_viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.layer: Any = None  # the cells layer shown
        self._following_layer = False  # selecting a row because the layer's selection changed
        self.title = QLabel("no classified image: run Classify, then pick its image")
        self.title.setWordWrap(True)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels([name for name, _ in COLUMNS])
        for column, tip in HEADER_TIPS.items():
            self.table.horizontalHeaderItem(column).setToolTip(tip)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setIconSize(QPixmap(THUMBNAIL_PX, THUMBNAIL_PX).size())
        self.table.verticalHeader().setDefaultSectionSize(THUMBNAIL_PX + 4)
        self.table.verticalHeader().setVisible(False)
        self.table.setSortingEnabled(True)
        self.class_combo = QComboBox()
        self.class_combo.addItems(["ALL", "HEM"])
        self.set_button = QPushButton("Set class")
        self.set_button.setToolTip("or press A (ALL) / H (HEM) in the viewer")
        self.export_csv_button = QPushButton("Export CSV…")
        self.export_folder_button = QPushButton("Export annotated folder…")
        self.legend = QLabel(legend_html())
        self.status = status_label()

        correct_row = QHBoxLayout()
        correct_row.addWidget(QLabel("Selected cell:"))
        correct_row.addWidget(self.class_combo)
        correct_row.addWidget(self.set_button)
        export_row = QHBoxLayout()
        export_row.addWidget(self.export_csv_button)
        export_row.addWidget(self.export_folder_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.title)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.legend)
        layout.addLayout(correct_row)
        layout.addLayout(export_row)
        layout.addWidget(self.status)

        self.table.itemSelectionChanged.connect(self._row_selected)
        self.set_button.clicked.connect(lambda: self.correct(self.class_combo.currentText()))
        self.export_csv_button.clicked.connect(self._export_csv_dialog)
        self.export_folder_button.clicked.connect(self._export_folder_dialog)
        napari_viewer.layers.selection.events.active.connect(self._follow_active)
        napari_viewer.layers.events.inserted.connect(self._follow_active)
        napari_viewer.layers.events.removed.connect(self._follow_active)
        self._bind_keys()
        self.destroyed.connect(_unbind_keys_of(napari_viewer))
        self._follow_active()

    # ------------------------------------------------------------------ which layer

    def _follow_active(self, event=None) -> None:
        image = image_of(self.viewer, self.viewer.layers.selection.active)
        layer = find_result(self.viewer, CELLS, image.name) if image is not None else None
        if layer is None and self.layer is not None and self.layer in self.viewer.layers:
            return  # e.g. a Points layer became active: keep showing the last image
        self.show_layer(layer)

    def show_layer(self, layer: Any) -> None:
        """List the cells of `layer` (a cells Labels layer; None clears the table)."""
        if layer is not self.layer:
            self._disconnect()
            self.layer = layer
            if layer is not None:
                layer.events.features.connect(self.refresh)
                layer.events.selected_label.connect(self._label_selected)
                layer.mouse_drag_callbacks.append(_click_selects_cell)
        self.refresh()

    def _disconnect(self) -> None:
        old = self.layer
        if old is None:
            return
        old.events.features.disconnect(self.refresh)
        old.events.selected_label.disconnect(self._label_selected)
        if _click_selects_cell in old.mouse_drag_callbacks:
            old.mouse_drag_callbacks.remove(_click_selects_cell)

    # ------------------------------------------------------------------ the rows

    def refresh(self, event=None) -> None:
        """Fill the table from the layer's features (after a run or a correction)."""
        layer = self.layer
        self.table.setSortingEnabled(False)
        self.table.setRowCount(0)
        if layer is None or "label" not in layer.features:
            self.title.setText("no classified image: run Classify, then pick its image")
            self.table.setSortingEnabled(True)
            return
        frame = layer.features
        self.title.setText(
            f"{len(frame)} cell(s) of '{layer.metadata.get(SOURCE_KEY, layer.name)}'"
        )
        crops = layer.metadata.get(CROPS_KEY)
        n = len(frame)
        flagged, corrected = flagged_mask(frame, n), corrected_mask(frame, n)
        review = _review_texts(frame, flagged)
        self.table.setRowCount(n)
        for row in range(n):
            self._fill_row(row, frame.iloc[row], crops, review[row], bool(corrected[row]))
        self.table.setSortingEnabled(True)
        header = self.table.horizontalHeader()
        if header.sortIndicatorSection() == 0:  # thumbnails do not sort: start by cell id
            self.table.sortItems(1, Qt.SortOrder.AscendingOrder)
        self.table.resizeColumnsToContents()

    def _fill_row(self, row: int, cells: Any, crops: Any, review: str, corrected: bool) -> None:
        thumbnail = QTableWidgetItem()
        if crops is not None and row < len(crops):
            thumbnail.setIcon(QIcon(_thumbnail(np.asarray(crops[row]))))
        self.table.setItem(row, 0, thumbnail)
        for column, (_, name) in enumerate(COLUMNS[1:7], start=1):
            value = cells.get(name)
            if isinstance(value, (int, float, np.integer, np.floating)):
                text = f"{int(value)}" if name == "index" else f"{float(value):.3f}"
                item = _NumberItem(float(value), text)
            else:
                item = QTableWidgetItem("" if value is None else str(value).upper())
            self.table.setItem(row, column, item)
        self.table.item(row, 1).setData(Qt.ItemDataRole.UserRole, int(cells["index"]))
        self.table.setItem(row, 7, QTableWidgetItem(review))
        self.table.setItem(row, 8, QTableWidgetItem("yes" if corrected else ""))

    def row_of(self, cell_id: int) -> int | None:
        for row in range(self.table.rowCount()):
            item = self.table.item(row, 1)
            if item is not None and item.data(Qt.ItemDataRole.UserRole) == cell_id:
                return row
        return None

    def selected_cell(self) -> int | None:
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            return None
        return int(self.table.item(rows[0].row(), 1).data(Qt.ItemDataRole.UserRole))

    def _row_selected(self) -> None:
        cell_id = self.selected_cell()
        if cell_id is None or self.layer is None:
            return
        if self.layer.selected_label != cell_id:
            self.layer.selected_label = cell_id
        if not self._following_layer:  # a row picked in the table: show its cell
            self.centre_on(cell_id)

    def _label_selected(self, event=None) -> None:
        """The layer's selected label changed (a click on a cell, or napari re-announcing it
        whenever the colours change, as after every run and correction): select its row, and
        leave the view where the user has it."""
        row = self.row_of(int(self.layer.selected_label))
        if row is not None and row not in [i.row() for i in self.table.selectedIndexes()]:
            self._following_layer = True
            try:
                self.table.selectRow(row)
            finally:
                self._following_layer = False
            self.table.scrollToItem(self.table.item(row, 1))

    def centre_on(self, cell_id: int) -> None:
        """Centre the viewer on a cell (its centroid, else the middle of its pixels)."""
        frame = self.layer.features
        rows = np.flatnonzero(np.asarray(frame["index"]) == cell_id)
        if {"centroid_row", "centroid_col"} <= set(frame.columns) and len(rows):
            centre = frame[["centroid_row", "centroid_col"]].to_numpy(float)[rows[0]]
        else:
            where = np.argwhere(np.asarray(self.layer.data) == cell_id)
            if not len(where):
                return
            centre = where.mean(axis=0)
        world = self.layer.data_to_world(centre)
        self.viewer.camera.center = tuple(float(v) for v in world[-2:])

    # ------------------------------------------------------------------ corrections

    def _bind_keys(self) -> None:
        for key, name in CLASS_KEYS.items():
            self.viewer.bind_key(key, _key_callback(self, name), overwrite=True)

    def correct(self, class_name: str, cell_id: int | None = None) -> bool:
        """Set the selected (or given) cell's class: the label changes, marked as a correction."""
        layer = self.layer
        cell_id = cell_id if cell_id is not None else self.selected_cell()
        if cell_id is None and layer is not None and layer.selected_label > 0:
            cell_id = int(layer.selected_label)
        if layer is None or cell_id is None or "label" not in layer.features:
            self.status.setText("select a classified cell first")
            return False
        frame = layer.features.copy()
        rows = np.flatnonzero(np.asarray(frame["index"]) == cell_id)
        if not len(rows):
            self.status.setText(f"cell {cell_id} is not in the table")
            return False
        if "predicted_label" not in frame:
            frame["predicted_label"] = frame["label"]
        if "corrected" not in frame:
            frame["corrected"] = False
        name = class_name.lower()
        frame.loc[frame.index[rows[0]], "label"] = name
        predicted = frame.loc[frame.index[rows[0]], "predicted_label"]
        frame.loc[frame.index[rows[0]], "corrected"] = name != predicted
        layer.features = frame
        from napari_allbag.widgets.classify import refresh_cells_display

        refresh_cells_display(self.viewer, layer)
        self.status.setText(f"cell {cell_id} set to {name.upper()}")
        row = self.row_of(cell_id)
        if row is not None:
            self.table.selectRow(row)
        return True

    # ------------------------------------------------------------------ export

    def export_csv(self, path: str | os.PathLike) -> Path:
        """Write the shown cells' features (corrections included) to `path` atomically."""
        if self.layer is None or "label" not in self.layer.features:
            raise ValueError("no classified cells to export")
        return _write_atomic(Path(path), self.layer.features.to_csv(index=False).encode())

    def export_annotated(self, folder: str | os.PathLike) -> int:
        """Write each classified cell's crop into folder/all or folder/hem; returns the count."""
        import cv2

        layer = self.layer
        crops = layer.metadata.get(CROPS_KEY) if layer is not None else None
        if crops is None or "label" not in layer.features:
            raise ValueError("no classified cells with crops to export")
        image_name = str(layer.metadata.get(SOURCE_KEY, layer.name))
        image = self.viewer.layers[image_name] if image_name in self.viewer.layers else None
        subject = subject_of(image_name, getattr(image, "metadata", {}))
        image_number = zlib.crc32(image_name.encode()) % 10**6
        frame = layer.features
        for row, (cell_id, label) in enumerate(zip(frame["index"], frame["label"], strict=True)):
            out = Path(folder) / str(label)
            out.mkdir(parents=True, exist_ok=True)
            name = f"UID_{subject}_{image_number}_{int(cell_id)}_{label}.png"
            ok, png = cv2.imencode(".png", np.asarray(crops[row])[..., ::-1])
            if not ok:
                raise OSError(f"could not encode the crop of cell {cell_id}")
            _write_atomic(out / name, png.tobytes())
        return len(frame)

    def _export_csv_dialog(self) -> None:
        chosen, _ = QFileDialog.getSaveFileName(self, "Export cells", "cells.csv", "CSV (*.csv)")
        if chosen:
            self._report(lambda: f"exported to {self.export_csv(chosen)}")

    def _export_folder_dialog(self) -> None:
        chosen = QFileDialog.getExistingDirectory(self, "Annotated folder to write into")
        if chosen:
            self._report(lambda: f"{self.export_annotated(chosen)} crop(s) written to {chosen}")

    def _report(self, action) -> None:
        try:
            self.status.setText(action())
        except (OSError, ValueError) as error:
            self.status.setText(f"<b>Error:</b> {error}")
            show_error("Cell table", str(error))


def subject_of(image_name: str, metadata: dict) -> str:
    """The subject of an image: its `subject` metadata, a C-NMC name's subject, or its name;
    letters and digits only (an underscore would break the file-name pattern)."""
    subject = metadata.get("subject") if isinstance(metadata, dict) else None
    if not subject:
        match = _C_NMC_NAME.match(image_name)
        subject = match.group("subject") if match else Path(image_name).stem
    return re.sub(r"[^A-Za-z0-9]", "", str(subject)) or "unknown"


def _review_texts(frame: Any, flagged: np.ndarray) -> list[str]:
    for name in ("review", "review_reasons"):
        if name in frame:
            return ["" if not f else str(v) for v, f in zip(frame[name], flagged, strict=True)]
    return ["flagged" if f else "" for f in flagged]


def _thumbnail(crop: np.ndarray) -> QPixmap:
    rgb = np.ascontiguousarray(crop[..., :3].astype(np.uint8))
    height, width = rgb.shape[:2]
    image = QImage(rgb.data, width, height, 3 * width, QImage.Format.Format_RGB888).copy()
    return QPixmap.fromImage(image).scaled(
        THUMBNAIL_PX, THUMBNAIL_PX, Qt.AspectRatioMode.KeepAspectRatio
    )


def _click_selects_cell(layer, event) -> None:
    """A click on a cell selects it (and so its row in the table)."""
    value = layer.get_value(event.position, world=True)
    if isinstance(value, (int, np.integer)) and value > 0:
        layer.selected_label = int(value)


def _key_callback(widget: CellTableWidget, class_name: str):
    def set_class(viewer) -> None:
        widget.correct(class_name)

    set_class.__name__ = f"allbag_set_{class_name}"
    return set_class


def _unbind_keys_of(viewer):
    def unbind(*_) -> None:
        for key in CLASS_KEYS:
            try:
                viewer.bind_key(key, None, overwrite=True)
            except Exception:  # noqa: BLE001 - the viewer may be closing
                pass

    return unbind


def _write_atomic(path: Path, data: bytes) -> Path:
    from napari_allbag.io.atomic import write_bytes_atomic

    write_bytes_atomic(path, data)
    return path
