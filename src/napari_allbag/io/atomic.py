"""Atomic file writes: a temporary file in the same folder, flushed, then `os.replace`.

Every file the package writes in place (checkpoints, reports, figures) goes through here, so a
crash or a full disk leaves either the old file or the new one, never half of one.

Imports the standard library only.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

#: Permissions of written files (mkstemp makes them private; outputs are ordinary files).
FILE_MODE = 0o644


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and `os.replace`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, FILE_MODE)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write UTF-8 `text` to `path` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))
