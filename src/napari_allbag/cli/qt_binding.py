"""Is a Qt binding installed for napari's window? Asked before any long work, answered in a line.

napari's base install (`pip install napari`, and so `pip install napari-allbag`) brings no Qt
binding, and napari's guidance for plugins is not to depend on one (the user's environment may
hold conda's PyQt, or PySide): the binding comes with the optional extra
`pip install "napari-allbag[gui]"` (napari[pyqt6]) or with whatever Qt napari already has.
Without one, `import napari`'s window raises qtpy's QtBindingsNotFoundError; `demo --napari`
checks first, so a user learns what to install before the demo trains, not after.
"""

from __future__ import annotations

import importlib.util

#: The bindings qtpy (napari's Qt layer) can use, in qtpy's order of preference.
QT_BINDINGS = ("PyQt5", "PySide6", "PyQt6", "PySide2")
INSTALL_GUI = 'pip install "napari-allbag[gui]"'


def installed_qt_binding() -> str | None:
    """The first installed Qt binding qtpy can use (found, not imported), or None."""
    for name in QT_BINDINGS:
        try:
            if importlib.util.find_spec(name) is not None:
                return name
        except (ImportError, ValueError):  # a broken or half-removed package: not usable
            continue
    return None


def missing_qt_message() -> str | None:
    """None when napari can open a window; else one line saying what to install."""
    if installed_qt_binding() is not None:
        return None
    return (
        "the napari viewer needs a Qt binding and none is installed (PyQt6, PySide6, PyQt5 or "
        f'PySide2): {INSTALL_GUI} (or pip install "napari[pyqt6]"), then run this again'
    )
