"""Every atomic write of the package: a temporary file beside the target, then one `os.replace`.

A reader (another process, a resumed run, the user's spreadsheet) sees either the previous file
or the new one, whole; never half a file. On any failure (disk full, read-only folder, no
permission, Ctrl+C) the temporary file is removed, and an `OSError` becomes an `OutputError`
whose message names the file, the cause and the fix, so commands print one paragraph instead of
a traceback.

    write_bytes_atomic(path, data) / write_text_atomic / write_json_atomic
    with atomic_path(path) as temp: save_file(tensors, temp)   # writers that need a file name
    replace_atomic(temp, dest)                                 # a finished file or folder
    with AtomicCsv(path, header) as table: table.write_row(...)

Temporary files are named `.<name>.<random>.tmp` (`TEMP_SUFFIX`), so `remove_stale_temps` can
clean the ones a killed process left behind.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import re
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: `mode` value meaning "the permissions `open()` gives a new file": 0o666 less the umask (0644
#: under the usual umask 022). Outputs are ordinary files: a report made 0600 (mkstemp's, or a
#: library writer's) surprised users sharing it, and a fixed 0644 would override a umask 077.
FILE_MODE = -1
TEMP_SUFFIX = ".tmp"
#: What `AtomicCsv` does with its rows when the `with` block ends in an exception.
ON_ERROR_CHOICES = ("discard", "partial", "commit")


class OutputError(OSError):
    """A file or folder that could not be written; the message names it, the cause and the fix."""

    def __init__(self, path: str | os.PathLike, error: OSError):
        super().__init__(error.errno, describe_write_error(path, error))
        self.path = Path(path)
        self.cause = error

    def __str__(self) -> str:
        return self.strerror or ""

    def __reduce__(self):  # crosses process boundaries (worker pools) with its message
        return (_rebuild_output_error, (str(self.path), self.errno, str(self)))


def _rebuild_output_error(path: str, code: int | None, message: str) -> OutputError:
    error = OutputError(path, OSError(code, message))
    error.strerror = message
    return error


def describe_write_error(path: str | os.PathLike, error: OSError) -> str:
    """One paragraph: what could not be written, why, and what to do."""
    if isinstance(error, OutputError):
        return str(error)
    place = Path(path)
    folder = place.parent
    code = error.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"{place} could not be written: the disk holding {folder} is full (or over quota). "
            "Nothing half-written was left. Free some space, or write to another folder, and "
            "run the command again."
        )
    if code in (errno.EROFS, errno.EACCES, errno.EPERM):
        why = "is read-only" if code == errno.EROFS else "cannot be written by you"
        return (
            f"{place} could not be written: {folder} {why} ({error.strerror}). Choose an output "
            "folder you can write to (e.g. in your home folder), or fix its permissions."
        )
    return (
        f"{place} could not be written ({error.strerror or error}). Nothing half-written was "
        "left; check the folder and run the command again."
    )


def _as_output_error(path: Path, error: OSError) -> OutputError:
    return error if isinstance(error, OutputError) else OutputError(path, error)


def _os_error_in(error: BaseException) -> OSError | None:
    """The OSError behind `error`: itself, or one a library reports as text ("(os error 28)",
    as safetensors' Rust writer does)."""
    if isinstance(error, OSError):
        return error
    found = re.search(r"\(os error (\d+)\)", str(error))
    if found is None:
        return None
    code = int(found.group(1))
    return OSError(code, os.strerror(code))


def new_file_mode() -> int:
    """The mode `open()` gives a new file under the current umask (0o666 & ~umask)."""
    return 0o666 & ~_current_umask()


def _current_umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)  # elsewhere reading it means setting it: put it back at once
    os.umask(umask)
    return umask


def temp_path_for(path: str | os.PathLike) -> Path:
    """A fresh hidden temporary name beside `path` (same folder, so `os.replace` is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}")


def replace_atomic(source: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Move a finished file or folder onto `dest` in one step (`os.replace`); `OutputError`."""
    try:
        os.replace(source, dest)
    except OSError as error:
        raise _as_output_error(Path(dest), error) from error


@contextmanager
def atomic_path(
    dest: str | os.PathLike, mode: int | None = FILE_MODE, sync: bool = True
) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success it is synced and moved onto `dest`.

    For writers that want a file name (safetensors `save_file`, `savefig`, pandas, zip files).
    On any exception the temporary file is removed; an `OSError` becomes an `OutputError`.
    `mode`: the file's permissions (`FILE_MODE`: as `open()` would make it, 0o666 & ~umask;
    None: as the writer made it); `sync=False` skips the fsync
    (outputs that are cheap to make again, such as crops, where a sync per file is slow).
    """
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _as_output_error(dest, error) from error
    temp = temp_path_for(dest)
    try:
        yield temp
        if sync:
            _fsync(temp)
        if mode is not None:
            os.chmod(temp, new_file_mode() if mode == FILE_MODE else mode)
        os.replace(temp, dest)
    except Exception as error:
        cause = _os_error_in(error)
        if cause is None:
            raise
        raise _as_output_error(dest, cause) from error
    finally:
        _discard(temp)


def write_bytes_atomic(
    path: str | os.PathLike, data: bytes, mode: int | None = FILE_MODE, sync: bool = True
) -> None:
    """Write `data` to `path` atomically (synced to disk before the replace, unless `sync=False`).

    `mode`: the file's permissions (default `FILE_MODE`: 0o666 & ~umask); None leaves them as
    the temporary file was made (also 0o666 & ~umask here).
    """
    path = Path(path)
    with atomic_path(path, mode, sync) as temp:
        # 0o666: with mode=None the umask decides, as for any new file
        with _open_temp(temp, text=False) as out:
            out.write(data)


def write_text_atomic(
    path: str | os.PathLike, text: str, mode: int | None = FILE_MODE, sync: bool = True
) -> None:
    """Write UTF-8 `text` to `path` atomically (`mode`, `sync`: as for `write_bytes_atomic`)."""
    write_bytes_atomic(path, text.encode("utf-8"), mode, sync)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """JSON-dump `data` to `path` atomically (indented, so people can read it)."""
    write_text_atomic(path, json.dumps(data, indent=2, default=json_default) + "\n")


def json_default(value: Any) -> Any:
    """JSON for paths, dataclasses with `to_dict`, numpy / torch scalars and arrays."""
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class AtomicCsv:
    """A CSV written row by row into a temporary file beside `path`, moved into place on commit.

    As a context manager it commits when the block ends normally; on an exception `on_error`
    decides: "discard" the rows, keep them as `<path>.partial` ("partial"), or "commit" them to
    `path` (segment: the tables list every file finished before Ctrl+C).
    """

    def __init__(self, path: str | os.PathLike, header: Iterable[str], on_error: str = "discard"):
        if on_error not in ON_ERROR_CHOICES:
            raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
        self.path = Path(path)
        self.on_error = on_error
        self.temp = temp_path_for(self.path)
        self.rows = 0
        try:
            self.file = _open_temp(self.temp, text=True)
            self.writer = csv.writer(self.file)
            self.writer.writerow(list(header))
        except OSError as error:
            self._remove()
            raise _as_output_error(self.path, error) from error

    def write_row(self, values: Iterable[Any]) -> None:
        try:
            self.writer.writerow(list(values))
        except OSError as error:
            self._remove()
            raise _as_output_error(self.path, error) from error
        self.rows += 1

    def commit(self) -> Path:
        """Sync and move the table onto `path`."""
        return self._finish(self.path)

    def abandon(self, keep: bool = True) -> Path | None:
        """Stop writing; keep the rows so far as `<path>.partial` (if any), else delete."""
        if keep and self.rows:
            try:
                return self._finish(self.path.with_name(self.path.name + ".partial"))
            except OutputError:
                return None  # the first error (the one that stopped the work) is the one to show
        self._remove()
        return None

    def __enter__(self) -> AtomicCsv:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        failed_write = isinstance(exc, OSError)  # the table itself cannot be trusted then
        if exc_type is None or (self.on_error == "commit" and not failed_write):
            self.commit()
        else:
            self.abandon(keep=self.on_error == "partial" and not failed_write)

    def _finish(self, dest: Path) -> Path:
        try:
            self.file.flush()
            _fsync_fd(self.file.fileno())
            self.file.close()
            os.replace(self.temp, dest)
        except OSError as error:
            self._remove()
            raise _as_output_error(dest, error) from error
        return dest

    def _remove(self) -> None:
        file = getattr(self, "file", None)
        if file is not None and not file.closed:
            try:
                file.close()
            except OSError:
                pass  # the data is being thrown away; a failing flush changes nothing
        _discard(self.temp)


def remove_stale_temps(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Delete the `.<name>.<random>.tmp` files a killed writer left in `folder`; return them.

    Call it only while holding the folder's lock (no live writer can own one of them).
    """
    folder = Path(folder)
    pattern = f".*{TEMP_SUFFIX}"
    found = folder.rglob(pattern) if recursive else folder.glob(pattern)
    removed = []
    for path in found:
        if path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _open_temp(path: Path, text: bool):
    """Create the temporary file (never an existing one); 0o666: the umask decides, as usual."""
    handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    if text:
        return os.fdopen(handle, "w", newline="", encoding="utf-8")
    return os.fdopen(handle, "wb")


def _discard(path: Path) -> None:
    """Remove a temporary file if it is there (where nothing could be written, it is not)."""
    try:
        path.unlink()
    except OSError:
        pass


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        _fsync_fd(handle.fileno())


def _fsync_fd(fd: int) -> None:
    """One place every sync goes through (a full disk often reports itself only here)."""
    os.fsync(fd)


def make_temp_dir(dest: str | os.PathLike, tag: str) -> Path:
    """A fresh hidden folder beside `dest`, to fill and then `replace_atomic` onto it."""
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{dest.name}.{tag}-", dir=dest.parent))
    except OSError as error:
        raise _as_output_error(dest, error) from error
