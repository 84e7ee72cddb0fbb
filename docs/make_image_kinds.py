"""Make the pictures of docs/image-kinds.md: each kind of image with the cells the tool finds.

    python docs/make_image_kinds.py [--shared ../shared/data] [--out docs/images]

Real images come from the development sample beside the project (never copied into it); the
whole slide is generated (`data.synthetic_brightfield`), written as a tiled TIFF and segmented
in tiles like `napari-allbag segment` does. Each picture is the image with the outlines of the
cells found (yellow), the mode in the caption, shrunk to at most 640 px a side (PNG < 200 KB).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np

from napari_allbag.data.synthetic_brightfield import make_brightfield_field
from napari_allbag.io.images import read_image
from napari_allbag.progress import drive
from napari_allbag.segmentation.brightfield import segment_auto
from napari_allbag.segmentation.feedback import ImageFeedback
from napari_allbag.segmentation.tiles import TileOptions, segment_large

REPO = Path(__file__).resolve().parents[1]
YELLOW = (255, 220, 0)
SIDE = 640

KINDS = {  # picture name -> image below the shared data folder
    "kind-dark-cnmc": "cnmc_sample/all/UID_11_1_1_all.bmp",
    "kind-brightfield-crop": "brightfield_sample/crops/pbc_LY_179366.jpg",
    "kind-smear-field": "brightfield_sample/fields/sigtuple_test_1468054105.jpg",
}


def outlined(image: np.ndarray, labels: np.ndarray, caption: str) -> np.ndarray:
    """The image shrunk to `SIDE`, each cell's outline drawn over it, a caption at the top."""
    scale = min(1.0, SIDE / max(image.shape[:2]))
    size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
    canvas = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    small = cv2.resize(labels.astype(np.int32), size, interpolation=cv2.INTER_NEAREST)
    for cell_id in np.unique(small)[1:]:
        mask = (small == cell_id).astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(canvas, contours, -1, YELLOW, 2)
    return captioned(canvas, caption)


def boxed(overview: np.ndarray, table, factor: float, caption: str) -> np.ndarray:
    """Boxes of the cells (image coordinates / `factor`) over an overview of a whole slide."""
    canvas = overview.copy()
    for top, left, bottom, right in zip(
        table["bbox_min_row"],
        table["bbox_min_col"],
        table["bbox_max_row"],
        table["bbox_max_col"],
        strict=True,
    ):
        corner1 = (int(left / factor), int(top / factor))
        corner2 = (int(right / factor), int(bottom / factor))
        cv2.rectangle(canvas, corner1, corner2, YELLOW, 2)
    return captioned(canvas, caption)


def captioned(canvas: np.ndarray, text: str) -> np.ndarray:
    band = np.zeros((28, canvas.shape[1], 3), np.uint8)
    size = min(0.5, canvas.shape[1] / 760)  # the whole caption fits narrow pictures too
    cv2.putText(
        band, text, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, size, (255, 255, 255), 1, cv2.LINE_AA
    )
    return np.vstack([band, canvas])


def caption_of(result, what: str) -> str:
    feedback = ImageFeedback.of(result)
    return f"{what}: {feedback.mode_text}, {result.n_cells} {feedback.cell_word}(s)"


def whole_slide(folder: Path) -> np.ndarray:
    """A generated 4000 x 6000 smear written as a tiled TIFF and segmented in tiles."""
    import tifffile

    image, _ = make_brightfield_field(5, shape=(4000, 6000), n_white=24, n_touching_pairs=3)
    path = folder / "slide.tif"
    tifffile.imwrite(path, image, tile=(512, 512), compression="zlib")
    result = drive(segment_large(path, None, TileOptions(keep_labels=False, keep_crops=False)))
    factor = max(image.shape[:2]) / 560  # a smaller overview: generated texture compresses badly
    overview = cv2.resize(image, None, fx=1 / factor, fy=1 / factor, interpolation=cv2.INTER_AREA)
    caption = caption_of(result, "whole slide (generated, 24 MP, in tiles)")
    return boxed(overview, result.table, factor, caption)


def write(path: Path, rgb: np.ndarray) -> None:
    """A 256-colour PNG (photographs of smears compress badly as full colour)."""
    from PIL import Image

    Image.fromarray(rgb).quantize(256, dither=Image.Dither.NONE).save(path, optimize=True)
    print(f"{path}: {rgb.shape[1]} x {rgb.shape[0]}, {path.stat().st_size // 1024} KB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, relative in KINDS.items():
        path = args.shared / relative
        image = read_image(path)
        result = segment_auto(image, None, str(path))
        write(
            args.out / f"{name}.png", outlined(image, result.labels, caption_of(result, path.name))
        )
    with tempfile.TemporaryDirectory() as folder:
        write(args.out / "kind-whole-slide.png", whole_slide(Path(folder)))


if __name__ == "__main__":
    main()
