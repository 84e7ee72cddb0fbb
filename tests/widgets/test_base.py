"""widgets.base in a real viewer: every dock fits a 1,000 px high window (scrolling where its
content is taller), and no row of it is squeezed (wrapped labels keep all their lines)."""

from __future__ import annotations

import pytest
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QApplication, QLabel, QWidget

#: The window height every dock must fit, and a narrow dock's width (px).
SCREEN_HEIGHT = 1000
NARROW_DOCK = 300
DOCKS = ("Segment cells", "Classify cells", "Train ensemble", "Cell table")


def dock_in_window(viewer, qtbot, name: str, width: int = NARROW_DOCK, height: int = SCREEN_HEIGHT):
    """Dock the manifest's widget `name` in the shown window of `height`, the dock `width` wide;
    returns (dock, widget) once the layout has settled."""
    window = viewer.window._qt_window
    window.resize(1200, height)
    dock, widget = viewer.window.add_plugin_dock_widget("napari-allbag", name)
    window.resizeDocks([dock], [width], Qt.Orientation.Horizontal)
    qtbot.waitUntil(dock.isVisible)
    for _ in range(20):
        QApplication.processEvents()
    return dock, widget


def squeezed(content: QWidget) -> list[str]:
    """The widgets a layout placed in `content` that are shorter than they need: a wrapped label
    below the height of its text at its width, any other below its smaller size hint (the inner
    parts of tables and scroll bars are placed by their owner, not a layout)."""
    found = []
    for child in content.findChildren(QWidget):
        if not child.isVisibleTo(content) or child.width() <= 0 or _placed_by_owner(child):
            continue
        if isinstance(child, QLabel) and child.wordWrap() and child.text():
            need = child.heightForWidth(child.width())
        else:  # what a layout may shrink it to: its own minimum (a style sheet's), else the hint
            need = child.minimumSize().height() or child.minimumSizeHint().height()
            need = min(need, child.sizeHint().height())
        if child.height() < need:
            found.append(
                f"{type(child).__name__} {getattr(child, 'text', lambda: '')()!r}: "
                f"{child.height()} < {need} px"
            )
    return found


def _placed_by_owner(widget: QWidget) -> bool:
    """Whether `widget` is placed by its parent's code (a combo box's line edit, a table's
    header) rather than by a layout of its parent."""
    parent = widget.parentWidget()
    return parent is None or not _in_layout(parent.layout(), widget)


def _in_layout(layout, widget: QWidget) -> bool:
    if layout is None:
        return False
    for i in range(layout.count()):
        item = layout.itemAt(i)
        if item.widget() is widget or _in_layout(item.layout(), widget):
            return True
    return False


@pytest.mark.parametrize("name", DOCKS)
def test_each_dock_fits_a_1000_px_window(make_napari_viewer, qtbot, name):
    viewer = make_napari_viewer(show=True)
    dock, widget = dock_in_window(viewer, qtbot, name)
    window = viewer.window._qt_window
    assert window.height() <= SCREEN_HEIGHT, f"{name} makes the window {window.height()} px high"
    assert dock.minimumSizeHint().height() < SCREEN_HEIGHT - 100
    assert squeezed(getattr(widget, "native", widget)) == []
