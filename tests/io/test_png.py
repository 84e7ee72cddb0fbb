"""encode_png: lossless with ISA-L and with the zlib fallback, read by OpenCV and Pillow."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from napari_allbag.io import png
from napari_allbag.io.images import find_images, read_image
from napari_allbag.segmentation.dark import segment_image


def images() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    noise = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)  # every row differs: wraps mod 256
    flat = np.zeros((5, 7, 3), np.uint8)
    gradient = np.add.outer(np.arange(64), np.arange(48)).astype(np.uint8) * 3
    return [noise, flat, np.full((1, 1, 3), 255, np.uint8), gradient, noise[:, :, 1]]


@pytest.fixture(params=["isal", "zlib"])
def deflater(request, monkeypatch):
    if request.param == "isal":
        pytest.importorskip("isal")
    else:
        monkeypatch.setattr(png, "isal_zlib", None)
    return request.param


def decoded_by_opencv(data: bytes, grey: bool) -> np.ndarray:
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    return array if grey else cv2.cvtColor(array, cv2.COLOR_BGR2RGB)


def test_every_decoder_gives_the_same_pixels_back(deflater):
    for image in images():
        data = png.encode_png(image)
        assert data.startswith(png.SIGNATURE)
        grey = image.ndim == 2
        np.testing.assert_array_equal(decoded_by_opencv(data, grey), image)
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()  # checks every chunk's CRC and the zlib stream
            assert opened.mode == ("L" if grey else "RGB")
            np.testing.assert_array_equal(np.asarray(opened), image)


def test_real_crops_round_trip_and_compress(cnmc_dir, deflater):
    for path in find_images([cnmc_dir])[:8]:
        crop = segment_image(read_image(path)).crops[0]
        data = png.encode_png(crop)
        np.testing.assert_array_equal(decoded_by_opencv(data, False), crop)
        assert len(data) < crop.nbytes / 2  # black around the cell: well under half


def test_non_contiguous_views_are_encoded_as_shown():
    image = images()[0]
    view = image[::2, ::-1]
    np.testing.assert_array_equal(decoded_by_opencv(png.encode_png(view), False), view)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((4, 4, 3), np.uint16),
        np.zeros((4, 4, 4), np.uint8),
        np.zeros((0, 4, 3), np.uint8),
        np.zeros((4,), np.uint8),
    ],
)
def test_other_arrays_are_refused(bad):
    with pytest.raises(ValueError, match="encode_png expects"):
        png.encode_png(bad)
