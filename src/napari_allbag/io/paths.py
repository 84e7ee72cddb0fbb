"""Refuse output locations that would destroy an input, damage the bundle or pollute the data.

`check_output_location` is called by every command before it writes: an output that *is* an
input image (`predict --overwrite --out cell.png`), lies inside the model bundle, or (for run and
output folders) lies inside the data folder or holds it, is refused with a message naming both
paths and the fix. Outputs inside the data would be read as cells by the next scan of that
folder (`DATA/all/run/curves.png` as an ALL cell); data inside an output folder could be
replaced by `--overwrite`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from napari_allbag.io.images import IMAGE_EXTENSIONS


class OutputLocationError(ValueError):
    """An output path that would overwrite or mix with inputs; the message says what to do."""


def check_output_location(
    out: str | os.PathLike,
    inputs: Iterable[str | os.PathLike],
    bundle: str | os.PathLike | None = None,
    what: str = "--out",
    *,
    folder: bool = False,
) -> None:
    """Raise `OutputLocationError` when writing `out` could destroy or pollute an input.

    `inputs` are the image files and data folders read; `bundle` the model bundle folder (or its
    bundle.json). `folder=True` for an output folder (a run folder, segment's --out): it must
    then neither lie inside a data folder nor hold one. `what` names the option in messages.
    """
    target = _resolved(out)
    for entry in inputs:
        source = _resolved(entry)
        if _same_file(out, entry) or target == source:
            raise OutputLocationError(
                f"{what} {out} is the input {entry} itself: writing there would destroy it. "
                f"Choose an output outside the inputs."
            )
        if Path(entry).is_dir():
            _check_against_folder(out, target, entry, source, what, folder)
        elif folder and _inside(source, target):
            raise OutputLocationError(
                f"The input {entry} is inside {what} {out}: writing the outputs there could "
                f"replace it. Choose an output folder that holds no inputs."
            )
    if bundle is not None:
        _check_against_bundle(out, target, Path(bundle), what, folder)


def _check_against_folder(out, target: Path, entry, source: Path, what: str, folder: bool) -> None:
    suggestion = source.parent / f"{source.name}-outputs"
    if folder and _inside(target, source):
        raise OutputLocationError(
            f"{what} {out} is inside the input folder {entry}: the next scan of {entry} would read "
            f"its outputs (crops, curves.png) as cells. Choose a folder outside the data, "
            f"e.g. {suggestion}."
        )
    if folder and _inside(source, target):
        raise OutputLocationError(
            f"The input folder {entry} is inside {what} {out}: writing there could replace the "
            f"data. Choose an output folder outside the data, e.g. {suggestion}."
        )
    if _inside(target, source) and target.suffix.lower() in IMAGE_EXTENSIONS:
        raise OutputLocationError(
            f"{what} {out} is an image file inside the input folder {entry}: it is (or would "
            f"become) one of the inputs. Choose an output outside {entry}."
        )


def _check_against_bundle(out, target: Path, bundle: Path, what: str, folder: bool) -> None:
    if bundle.name == "bundle.json":
        bundle = bundle.parent
    place = _resolved(bundle)
    if target == place or _inside(target, place):
        raise OutputLocationError(
            f"{what} {out} is inside the model bundle {bundle}: writing there would damage the "
            f"bundle. Choose an output outside {bundle}."
        )
    if folder and _inside(place, target):
        raise OutputLocationError(
            f"The model bundle {bundle} is inside {what} {out}: writing there could replace it. "
            f"Choose an output folder that does not hold the bundle."
        )


def _resolved(path: str | os.PathLike) -> Path:
    path = Path(path).expanduser()
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symlink loop (RuntimeError before Python 3.13)
        return Path(os.path.abspath(path))


def _inside(path: Path, folder: Path) -> bool:
    """True when `path` lies strictly below `folder` (both resolved)."""
    return folder in path.parents


def _same_file(first, second) -> bool:
    """The same file on disk (also through hard or symbolic links)."""
    try:
        return os.path.samefile(first, second)
    except (OSError, ValueError):
        return False
