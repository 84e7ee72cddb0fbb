"""Every atomic write of the package: a temporary file in the target's folder, then `os.replace`.

A reader never sees half a file, and a crash leaves the previous file or the new one. New files get
the mode an ordinary `open(path, "w")` would give them (0o666 less the umask, so 0644 under the
usual umask 022): `mkstemp` alone makes them owner-only (0600), which surprised users sharing a
report.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def new_file_mode() -> int:
    """The mode `open()` gives a new file under the current umask (0o666 & ~umask)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_with(path: Path, writer: Callable[[str], None]) -> None:
    """Call `writer(temporary_path)`, fsync the file, give it the ordinary mode, move it to `path`.

    For libraries that write to a path themselves (safetensors, matplotlib, zip packers).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        writer(temp)
        with open(temp, "rb") as written:
            os.fsync(written.fileno())
        os.chmod(temp, new_file_mode())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically."""

    def write(temp: str) -> None:
        with open(temp, "wb") as out:
            out.write(data)

    write_with(path, write)


def write_text_atomic(path: Path, text: str) -> None:
    """Write UTF-8 `text` to `path` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, data: Any) -> None:
    """JSON-dump `data` to `path` atomically (indented, so people can read it)."""
    write_text_atomic(path, json.dumps(data, indent=2, default=json_default) + "\n")


def json_default(value: Any) -> Any:
    """JSON for paths, dataclasses with `to_dict`, numpy/torch scalars and arrays."""
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
