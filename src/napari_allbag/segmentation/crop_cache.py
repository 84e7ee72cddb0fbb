"""Segmented uint8 crops on disk, computed once and reused by every epoch and every later run.

Every image is segmented (`segmentation.iter_segment_files`) and its cell cropped to
`params.crop_size`; a C-NMC image holds one cell, so the largest cell is kept (an image with no
cell, or with several, gets a note). The crops of a set of files go into one uint8
(N, S, S, 3) `.npy` file, opened as a read-only memory map.

Keys: each file is keyed by the sha256 of its content plus the segmentation parameters, and a
set by the keys of its files in order. A rerun on the same files reuses the set as it is; a set
with changed or new files copies the rows it already has in any cached set and segments only
the rest.

Safety: a set is built in a hidden temporary folder beside the final one and renamed into place
only when complete (crops flushed, index written last), so a crash, Ctrl-C or a cancelled worker
never leaves a partial set that looks complete. Temporary folders of dead processes are removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import uuid
from collections.abc import Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from napari_allbag.io.atomic import replace_atomic
from napari_allbag.progress import Progress
from napari_allbag.segmentation.dark import SegmentationParams, iter_segment_files
from napari_allbag.segmentation.feedback import ImageFeedback

#: Bump when the stored crops would differ for the same file and parameters.
CACHE_FORMAT = 1
CROPS_FILE = "crops.npy"
INDEX_FILE = "index.json"
TEMP_PREFIX = ".tmp-"
_HASH_CHUNK = 1 << 20
#: Errors that say more about the machine than the file: such rows are retried by the next run.
TRANSIENT_ERRORS = ("out of memory", "worker process died")


def default_cache_dir() -> Path:
    """`$NAPARI_ALLBAG_CACHE_DIR`, else `$XDG_CACHE_HOME/napari-allbag`, else `~/.cache/napari-allbag`."""
    if os.environ.get("NAPARI_ALLBAG_CACHE_DIR"):
        return Path(os.environ["NAPARI_ALLBAG_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "napari-allbag"


@dataclass
class CropCache:
    """The crops of `paths` (row i is paths[i]), whether each worked, and why not.

    `crops` is a read-only memory map, opened lazily: the object pickles without it, so
    DataLoader worker processes reopen the file themselves.
    """

    folder: Path
    paths: list[Path]
    keys: list[str]
    ok: np.ndarray  # (N,) bool
    errors: list[str | None]  # why a row has no crop (ok False)
    notes: list[str | None]  # e.g. "3 cells found; kept the largest"
    crop_size: int
    params: dict[str, Any]
    reused: int = 0  # rows taken from earlier caches when this set was built
    feedback: list[dict[str, Any] | None] = field(default_factory=list)  # ImageFeedback fields
    _crops: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.paths)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_crops"] = None
        return state

    @property
    def crops(self) -> np.ndarray:
        """(N, S, S, 3) uint8, read-only; rows where `ok` is False are black."""
        if self._crops is None:
            if len(self.paths) == 0:
                self._crops = np.zeros((0, self.crop_size, self.crop_size, 3), np.uint8)
            else:
                self._crops = np.load(self.folder / CROPS_FILE, mmap_mode="r")
        return self._crops

    @property
    def errors_by_path(self) -> dict[Path, str]:
        """Files without a crop and why (unreadable, no cell found)."""
        return {
            p: e or "no crop"
            for p, e, ok in zip(self.paths, self.errors, self.ok, strict=True)
            if not ok
        }

    @property
    def feedback_by_path(self) -> dict[Path, ImageFeedback]:
        """Each segmented file's mode and what looks wrong (`segmentation.feedback`)."""
        found = {}
        for path, fields_ in zip(self.paths, self.feedback, strict=False):
            try:
                found[path] = ImageFeedback(**fields_)
            except TypeError:  # None, or an index written by another version: nothing to say
                continue
        return found

    @property
    def notes_by_path(self) -> dict[Path, str]:
        return {p: n for p, n in zip(self.paths, self.notes, strict=True) if n}

    def rows(self, paths: Sequence[str | os.PathLike]) -> np.ndarray:
        """Row numbers of `paths` in this cache (KeyError naming a path that is not in it)."""
        where = {p: i for i, p in enumerate(self.paths)}
        try:
            return np.array([where[Path(p)] for p in paths], dtype=np.int64)
        except KeyError as error:
            raise KeyError(f"{error.args[0]} is not in the crop cache at {self.folder}") from None

    def summary_text(self, max_listed: int = 5) -> str:
        lines = [
            f"Crop cache {self.folder}: {int(self.ok.sum())} of {len(self)} images cropped "
            f"({self.crop_size} px, {self.reused} reused from earlier runs)"
        ]
        for title, entries in (
            ("without a crop", self.errors_by_path),
            ("with a note", self.notes_by_path),
        ):
            if entries:
                lines.append(f"  {len(entries)} image(s) {title}:")
                lines += [f"    {p}: {why}" for p, why in list(entries.items())[:max_listed]]
                if len(entries) > max_listed:
                    lines.append(f"    ... ({len(entries) - max_listed} more)")
        return "\n".join(lines)


def _params_json(params: SegmentationParams) -> str:
    # Every image gives its largest cell here whatever `largest_only` says, so it is not a key.
    data = replace(params, largest_only=True).to_dict()
    return json.dumps({"format": CACHE_FORMAT, "segmentation": data}, sort_keys=True)


def file_key(path: str | os.PathLike, params_json: str) -> str:
    """sha256 of the parameters and the file's content (OSError if the file cannot be read)."""
    digest = hashlib.sha256(params_json.encode() + b"\0")
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _set_key(params_json: str, keys: Sequence[str]) -> str:
    digest = hashlib.sha256(params_json.encode())
    for key in keys:
        digest.update(b"\n" + key.encode())
    return digest.hexdigest()[:40]


def _read_index(folder: Path) -> dict[str, Any] | None:
    """A complete set's index, or None for anything partial, corrupt or of another format."""
    try:
        index = json.loads((folder / INDEX_FILE).read_text())
        if not index.get("complete") or index.get("format") != CACHE_FORMAT:
            return None
        crops = np.load(folder / CROPS_FILE, mmap_mode="r") if index["keys"] else None
        size = int(index["crop_size"])
        if crops is not None and crops.shape != (len(index["keys"]), size, size, 3):
            return None
        return index
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _load(folder: Path, paths: list[Path], index: dict[str, Any], reused: int = 0) -> CropCache:
    return CropCache(
        folder=folder,
        paths=paths,
        keys=list(index["keys"]),
        ok=np.array(index["ok"], dtype=bool).reshape(len(paths)),
        errors=list(index["errors"]),
        notes=list(index["notes"]),
        crop_size=int(index["crop_size"]),
        params=dict(index["params"]),
        reused=reused,
        feedback=list(index.get("feedback") or [None] * len(paths)),
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_dead_temporaries(cache_dir: Path) -> None:
    """Remove temporary folders left by this host's processes that no longer run."""
    host = socket.gethostname()
    for folder in cache_dir.glob(f"{TEMP_PREFIX}*"):
        parts = folder.name[len(TEMP_PREFIX) :].rsplit("-", 2)
        if len(parts) == 3 and parts[0] == host and parts[1].isdigit():
            if not _pid_alive(int(parts[1])):
                shutil.rmtree(folder, ignore_errors=True)


def _reusable_rows(cache_dir: Path, wanted: set[str], crop_size: int):
    """key -> (folder, row, ok, error, note, feedback) for wanted keys in complete sets."""
    found: dict[str, tuple] = {}
    for folder in sorted(cache_dir.iterdir()) if cache_dir.is_dir() else []:
        if folder.name.startswith(TEMP_PREFIX) or not folder.is_dir():
            continue
        index = _read_index(folder)
        if index is None or int(index["crop_size"]) != crop_size:
            continue
        retry = set(index.get("retry", ()))
        for row, key in enumerate(index["keys"]):
            if key in wanted and key not in found and row not in retry:
                found[key] = (
                    folder,
                    row,
                    index["ok"][row],
                    index["errors"][row],
                    index["notes"][row],
                    (index.get("feedback") or [None] * len(index["keys"]))[row],
                )
        if len(found) == len(wanted):
            break
    return found


def _choose_crop(result) -> tuple[np.ndarray | None, str | None, str | None]:
    """(crop, error, note) from a SegmentationResult: the largest cell."""
    if result.n_cells == 0:
        return None, result.message or "no cell found", None
    largest = int(np.argmax(result.table["area"]))
    note = None
    if result.n_cells > 1:
        note = f"{result.n_cells} cells found; kept the largest"
    if result.message:
        note = f"{note}; {result.message}" if note else result.message
    return result.crops[largest], None, note


def _hash_files(paths: list[Path], params_json: str, workers: int):
    """Yield (i, key or None, error or None) in order, hashing in threads."""

    def one(path: Path) -> tuple[str | None, str | None]:
        try:
            return file_key(path, params_json), None
        except OSError as error:
            return None, f"cannot read the file: {error.strerror or error}"

    with ThreadPoolExecutor(max(1, min(workers, 8))) as pool:
        yield from enumerate(pool.map(one, paths))


def build_crop_cache(
    paths: Sequence[str | os.PathLike],
    params: SegmentationParams | None = None,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = 1,
) -> Generator[Progress, None, CropCache]:
    """Segment and crop `paths` into the cache (or find them there); returns the `CropCache`.

    Yields `Progress` while hashing files, while segmenting and before writing the crops. Files that cannot be read or hold
    no cell do not stop the run: their row has `ok` False and an error.
    """
    params = params or SegmentationParams()
    paths = [Path(p) for p in paths]
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    workers = max(1, int(workers or 1))
    params_json = _params_json(params)
    total = len(paths)

    keys, hash_errors = yield from _hash_all(paths, params_json, workers)
    folder = cache_dir / _set_key(params_json, keys)
    index = _read_index(folder)
    if index is not None and not index.get("retry"):
        yield Progress(total, total, "preprocessing: segmenting", "all crops cached")
        return _load(folder, paths, index, reused=total)

    _remove_dead_temporaries(cache_dir)
    temp = cache_dir / f"{TEMP_PREFIX}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    temp.mkdir()
    try:
        rows = _NewSet.allocate(temp, total, params.crop_size, hash_errors)
        todo = rows.copy_reusable(cache_dir, keys, hash_errors)
        reused = total - len(todo) - len(hash_errors)
        yield from _segment_rows(rows, [paths[i] for i in todo], todo, params, workers, reused)
        yield Progress(total, total, "preprocessing: caching", f"writing {total} crops")
        index = rows.write(temp, keys, paths, params_json)
        _move_into_place(temp, folder)
        temp = None
        return _load(folder, paths, _read_index(folder) or index, reused)
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


def _hash_all(
    paths: list[Path], params_json: str, workers: int
) -> Generator[Progress, None, tuple[list[str], dict[int, str]]]:
    """Every file's key (a stand-in for an unreadable one), and why files could not be read."""
    total = len(paths)
    keys: list[str] = []
    hash_errors: dict[int, str] = {}
    step = max(1, total // 100)
    yield Progress(0, total, "preprocessing: hashing", "reading files")
    for i, key, error in ((i, *r) for i, r in _hash_files(paths, params_json, workers)):
        if key is None:
            hash_errors[i] = error
            key = "unreadable:" + hashlib.sha256(str(paths[i]).encode()).hexdigest()
        keys.append(key)
        if (i + 1) % step == 0 or i + 1 == total:
            yield Progress(i + 1, total, "preprocessing: hashing")
    return keys, hash_errors


@dataclass
class _NewSet:
    """The rows of a set being built in its temporary folder: crops (a writable memory map,
    None for an empty set), whether each worked, why not, notes, segmentation feedback
    (`ImageFeedback` fields), rows to retry next run."""

    crops: np.ndarray | None
    ok: np.ndarray
    errors: list[str | None]
    notes: list[str | None]
    crop_size: int
    feedback: list[dict[str, Any] | None] = field(default_factory=list)
    retry: list[int] = field(default_factory=list)

    @classmethod
    def allocate(cls, temp: Path, total: int, size: int, hash_errors: dict[int, str]) -> _NewSet:
        crops = None
        if total:
            crops = np.lib.format.open_memmap(
                temp / CROPS_FILE, mode="w+", dtype=np.uint8, shape=(total, size, size, 3)
            )
        rows = cls(
            crops, np.zeros(total, dtype=bool), [None] * total, [None] * total, size, [None] * total
        )
        for i, error in hash_errors.items():
            rows.errors[i] = error
        return rows

    def copy_reusable(
        self, cache_dir: Path, keys: list[str], hash_errors: dict[int, str]
    ) -> list[int]:
        """Copy the rows found in complete sets; returns the rows still to segment."""
        wanted = {key for i, key in enumerate(keys) if i not in hash_errors}
        reusable = _reusable_rows(cache_dir, wanted, self.crop_size)
        opened: dict[Path, np.ndarray] = {}
        todo: list[int] = []
        for i, key in enumerate(keys):
            if i in hash_errors:
                continue
            if key not in reusable:
                todo.append(i)
                continue
            source, row, self.ok[i], self.errors[i], self.notes[i], self.feedback[i] = reusable[key]
            if self.ok[i]:
                if source not in opened:
                    opened[source] = np.load(source / CROPS_FILE, mmap_mode="r")
                self.crops[i] = opened[source][row]
        opened.clear()
        return todo

    def take(self, i: int, outcome) -> None:
        """Row `i` from a file's segmentation (its largest cell, or why there is none)."""
        if outcome.error is not None:
            self.errors[i] = outcome.error
            if any(marker in outcome.error for marker in TRANSIENT_ERRORS):
                self.retry.append(i)
            return
        self.feedback[i] = asdict(ImageFeedback.of(outcome.result))
        crop, self.errors[i], self.notes[i] = _choose_crop(outcome.result)
        if crop is not None:
            self.crops[i] = crop
            self.ok[i] = True

    def write(self, temp: Path, keys: list[str], paths: list[Path], params_json: str) -> dict:
        """Flush the crops, then write the index (last, so a partial set never looks complete)."""
        if self.crops is not None:
            self.crops.flush()
            self.crops = None
            _fsync(temp / CROPS_FILE)
        index = {
            "format": CACHE_FORMAT,
            "complete": True,
            "crop_size": self.crop_size,
            "params": json.loads(params_json)["segmentation"],
            "keys": keys,
            "files": [str(p) for p in paths],
            "ok": self.ok.tolist(),
            "errors": self.errors,
            "notes": self.notes,
            "feedback": self.feedback,
            "retry": self.retry,
        }
        (temp / INDEX_FILE).write_text(json.dumps(index))
        _fsync(temp / INDEX_FILE)
        return index


def _segment_rows(
    rows: _NewSet,
    files: list[Path],
    todo: list[int],
    params: SegmentationParams,
    workers: int,
    reused: int,
) -> Generator[Progress, None, None]:
    """Segment `files` (rows `todo`) in worker processes, each into its row."""
    total = len(rows.ok)
    done = total - len(todo)
    step = max(1, len(todo) // 200)
    message = f"{reused} reused" if reused else ""
    yield Progress(done, total, "preprocessing: segmenting", message)
    stream = iter_segment_files(
        files, replace(params, largest_only=False), workers, keep_labels=False
    )
    try:
        for n, (i, outcome) in enumerate(zip(todo, stream, strict=True), start=1):
            rows.take(i, outcome)
            if n % step == 0 or n == len(todo):
                yield Progress(done + n, total, "preprocessing: segmenting", message)
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _move_into_place(temp: Path, folder: Path) -> None:
    """Rename the finished temporary folder to `folder`; an existing complete one wins."""
    if folder.exists():
        existing = _read_index(folder)
        if existing is not None and not existing.get("retry"):
            shutil.rmtree(temp, ignore_errors=True)
            return
        trash = folder.with_name(f"{TEMP_PREFIX}{socket.gethostname()}-0-old{uuid.uuid4().hex[:6]}")
        replace_atomic(folder, trash)
        shutil.rmtree(trash, ignore_errors=True)
    try:
        replace_atomic(temp, folder)
    except OSError:
        # Another process finished the same set first: theirs is as good as ours.
        if _read_index(folder) is None:
            raise
        shutil.rmtree(temp, ignore_errors=True)
