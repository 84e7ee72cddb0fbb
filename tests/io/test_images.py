"""Reading every image a user may load, converting layer data, finding images in folders."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import tifffile

from napari_allbag.io.images import ImageReadError, find_images, read_image, to_rgb_uint8
from tests.drawn_cells import single_cell


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return single_cell(size=64, seed=3)


def write_bgr(path, rgb_image) -> None:
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb_image, cv2.COLOR_RGB2BGR))


@pytest.mark.parametrize("name", ["cell.BMP", "cell.PNG", "cell.Tif", "cell.TIFF", "cell.bmp"])
def test_lossless_formats_read_back_exactly(tmp_path, rgb, name):
    write_bgr(tmp_path / name, rgb)
    image = read_image(tmp_path / name)
    assert image.dtype == np.uint8 and image.shape == rgb.shape
    np.testing.assert_array_equal(image, rgb)  # RGB order, not OpenCV's BGR


@pytest.mark.parametrize("name", ["cell.JPG", "cell.jpeg"])
def test_jpeg_reads_close_to_the_original(tmp_path, rgb, name):
    write_bgr(tmp_path / name, rgb)
    image = read_image(tmp_path / name)
    assert image.shape == rgb.shape
    assert np.abs(image.astype(int) - rgb).mean() < 6


def test_greyscale_file_gives_three_equal_channels(tmp_path, rgb):
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    cv2.imwrite(str(tmp_path / "grey.png"), grey)
    image = read_image(tmp_path / "grey.png")
    assert image.shape == (*grey.shape, 3)
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel], grey)


def test_sixteen_bit_copy_of_an_eight_bit_image_reads_as_the_original(tmp_path, rgb):
    wide = rgb.astype(np.uint16) * 257
    write_bgr(tmp_path / "wide.png", wide)
    np.testing.assert_array_equal(read_image(tmp_path / "wide.png"), rgb)


def test_rgba_is_composited_on_black(tmp_path, rgb):
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:, : rgb.shape[1] // 2] = 0
    rgba = np.dstack([rgb, alpha])
    cv2.imwrite(str(tmp_path / "rgba.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    image = read_image(tmp_path / "rgba.png")
    assert image.shape == rgb.shape
    assert not image[:, : rgb.shape[1] // 2].any()
    np.testing.assert_array_equal(image[:, rgb.shape[1] // 2 :], rgb[:, rgb.shape[1] // 2 :])


def test_float_tiffs_in_zero_one_read_as_eight_bit(tmp_path, rgb):
    tifffile.imwrite(tmp_path / "float32.tif", rgb.astype(np.float32) / 255.0)
    np.testing.assert_array_equal(read_image(tmp_path / "float32.tif"), rgb)


def test_tiff_opencv_cannot_decode_is_read_with_tifffile(tmp_path, rgb):
    tifffile.imwrite(tmp_path / "half.tif", rgb.astype(np.float16) / 255.0)
    assert cv2.imread(str(tmp_path / "half.tif"), cv2.IMREAD_UNCHANGED) is None
    np.testing.assert_array_equal(read_image(tmp_path / "half.tif"), rgb)


def test_planar_tiff_is_read_channels_last(tmp_path, rgb):
    tifffile.imwrite(tmp_path / "planar.tiff", np.moveaxis(rgb, -1, 0), planarconfig="separate")
    np.testing.assert_array_equal(read_image(tmp_path / "planar.tiff"), rgb)


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "empty file"), (b"this is not an image at all\n" * 10, "not an image")],
)
def test_unreadable_files_fail_naming_the_file_and_the_reason(tmp_path, content, reason):
    path = tmp_path / "cell.png"
    path.write_bytes(content)
    with pytest.raises(ImageReadError) as caught:
        read_image(path)
    assert caught.value.path == path
    assert reason in caught.value.reason
    assert str(path) in str(caught.value)


def test_truncated_file_is_an_error_not_a_crash(tmp_path, rgb):
    write_bgr(tmp_path / "whole.png", rgb)
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[:40])
    with pytest.raises(ImageReadError, match="cut.png"):
        read_image(tmp_path / "cut.png")


def test_missing_file_and_folder_are_clear_errors(tmp_path):
    with pytest.raises(ImageReadError, match="file not found"):
        read_image(tmp_path / "nothing.bmp")
    with pytest.raises(ImageReadError, match="is a folder"):
        read_image(tmp_path)


def test_to_rgb_uint8_of_float_data_in_zero_one_and_in_any_range(rgb):
    np.testing.assert_array_equal(to_rgb_uint8(rgb / 255.0), rgb)
    stretched = to_rgb_uint8(rgb.astype(np.float64) * 10.0 - 500.0)  # min..max -> 0..255
    assert stretched.min() == 0 and stretched.max() == 255
    assert np.corrcoef(stretched.ravel(), rgb.ravel())[0, 1] > 0.999
    as_is = to_rgb_uint8(rgb.astype(np.float32))  # already 0..255: values kept
    np.testing.assert_array_equal(as_is, rgb)


def test_to_rgb_uint8_handles_nan_bool_signed_and_single_channel():
    data = np.array([[np.nan, 0.5], [1.0, np.inf]])
    np.testing.assert_array_equal(to_rgb_uint8(data)[..., 0], [[0, 128], [255, 0]])
    mask = np.array([[True, False]])
    np.testing.assert_array_equal(to_rgb_uint8(mask)[..., 1], [[255, 0]])
    signed = np.array([[-100, 0, 100]], np.int16)
    np.testing.assert_array_equal(to_rgb_uint8(signed)[..., 2], [[0, 128, 255]])
    single = np.arange(6, dtype=np.uint8).reshape(2, 3, 1)
    assert to_rgb_uint8(single).shape == (2, 3, 3)


def test_to_rgb_uint8_rejects_stacks_and_empty_arrays():
    with pytest.raises(ValueError, match="unsupported image layout"):
        to_rgb_uint8(np.zeros((5, 6, 7, 3), np.uint8))
    with pytest.raises(ValueError, match="empty image"):
        to_rgb_uint8(np.zeros((0, 5), np.uint8))


def test_find_images_is_recursive_sorted_and_case_insensitive(tmp_path):
    for name in [
        "b/z.PNG",
        "b/a.bmp",
        "a/deep/er/c.TIFF",
        "a/notes.txt",
        ".hidden/x.png",
        "a/.x.png",
        "top.JPG",
    ]:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    found = find_images([tmp_path])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a/deep/er/c.TIFF",
        "b/a.bmp",
        "b/z.PNG",
        "top.JPG",
    ]


def test_find_images_keeps_named_files_drops_duplicates_and_names_missing_paths(tmp_path):
    (tmp_path / "cell.bmp").write_bytes(b"x")
    (tmp_path / "readme.txt").write_bytes(b"x")
    found = find_images([tmp_path / "readme.txt", tmp_path, tmp_path / "cell.bmp"])
    assert found == [tmp_path / "readme.txt", tmp_path / "cell.bmp"]
    with pytest.raises(FileNotFoundError, match="missing.bmp"):
        find_images([tmp_path / "missing.bmp"])
