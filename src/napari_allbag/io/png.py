"""Lossless PNG encoding of uint8 images, fast enough that writing crops is not the slow part.

`segment` writes one PNG per cell. OpenCV's encoder (libpng and zlib at level 1) spent about
3 ms per 299 px crop, more than segmenting the cell. Here each row is "up"-filtered (minus the
row above) with numpy and the rows are deflated with ISA-L (`isal`, about 0.6 ms, files about
10 % larger), or with zlib at level 1 and the run-length strategy (about as fast as OpenCV)
where `isal` is not installed. Figures: docs/benchmarks.md, ``benchmarks/bench_segment.py --png``.
Every PNG decoder reads the result (8-bit RGB or greyscale, no interlacing).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

try:
    from isal import isal_zlib
except ImportError:  # pragma: no cover - isal is a dependency; the zlib path is tested
    isal_zlib = None

SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: ISA-L level (0-3): 1 and 2 gave the same size and speed on the real crops, 3 was twice as slow.
ISAL_LEVEL = 1
_UP_FILTER = 2


def encode_png(image: np.ndarray) -> bytes:
    """PNG file bytes of an HxWx3 (RGB) or HxW (grey) uint8 array; decodes to the same pixels."""
    image = np.ascontiguousarray(image)
    if (
        image.dtype != np.uint8
        or image.ndim not in (2, 3)
        or (image.ndim == 3 and image.shape[2] != 3)
        or 0 in image.shape
    ):
        raise ValueError(f"encode_png expects HxWx3 or HxW uint8, got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    rows = image.reshape(height, -1)
    filtered = np.empty((height, rows.shape[1] + 1), np.uint8)
    filtered[:, 0] = _UP_FILTER
    filtered[0, 1:] = rows[0]  # the row above the first is zeros
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # modulo 256, as PNG wants
    colour_type = 2 if image.ndim == 3 else 0
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"".join(
        (
            SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", deflate(filtered)),
            _chunk(b"IEND", b""),
        )
    )


def deflate(data: np.ndarray) -> bytes:
    """A zlib stream of `data`: ISA-L where installed, else zlib level 1, run-length strategy."""
    if isal_zlib is not None:
        return isal_zlib.compress(data, ISAL_LEVEL)
    return deflate_with_zlib(data)


def deflate_with_zlib(data: np.ndarray) -> bytes:
    """zlib level 1 with the run-length strategy (what OpenCV's PNG settings here were)."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    return compressor.compress(data) + compressor.flush()


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(kind))
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)
