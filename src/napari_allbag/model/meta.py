"""Reading a bundle's `bundle.json` without torch: the one reader and its checks.

`load_bundle` (model.bundle), `napari-allbag info` (model.card) and anything else that needs a
bundle's metadata go through `read_bundle_meta`, so every caller gets the same messages. Imports
the standard library, `io.schema` and `model.trust` (numpy) only, no torch, so `info` answers at once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from napari_allbag import __version__
from napari_allbag.defaults import CLASS_NAMES
from napari_allbag.io.schema import validate_bundle_meta

#: Bumped when a bundle written by this version could not be read by an older one.
#: 2: temperatures, the default rule, the sensitivity threshold and the subjects (`model.trust`);
#: an older reader would drop them silently. Format-1 bundles load and predict as before.
FORMAT_VERSION = 2
META_FILE = "bundle.json"


class BundleError(ValueError):
    """A model bundle that cannot be saved or loaded; the message names the file and the fix."""


def bundle_folder(path: str | Path) -> Path:
    """The bundle folder `path` names (the folder itself, or its bundle.json)."""
    path = Path(path).expanduser()
    if path.is_file() and path.name == META_FILE:
        path = path.parent
    if not path.exists():
        raise BundleError(f"No model bundle at {path}: the folder does not exist.")
    if not path.is_dir():
        raise BundleError(
            f"{path} is a file; a model bundle is a folder (holding bundle.json and three "
            ".safetensors files, as written by `napari-allbag train`). Choose that folder."
        )
    return path


def read_bundle_meta(path: str | Path) -> dict[str, Any]:
    """bundle.json of a bundle folder, checked for format version; no weights are read."""
    folder = bundle_folder(path)
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise BundleError(
            f"{folder} is not a model bundle: {META_FILE} is missing. Choose the folder written by "
            "`napari-allbag train` (it holds bundle.json, model_a/model_b/combined.safetensors)."
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise BundleError(
            f"{meta_path} cannot be read as JSON ({error}). The bundle is damaged: train or copy it again."
        ) from error
    if not isinstance(meta, dict):
        raise BundleError(f"{meta_path} does not hold a JSON object. The bundle is damaged.")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BundleError(
            f"{meta_path} has no valid format_version (found {version!r}); it was not written by "
            "napari-allbag or is damaged."
        )
    if version > FORMAT_VERSION:
        raise BundleError(
            f"{meta_path}: this bundle was made by a newer napari-allbag (bundle format {version}; "
            f"this version {__version__} reads format {FORMAT_VERSION} and older). Upgrade "
            "napari-allbag (pip install -U napari-allbag) to load it."
        )
    validate_bundle_meta(meta, meta_path, error=BundleError)  # bounded before anything is built
    class_names = tuple(meta.get("class_names", CLASS_NAMES))
    if class_names != CLASS_NAMES:
        raise BundleError(
            f"{meta_path}: class_names are {list(class_names)}, napari-allbag expects "
            f"{list(CLASS_NAMES)}. The bundle was not made for this task."
        )
    if not isinstance(meta.get("backbone"), dict) or "name" not in meta["backbone"]:
        raise BundleError(f"{meta_path} does not say which backbone it uses ('backbone.name').")
    from napari_allbag.model.trust import trust_from_meta  # numpy only; loaded when needed

    try:
        trust_from_meta(meta)
    except ValueError as error:
        raise BundleError(
            f"{meta_path}: {error}. The calibration fields are damaged: train the bundle again, "
            "or delete the 'calibration', 'decision' and 'subjects' fields to use it uncalibrated."
        ) from error
    return meta
