"""read_image and find_images against partial files, odd pixel types, link loops and the tool's
own outputs lying among the data."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import tifffile

from napari_allbag.data.annotations import scan_annotated_folder
from napari_allbag.io.images import ImageReadError, find_images, read_image


def _field(size: int = 160) -> np.ndarray:
    """A smooth colour image (compresses like a photograph, not like noise)."""
    yy, xx = np.mgrid[:size, :size]
    return np.dstack([xx % 256, yy % 256, (xx + yy) % 256]).astype(np.uint8)


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("keep", [0.95, 0.7, 0.4])
def test_a_truncated_jpeg_is_refused_naming_the_file(tmp_path, progressive, keep):
    whole = tmp_path / "whole.jpg"
    cv2.imwrite(str(whole), _field(), [cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)])
    data = whole.read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: int(len(data) * keep)])
    assert read_image(whole).shape == (160, 160, 3)
    with pytest.raises(ImageReadError, match="truncated JPEG") as caught:
        read_image(cut)
    assert caught.value.path == cut


def test_a_jpeg_with_a_thumbnail_and_trailing_bytes_still_reads(tmp_path):
    from PIL import Image

    path = tmp_path / "camera.jpg"
    thumbnail = tmp_path / "thumb.jpg"
    Image.fromarray(_field(32)).save(thumbnail)
    exif = Image.Exif()
    exif[0x010E] = "a microscope"  # ImageDescription
    Image.fromarray(_field()).save(path, exif=exif, quality=90)
    path.write_bytes(path.read_bytes() + b"\x00" * 100)  # padding some cameras add after the end
    assert read_image(path).shape == (160, 160, 3)


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif"])
def test_other_partial_images_are_refused(tmp_path, suffix):
    whole = tmp_path / f"whole{suffix}"
    cv2.imwrite(str(whole), _field())
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.7)])
    with pytest.raises(ImageReadError) as caught:
        read_image(cut)
    assert caught.value.path == cut


@pytest.mark.parametrize("dtype", [np.float64, np.int32, np.int64, np.int8, np.uint32])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_tiffs_of_any_pixel_type_are_converted(tmp_path, dtype, channels):
    ramp = np.linspace(-5, 1000, 30 * 40).reshape(30, 40)
    if np.issubdtype(dtype, np.unsignedinteger):
        ramp = ramp + 5
    if dtype is np.int8:
        ramp = ramp / 10 - 50
    planes = [np.full_like(ramp, ramp.min()), ramp, ramp][: min(channels, 3)][::-1]
    planes = planes[::-1] if channels > 1 else planes  # red: the minimum; green, blue: the ramp
    if channels == 4:
        planes.append(np.full_like(ramp, ramp.max()))  # fully opaque alpha
    array = np.dstack(planes).astype(dtype) if channels > 1 else ramp.astype(dtype)
    path = tmp_path / "odd.tif"
    tifffile.imwrite(path, array)
    image = read_image(path)
    assert image.dtype == np.uint8 and image.shape == (30, 40, 3)
    assert image.min() == 0 and image.max() == 255  # stretched from minimum to maximum
    if channels >= 3:  # channel order kept: red is the minimum everywhere
        assert image[..., 0].max() == 0 and image[..., 2].max() == 255
    assert np.all(np.diff(image[..., -1].astype(int).ravel()) >= 0)  # the ramp stays a ramp


def test_float64_within_0_1_is_scaled_by_255(tmp_path):
    path = tmp_path / "unit.tif"
    tifffile.imwrite(path, np.dstack([np.full((4, 4), v) for v in (0.0, 0.5, 1.0)]))
    assert read_image(path)[0, 0].tolist() == [0, 128, 255]


def _png(path, value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((8, 8, 3), value, np.uint8))


def test_link_loops_end_and_dead_links_are_skipped(tmp_path):
    data = tmp_path / "data"
    _png(data / "all" / "a.png")
    (data / "all" / "back").symlink_to(data)  # folder loop
    (data / "all" / "self").symlink_to(data / "all" / "self")
    (data / "all" / "x.png").symlink_to(data / "all" / "y.png")
    (data / "all" / "y.png").symlink_to(data / "all" / "x.png")  # file loop
    (data / "all" / "gone.png").symlink_to(tmp_path / "nothing.png")
    linked = tmp_path / "elsewhere"
    _png(linked / "b.png")
    (data / "hem").symlink_to(linked)  # a linked class folder is followed
    assert find_images([data]) == [data / "all" / "a.png", data / "hem" / "b.png"]
    with pytest.raises(ImageReadError, match="leads nowhere"):
        read_image(data / "all" / "x.png")
    assert len(scan_annotated_folder(data).items) == 2


def test_the_tools_own_outputs_are_never_data(tmp_path):
    data = tmp_path / "data"
    _png(data / "all" / "a.png")
    _png(data / "hem" / "b.png")
    run = data / "all" / "run"
    _png(run / "curves.png")
    (run / "config.json").write_text(json.dumps({"napari_allbag": "0.1.0", "config": {}}))
    _png(run / "bundle" / "inside.png")
    bundle = data / "hem" / "model"
    _png(bundle / "preview.png")
    (bundle / "bundle.json").write_text("{}")
    other = data / "hem" / "notes"
    _png(other / "c.png")
    (other / "config.json").write_text('{"something": "else"}')  # not a run's config
    assert find_images([data]) == [data / "all" / "a.png", data / "hem" / "b.png", other / "c.png"]
    labels = sorted(item.path.name for item in scan_annotated_folder(data).items)
    assert labels == ["a.png", "b.png", "c.png"]
