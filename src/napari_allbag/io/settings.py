"""Small user settings remembered between sessions (the last bundle folder), as JSON.

The file lives in the user config directory (`$NAPARI_ALLBAG_CONFIG_DIR` when set, for tests).
Settings are a convenience: a missing or broken file is ignored, never an error.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from napari_allbag.io.atomic import write_text_atomic

CONFIG_DIR_ENV = "NAPARI_ALLBAG_CONFIG_DIR"
SETTINGS_FILE = "settings.json"


def config_dir() -> Path:
    """Where napari-allbag keeps its settings."""
    override = os.environ.get(CONFIG_DIR_ENV)
    if override:
        return Path(override)
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "napari-allbag"


def settings_path() -> Path:
    return config_dir() / SETTINGS_FILE


def load_settings() -> dict[str, Any]:
    """All remembered settings ({} when none or unreadable)."""
    try:
        data = json.loads(settings_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_settings(values: dict[str, Any]) -> None:
    """Merge `values` into the settings file, atomically; failures are silent (a convenience)."""
    path = settings_path()
    data = load_settings()
    data.update(values)
    try:
        write_text_atomic(path, json.dumps(data, indent=2), mode=0o600, sync=False)
    except OSError:
        return


def last_bundle_dir() -> Path | None:
    """The bundle folder used last, if remembered."""
    value = load_settings().get("last_bundle_dir")
    return Path(value) if isinstance(value, str) and value else None


def remember_bundle_dir(path: str | Path) -> None:
    save_settings({"last_bundle_dir": str(Path(path).resolve())})
