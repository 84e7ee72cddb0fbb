"""napari's File > Open Sample entries: synthetic cells as LayerData tuples (no napari import).

* `single_cell`: one C-NMC-like ALL cell (450x450, black background), the shipped PNG.
* `field_of_cells`: a 1024x1024 field of separated ALL and HEM cells, with the true class and
  centre of each cell in the layer's metadata (`metadata["cells"]`).
* `annotated_set`: a small annotated folder (`all/`, `hem/`, C-NMC names) written to a temporary
  folder and opened as one layer per image, tiled in a grid, each layer's metadata holding its
  class, subject and file, and the folder, so the Train widget can be pointed at it.

The shipped files are read through `importlib.resources`, so this works from a wheel as well as an
editable install; where a file is missing or unreadable the same image is generated instead.
"""

from __future__ import annotations

import json
import tempfile
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from napari_allbag.data import synthetic

#: Cells in the demo annotated set, per class, and its subjects per class.
ANNOTATED_SET_PER_CLASS = 6
ANNOTATED_SET_SUBJECTS = 2
ANNOTATED_SET_SEED = 0
#: Columns of the grid the annotated set is tiled in.
GRID_COLUMNS = 4

LayerData = tuple[np.ndarray, dict, str]


def _read_shipped(name: str) -> bytes | None:
    """Bytes of a file in the package's sample_data/, or None where it is absent."""
    try:
        return (resources.files("napari_allbag") / "sample_data" / name).read_bytes()
    except (FileNotFoundError, NotADirectoryError, OSError):
        return None


def _decode_rgb(data: bytes | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """Decode image bytes to RGB uint8, or None where they are missing or not the expected shape."""
    if not data:
        return None
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.shape != shape:
        return None
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _image_layer(data: np.ndarray, name: str, metadata: dict, **extra) -> LayerData:
    return (data, {"name": name, "rgb": True, "metadata": metadata, **extra}, "image")


def single_cell() -> list[LayerData]:
    """One synthetic ALL cell as the challenge shows it: 450x450 RGB, stained cell on black."""
    name, label, seed = synthetic.SAMPLE_ALL_CELL
    size = synthetic.REFERENCE_SIZE
    image = _decode_rgb(_read_shipped(name), (size, size, 3))
    source = f"sample_data/{name}"
    if image is None:
        image = synthetic.make_cell(label, seed, size)
        source = f"generated: make_cell({label!r}, seed={seed})"
    metadata = {"label": label, "synthetic": True, "source": source}
    return [_image_layer(image, f"synthetic {label.upper()} cell", metadata)]


def field_of_cells() -> list[LayerData]:
    """A field of separated synthetic cells; metadata["cells"] lists each cell's class and centre."""
    name, seed = synthetic.SAMPLE_FIELD
    kwargs = synthetic.SAMPLE_FIELD_KWARGS
    image = _decode_rgb(_read_shipped(name), (*kwargs["shape"], 3))
    cells = None
    truth_bytes = _read_shipped(synthetic.SAMPLE_FIELD_TRUTH)
    if image is not None and truth_bytes:
        try:
            cells = json.loads(truth_bytes)["cells"]
        except (ValueError, KeyError):
            cells = None
    source = f"sample_data/{name}"
    if image is None or cells is None:
        image, truth = synthetic.make_field(seed, **kwargs)
        cells = [cell.to_dict() for cell in truth]
        source = f"generated: make_field(seed={seed})"
    metadata = {"cells": cells, "synthetic": True, "source": source}
    return [_image_layer(image, "synthetic field of cells", metadata)]


def default_annotated_set_dir() -> Path:
    """Where the demo annotated set is written (a fixed folder under the system's temp folder)."""
    return Path(tempfile.gettempdir()) / "napari-allbag-demo-annotated-set"


def annotated_set(out_dir: str | Path | None = None) -> list[LayerData]:
    """The demo annotated set: 12 synthetic cells (6 ALL, 6 HEM, 2 subjects each).

    The set is written as a C-NMC-like folder (`out_dir`, default `default_annotated_set_dir()`;
    regenerating it rewrites the same bytes) and each image becomes one RGB layer, named
    `<CLASS> <file stem>`, tiled in a grid. Each layer's metadata holds "label" ('all'/'hem'),
    "subject", "path" and "annotated_folder". Where the folder cannot be written the cells are
    generated in memory and "path"/"annotated_folder" are None.
    """
    folder = Path(out_dir) if out_dir is not None else default_annotated_set_dir()
    plan = synthetic.plan_annotated_folder(
        ANNOTATED_SET_PER_CLASS, ANNOTATED_SET_PER_CLASS, ANNOTATED_SET_SUBJECTS, ANNOTATED_SET_SEED
    )
    size = synthetic.REFERENCE_SIZE
    try:
        paths: list[Path | None] = synthetic.write_annotated_folder(
            folder,
            ANNOTATED_SET_PER_CLASS,
            ANNOTATED_SET_PER_CLASS,
            ANNOTATED_SET_SUBJECTS,
            ANNOTATED_SET_SEED,
            size,
            overwrite=True,  # same seed, same bytes: rewriting changes nothing
        )
    except OSError:
        paths = [None] * len(plan)
    layers = []
    for index, ((relative, label, subject, cell_seed, stain), path) in enumerate(
        zip(plan, paths, strict=True)
    ):
        image = None
        if path is not None:
            image = _decode_rgb(path.read_bytes() if path.is_file() else None, (size, size, 3))
        if image is None:
            image = synthetic.make_cell(label, cell_seed, size, stain)
        row, column = divmod(index, GRID_COLUMNS)
        metadata = {
            "label": label,
            "subject": subject,
            "path": str(path) if path is not None else None,
            "annotated_folder": str(folder) if path is not None else None,
            "synthetic": True,
        }
        layers.append(
            _image_layer(
                image,
                f"{label.upper()} {Path(relative).stem}",
                metadata,
                translate=(row * (size + 20), column * (size + 20)),
            )
        )
    return layers
