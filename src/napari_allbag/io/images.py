"""Read any image a user may load as HxWx3 uint8 RGB, and find images in folders.

Segmentation and the classifier work on 8-bit RGB, the C-NMC format. Everything else a user may
hand us (greyscale, RGBA, 16-bit, float, upper-case extensions, TIFFs OpenCV cannot decode) is
converted here, and everything that cannot be read fails with an `ImageReadError` that names the
file and the reason.

Conversion rules (`to_rgb_uint8`):

* greyscale is repeated into three channels; alpha is composited onto black (the C-NMC background);
* ``bool`` becomes 0/255; ``uint8`` is kept; ``uint16`` is scaled by its full range (65535 -> 255),
  so a 16-bit copy of an 8-bit image gives exactly the 8-bit image back;
* other integer and float data: non-finite values become 0; floats within [0, 1] are scaled by
  255; data already within [0, 255] keeps its values; anything else is stretched from its
  minimum to its maximum.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

#: Extensions `find_images` picks up in folders (compared case-insensitively).
IMAGE_EXTENSIONS = (".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff")

_TIFF_EXTENSIONS = (".tif", ".tiff")
#: Pixel types cv2.cvtColor converts; others (int32, float64, ...) have their channels reordered.
_CVT_DTYPES = (np.uint8, np.uint16, np.float32)
_JPEG_START = b"\xff\xd8\xff"


class ImageReadError(ValueError):
    """A file that could not be read as an image; `path` and `reason` say which and why."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as a C-contiguous HxWx3 uint8 RGB array.

    OpenCV decodes BMP, PNG, JPEG and TIFF (any case of extension); multi-page files give their
    first page. TIFFs OpenCV cannot decode, or of pixel types other than uint8, uint16 and
    float32, are read with tifffile. Raises `ImageReadError`.
    """
    path = Path(path)
    _check_readable_file(path)
    array = _decode_with_opencv(path)
    if path.suffix.lower() in _TIFF_EXTENSIONS and (
        array is None or array.dtype not in _CVT_DTYPES
    ):
        tiff = _decode_with_tifffile(path)  # exact for every pixel type (OpenCV garbles int8 RGBA)
        array = tiff if tiff is not None else array
    if array is None:
        raise ImageReadError(
            path, "not an image (could not decode it as BMP, PNG, JPEG or TIFF; is it complete?)"
        )
    try:
        return to_rgb_uint8(array)
    except ValueError as error:
        raise ImageReadError(path, str(error)) from None


def to_rgb_uint8(array) -> np.ndarray:
    """Convert image data (e.g. a napari layer's) to a C-contiguous HxWx3 uint8 RGB array.

    Accepts HxW, HxWx1, HxWx2 (grey + alpha), HxWx3, HxWx4 (RGBA) and channels-first 3xHxW /
    4xHxW, of any integer, bool or float type (rules in the module docstring). Raises
    ValueError for other shapes and for empty arrays.
    """
    array = np.asarray(array)
    array = _channels_last(array)
    if array.size == 0:
        raise ValueError(f"empty image (shape {array.shape})")
    if array.dtype != np.uint8:
        array = _to_uint8(array)
    if array.ndim == 2:
        return cv2.cvtColor(np.ascontiguousarray(array), cv2.COLOR_GRAY2RGB)
    channels = array.shape[2]
    if channels == 1:
        return cv2.cvtColor(np.ascontiguousarray(array[:, :, 0]), cv2.COLOR_GRAY2RGB)
    if channels == 2:
        grey = _composite_on_black(array[:, :, :1], array[:, :, 1])
        return cv2.cvtColor(np.ascontiguousarray(grey[:, :, 0]), cv2.COLOR_GRAY2RGB)
    if channels == 3:
        return np.ascontiguousarray(array)
    return _composite_on_black(array[:, :, :3], array[:, :, 3])


def find_images(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """List the image files named by `inputs` (files, or folders searched recursively).

    Folders contribute the files whose extension is in `IMAGE_EXTENSIONS` (any case), sorted,
    skipping hidden files and folders and the tool's own outputs (model bundles, training run
    folders); linked folders are followed once each, so a link loop ends. Files named
    explicitly are kept whatever their extension (reading them reports a clear error if they
    are not images). Duplicates are dropped, the order of `inputs` is kept. Raises
    FileNotFoundError naming a path that does not exist.
    """
    found: list[Path] = []
    seen: set[Path] = set()
    for entry in inputs:
        path = Path(entry)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
        candidates = [path] if path.is_file() else _images_in_folder(path)
        for candidate in candidates:
            key = _identity(candidate)
            if key not in seen:
                seen.add(key)
                found.append(candidate)
    return found


def _images_in_folder(folder: Path) -> list[Path]:
    """Images below `folder`; linked folders are followed once each (no loop), links that lead
    nowhere are skipped, and the tool's own outputs (bundles, run folders) are never data."""
    images = []
    visited: set[tuple[int, int]] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        if not _first_visit(root, visited) or _is_tool_output(root, files):
            dirs[:] = []
            continue
        dirs[:] = [name for name in dirs if not name.startswith(".")]
        for name in files:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                if os.path.isfile(os.path.join(root, name)):
                    images.append(Path(root) / name)
    return sorted(images)


def _first_visit(folder: str, visited: set[tuple[int, int]]) -> bool:
    try:
        info = os.stat(folder)
    except OSError:
        return False
    key = (info.st_dev, info.st_ino)
    if key in visited:
        return False
    visited.add(key)
    return True


def _is_tool_output(folder: str, files: list[str]) -> bool:
    """A model bundle (bundle.json) or a training run folder (config.json holding a run's config)."""
    if "bundle.json" in files:
        return True
    if "config.json" not in files:
        return False
    try:
        with open(os.path.join(folder, "config.json"), "rb") as handle:
            document = json.loads(handle.read(1_000_000))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(document, dict) and isinstance(document.get("config"), dict)


def _identity(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symlink loop (RuntimeError before Python 3.13)
        return Path(os.path.abspath(path))


def _check_readable_file(path: Path) -> None:
    if not path.exists() and path.is_symlink():
        raise ImageReadError(path, "a symbolic link that leads nowhere (broken, or a loop)")
    if not path.exists():
        raise ImageReadError(path, "file not found")
    if path.is_dir():
        raise ImageReadError(path, "is a folder, not an image file")
    try:
        size = path.stat().st_size
        with open(path, "rb"):
            pass
    except OSError as error:
        raise ImageReadError(path, f"cannot open it ({error.strerror or error})") from None
    if size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")


def _decode_with_opencv(path: Path) -> np.ndarray | None:
    """OpenCV decode; BGR(A) becomes RGB(A). Falls back to imdecode for non-ASCII paths.

    A truncated JPEG raises `ImageReadError` (OpenCV would fill its missing part with grey).
    OpenCV's own log lines about undecodable files are silenced: the caller reports them.
    """
    _check_complete_jpeg(path)
    previous = cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if array is None and not str(path).isascii():
            array = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except (OSError, cv2.error):
        array = None
    finally:
        cv2.utils.logging.setLogLevel(previous)
    if array is None:
        return None
    if array.ndim == 3 and array.shape[2] in (3, 4) and array.dtype not in _CVT_DTYPES:
        return np.ascontiguousarray(array[:, :, [2, 1, 0, 3][: array.shape[2]]])
    if array.ndim == 3 and array.shape[2] == 3:
        cv2.cvtColor(array, cv2.COLOR_BGR2RGB, dst=array)
    elif array.ndim == 3 and array.shape[2] == 4:
        cv2.cvtColor(array, cv2.COLOR_BGRA2RGBA, dst=array)
    return array


def _check_complete_jpeg(path: Path) -> None:
    """Raise `ImageReadError` for a JPEG (by its first bytes, whatever its name) cut short."""
    try:
        with open(path, "rb") as handle:
            if handle.read(3) != _JPEG_START:
                return
        data = path.read_bytes()  # <1% of the decoding time (the OS cache serves both reads)
    except OSError:
        return  # the decoder reports it
    if _jpeg_is_truncated(data):
        raise ImageReadError(
            path,
            "truncated JPEG: the file ends before its image data does (an incomplete copy or "
            "download); get the whole file again",
        )


def _jpeg_is_truncated(data: bytes) -> bool:
    """True for a JPEG with no end-of-image marker after its first scan (cut short).

    The segments before the scan are walked by their lengths, so a thumbnail's markers inside
    them do not count; inside scan data 0xFF is always stuffed, so FF D9 there is the real end.
    """
    if data[:3] != _JPEG_START:
        return False
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return False  # not a layout we know: leave the decision to the decoder
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
        elif marker == 0xDA:  # start of scan
            return data.rfind(b"\xff\xd9", position) < 0  # from the end: found at once
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:
            position += 2
        else:
            position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
    return True


def _decode_with_tifffile(path: Path) -> np.ndarray | None:
    try:
        import tifffile
    except ImportError:  # pragma: no cover - tifffile comes with scikit-image
        return None
    try:
        array = tifffile.imread(path, key=0)
        return array if array.size else None  # a truncated file can give an empty page
    except Exception:  # tifffile raises many kinds of errors on bad files
        return None


def _channels_last(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[2] not in (1, 2, 3, 4):
        return np.moveaxis(array, 0, -1)
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 2, 3, 4)):
        return array
    raise ValueError(
        f"unsupported image layout: shape {array.shape} (expected HxW, HxWx3 or HxWx4; "
        "pick one plane of a stack first)"
    )


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.bool_:
        return array.view(np.uint8) * np.uint8(255)
    if array.dtype == np.uint16:
        return cv2.convertScaleAbs(array, alpha=1.0 / 257.0)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"unsupported pixel type {array.dtype}")
    work = array.astype(np.float64 if array.dtype.itemsize == 8 else np.float32)  # a copy
    np.nan_to_num(work, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(work.min()), float(work.max())
    if np.issubdtype(array.dtype, np.floating) and low >= 0.0 and high <= 1.0:
        work *= 255.0
    elif not (low >= 0.0 and high <= 255.0):
        span = high - low
        work -= low
        if span > 0:
            work *= 255.0 / span
    np.rint(work, out=work)
    return work.astype(np.uint8)


def _composite_on_black(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Colour times alpha/255 (transparent pixels become background black)."""
    if alpha.min() == 255:
        return np.ascontiguousarray(colour)
    weights = alpha.astype(np.uint16)[:, :, None]
    mixed = (colour.astype(np.uint16) * weights + 127) // 255
    return np.ascontiguousarray(mixed.astype(np.uint8))
