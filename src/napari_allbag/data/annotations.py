"""Annotated folders: which image is which class (ALL or HEM), and which subject it came from.

A cell's class comes from an `all`/`hem` folder at any depth below the root (the C-NMC layout
`training_data/fold_0/all/...`) or, where no such folder names it, from a `_all`/`_hem` file-name
suffix. Subjects come from C-NMC names `UID_<subject>_<image>_<cell>_<class>` or from an optional
CSV with the columns `file` and `subject`. Subjects are kept so the train/validation split can keep
each subject's cells together (see `splits`). The C-NMC training release scans as it unpacks
(`C-NMC_training_data/fold_0..2/{all,hem}`); its test sets (numbered images and a labels CSV with
`Patient_ID`, `new_names`, `labels`) are read by `read_labels_csv`.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from napari_allbag.defaults import CLASS_NAMES
from napari_allbag.io.images import IMAGE_EXTENSIONS, find_images

#: C-NMC file names: UID_<subject>_<image>_<cell>_<class>, e.g. UID_H10_47_2_hem, UID_11_1_1_all.
CNMC_NAME = re.compile(
    r"^UID_(?P<subject>[^_]+)_(?P<image>\d+)_(?P<cell>\d+)_(?P<label>all|hem)$", re.I
)
SUFFIX_LABEL = re.compile(r"_(all|hem)$", re.I)
#: Column names a labels CSV may use (compared lower-case, spaces and hyphens as underscores);
#: the C-NMC preliminary test set's CSV has Patient_ID, new_names, labels (1 = ALL, 0 = HEM).
LABELS_CSV_COLUMNS = {
    "file": ("new_names", "new_name", "file", "filename", "file_name", "image", "image_name"),
    "label": ("labels", "label", "class", "class_name", "target"),
    "subject": ("patient_id", "patient", "subject", "subject_id"),
}
LABEL_VALUES = {"1": "all", "all": "all", "0": "hem", "hem": "hem", "normal": "hem"}


class AnnotationError(ValueError):
    """An annotated folder that cannot be used as it is (the message says why and how to fix it)."""


@dataclass(frozen=True)
class AnnotatedItem:
    """One annotated cell image: its file, its class (`"all"` or `"hem"`), its subject if known."""

    path: Path
    label: str
    subject: str | None = None

    @property
    def label_index(self) -> int:
        """0 for HEM, 1 for ALL (the order of `CLASS_NAMES`)."""
        return CLASS_NAMES.index(self.label)


@dataclass
class AnnotatedSet:
    """The labelled images under `root`, plus the files that could not be used and why."""

    root: Path
    items: list[AnnotatedItem]
    unlabelled: list[Path] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    conflicting: list[Path] = field(default_factory=list)
    subjects_source: str = "none"  # "file names", "csv", "csv + file names" or "none"
    csv_rows_unmatched: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def paths(self) -> list[Path]:
        return [item.path for item in self.items]

    @property
    def labels(self) -> np.ndarray:
        """Class indices (0 HEM, 1 ALL) as an int64 array, in item order."""
        return np.array([item.label_index for item in self.items], dtype=np.int64)

    @property
    def subjects(self) -> list[str | None]:
        return [item.subject for item in self.items]

    @property
    def has_subjects(self) -> bool:
        """True when every cell has a subject id (the split can then keep subjects together)."""
        return bool(self.items) and all(item.subject is not None for item in self.items)

    def without(self, errors: dict[Path, str]) -> AnnotatedSet:
        """A copy where the items whose path is in `errors` moved to `unreadable` (with the reason).

        The folder scan does not decode every image; the preprocessing step does, and reports here
        which files it could not read or segment.
        """
        bad = {Path(p): reason for p, reason in errors.items()}
        kept = [item for item in self.items if item.path not in bad]
        moved = [(item.path, bad[item.path]) for item in self.items if item.path in bad]
        return replace(self, items=kept, unreadable=[*self.unreadable, *moved])

    def summary(self) -> dict[str, Any]:
        """Cells per class and per subject, and the files left out: a JSON-able dict."""
        per_class = Counter(item.label for item in self.items)
        per_subject: dict[str, dict[str, int]] = {}
        for item in self.items:
            if item.subject is None:
                continue
            counts = per_subject.setdefault(item.subject, {name: 0 for name in CLASS_NAMES})
            counts[item.label] += 1
        return {
            "root": str(self.root),
            "cells": len(self.items),
            "per_class": {name: per_class.get(name, 0) for name in CLASS_NAMES},
            "subjects_source": self.subjects_source,
            "n_subjects": len(per_subject),
            "cells_without_subject": sum(item.subject is None for item in self.items),
            "per_subject": dict(
                sorted(per_subject.items(), key=lambda kv: subject_sort_key(kv[0]))
            ),
            "unlabelled": [str(p) for p in self.unlabelled],
            "unreadable": [{"file": str(p), "reason": reason} for p, reason in self.unreadable],
            "conflicting_labels": [str(p) for p in self.conflicting],
            "csv_rows_unmatched": list(self.csv_rows_unmatched),
        }

    def summary_text(self, max_listed: int = 10) -> str:
        """The summary as a few readable lines (long lists are cut after `max_listed` entries)."""
        return format_summary(self.summary(), max_listed=max_listed)


def format_summary(summary: dict[str, Any], max_listed: int = 10) -> str:
    """Readable text for `AnnotatedSet.summary()`."""
    per_class = summary["per_class"]
    lines = [
        f"Annotated folder: {summary['root']}",
        f"  cells: {summary['cells']} ({per_class['all']} ALL, {per_class['hem']} HEM)",
    ]
    per_subject = summary["per_subject"]
    if per_subject:
        all_subjects = [s for s, c in per_subject.items() if c["all"] >= c["hem"]]
        lines.append(
            f"  subjects: {len(per_subject)} ({len(all_subjects)} ALL, "
            f"{len(per_subject) - len(all_subjects)} HEM; ids from {summary['subjects_source']})"
        )
        shown = list(per_subject.items())[:max_listed]
        parts = [f"{s}: {c['all'] + c['hem']}" for s, c in shown]
        more = len(per_subject) - len(shown)
        lines.append(
            "  cells per subject: " + ", ".join(parts) + (f", ... ({more} more)" if more else "")
        )
    else:
        lines.append("  subjects: unknown (no C-NMC file names and no subjects CSV)")
    if summary["cells_without_subject"] and per_subject:
        lines.append(f"  cells without a subject id: {summary['cells_without_subject']}")
    for key, title in (
        ("unlabelled", "files with no class (no all/hem folder or _all/_hem suffix)"),
        ("unreadable", "unreadable files"),
        ("conflicting_labels", "files whose name suffix disagrees with their folder (folder used)"),
        ("csv_rows_unmatched", "subjects CSV rows that match no image"),
    ):
        entries = summary[key]
        if not entries:
            continue
        lines.append(f"  {title}: {len(entries)}")
        for entry in entries[:max_listed]:
            text = f"{entry['file']} ({entry['reason']})" if isinstance(entry, dict) else entry
            lines.append(f"    {text}")
        if len(entries) > max_listed:
            lines.append(f"    ... ({len(entries) - max_listed} more)")
    return "\n".join(lines)


def label_from_path(path: Path, root: Path) -> tuple[str | None, bool]:
    """The class of `path` and whether its file-name suffix disagrees with its folder.

    The deepest `all`/`hem` folder below `root` wins; without one, the `_all`/`_hem` suffix.
    """
    folder_label = None
    for part in reversed(path.relative_to(root).parts[:-1]):
        if part.lower() in CLASS_NAMES:
            folder_label = part.lower()
            break
    match = SUFFIX_LABEL.search(path.stem)
    suffix_label = match.group(1).lower() if match else None
    if folder_label is None:
        return suffix_label, False
    return folder_label, suffix_label is not None and suffix_label != folder_label


def subject_from_name(name: str) -> str | None:
    """The subject id in a C-NMC file name, or None.

    Normal (HEM) subjects start with H; the challenge data spells a few of them with a lower-case
    h (`UID_h3_...`), and no name in it uses both spellings of the same number, so ids are
    upper-cased: `h3` and `H3` are one subject. ALL subject numbers lose leading zeros.
    """
    match = CNMC_NAME.match(Path(name).stem)
    if not match:
        return None
    subject = match.group("subject").upper()
    return str(int(subject)) if subject.isdigit() else subject


def subject_sort_key(subject: str) -> tuple[int, str, int, str]:
    """Natural order of subject ids: 1, 2, 10, then H1, H2, H10."""
    digits = re.sub(r"\D", "", subject)
    number = int(digits) if digits else 0
    return (0 if subject.isdigit() else 1, re.sub(r"\d", "", subject), number, subject)


def read_subjects_csv(csv_path: Path, root: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Read a subjects CSV (columns `file`, `subject`): maps by relative path and by file name."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise AnnotationError(f"Subjects CSV not found: {csv_path}")
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = {(name or "").strip().lower(): name for name in reader.fieldnames or []}
        if "file" not in columns or "subject" not in columns:
            raise AnnotationError(
                f"Subjects CSV {csv_path} needs the columns 'file' and 'subject' "
                f"(found: {', '.join(reader.fieldnames or []) or 'none'})."
            )
        by_relpath: dict[str, str] = {}
        for row in reader:
            file = (row[columns["file"]] or "").strip().replace("\\", "/")
            subject = (row[columns["subject"]] or "").strip()
            if not file or not subject:
                continue
            file_path = Path(file)
            if file_path.is_absolute():
                try:
                    file = file_path.relative_to(root).as_posix()
                except ValueError:
                    file = file_path.name
            by_relpath[file] = subject
    by_name = {Path(rel).name: subject for rel, subject in by_relpath.items()}
    return by_relpath, by_name


def scan_annotated_folder(
    root: str | Path,
    subjects_csv: str | Path | None = None,
    require_both_classes: bool = True,
) -> AnnotatedSet:
    """Find the labelled images under `root` with their classes and subjects.

    Raises `AnnotationError` when the folder does not exist, holds no images, or (with
    `require_both_classes`) holds only one class, with a message that says how to fix it.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise AnnotationError(f"Annotated folder not found: {root}")
    images = find_images([root])
    if not images:
        raise AnnotationError(
            f"No images found in {root} (looked for {', '.join(IMAGE_EXTENSIONS)} in all "
            "sub-folders). Point at the folder that holds the all/ and hem/ folders."
        )
    csv_by_relpath: dict[str, str] = {}
    csv_by_name: dict[str, str] = {}
    if subjects_csv is not None:
        csv_by_relpath, csv_by_name = read_subjects_csv(Path(subjects_csv), root)

    items: list[AnnotatedItem] = []
    unlabelled: list[Path] = []
    unreadable: list[tuple[Path, str]] = []
    conflicting: list[Path] = []
    used_csv: set[str] = set()
    from_csv = from_names = 0
    for path in images:
        label, conflict = label_from_path(path, root)
        if label is None:
            unlabelled.append(path)
            continue
        if path.stat().st_size == 0:
            unreadable.append((path, "empty file"))
            continue
        if conflict:
            conflicting.append(path)
        relpath = path.relative_to(root).as_posix()
        subject = csv_by_relpath.get(relpath)
        if subject is not None:
            used_csv.add(relpath)
        elif path.name in csv_by_name:
            subject = csv_by_name[path.name]
            used_csv.update(r for r in csv_by_relpath if Path(r).name == path.name)
        if subject is not None:
            from_csv += 1
        else:
            subject = subject_from_name(path.name)
            from_names += subject is not None
        items.append(AnnotatedItem(path=path, label=label, subject=subject))

    source = {(False, False): "none", (True, False): "csv", (False, True): "file names"}.get(
        (from_csv > 0, from_names > 0), "csv + file names"
    )
    result = AnnotatedSet(
        root=root,
        items=items,
        unlabelled=unlabelled,
        unreadable=unreadable,
        conflicting=conflicting,
        subjects_source=source,
        csv_rows_unmatched=sorted(set(csv_by_relpath) - used_csv),
    )
    check_classes(result, require_both=require_both_classes)
    return result


def check_classes(annotated: AnnotatedSet, require_both: bool = True) -> None:
    """Raise `AnnotationError` when no image has a class, or (with `require_both`) one class is missing."""
    counts = Counter(item.label for item in annotated.items)
    if not annotated.items:
        raise AnnotationError(
            f"None of the {len(annotated.unlabelled) + len(annotated.unreadable)} images in "
            f"{annotated.root} has a class: put them in folders named all/ and hem/, or end their "
            "names with _all or _hem (e.g. cell_12_all.bmp)."
        )
    if require_both:
        missing = [name for name in CLASS_NAMES if counts[name] == 0]
        if missing:
            present = [name for name in CLASS_NAMES if counts[name]][0]
            raise AnnotationError(
                f"Only {present.upper()} cells found in {annotated.root} ({counts[present]} images), "
                f"no {missing[0].upper()} cells: training needs both classes. Add a "
                f"{missing[0]}/ folder (or files named *_{missing[0]}.bmp)."
            )


def class_indices(
    values: Sequence[Any] | np.ndarray, class_names: Sequence[str] = CLASS_NAMES
) -> np.ndarray:
    """Class indices (int64) from class indices or class names (any case): 0 HEM, 1 ALL.
    ValueError names an unknown class or an index out of range."""
    array = np.asarray(values)
    if array.dtype.kind in "UO":
        lookup = {name.lower(): i for i, name in enumerate(class_names)}
        try:
            return np.array([lookup[str(v).lower()] for v in array], dtype=np.int64)
        except KeyError as error:
            raise ValueError(
                f"Unknown class {error.args[0]!r}; expected one of {tuple(class_names)}"
            ) from None
    array = array.astype(np.int64).reshape(-1)
    if array.size and (array.min() < 0 or array.max() >= len(class_names)):
        raise ValueError(f"Class indices must be in 0..{len(class_names) - 1}.")
    return array


def labels_of(items: Sequence[AnnotatedItem]) -> np.ndarray:
    """Class indices (0 HEM, 1 ALL) of `items` as an int64 array."""
    return np.array([item.label_index for item in items], dtype=np.int64)


def _labels_csv_columns(fieldnames: Sequence[str] | None, csv_path: Path) -> dict[str, str | None]:
    """The CSV's own name for the file, label and (optional) subject columns."""
    found = {re.sub(r"[\s-]+", "_", (n or "").strip().lower()): n for n in fieldnames or []}
    columns = {
        role: next((found[a] for a in aliases if a in found), None)
        for role, aliases in LABELS_CSV_COLUMNS.items()
    }
    missing = [role for role in ("file", "label") if columns[role] is None]
    if missing:
        expected = "; ".join(
            f"{role}: one of {', '.join(LABELS_CSV_COLUMNS[role])}" for role in missing
        )
        raise AnnotationError(
            f"Labels CSV {csv_path} has no {' or '.join(missing)} column (found: "
            f"{', '.join(fieldnames or []) or 'none'}; expected {expected}). Rename the column."
        )
    return columns


def _label_value(value: str, csv_path: Path, line: int) -> str:
    text = (value or "").strip().lower()
    label = LABEL_VALUES.get(text[:-2] if text.endswith(".0") else text)
    if label is None:
        raise AnnotationError(
            f"Labels CSV {csv_path}, line {line}: label {value!r} is neither ALL (1, all) nor "
            "HEM (0, hem)."
        )
    return label


def read_labels_csv(csv_path: str | Path, images_dir: str | Path) -> list[AnnotatedItem]:
    """The cells of a folder of numbered images whose classes are in a CSV (C-NMC's test sets).

    Columns are found by name (`LABELS_CSV_COLUMNS`, any case). Subjects come from the subject
    column: from the C-NMC name it holds (`UID_57_29_1_all.bmp` -> 57), else the value itself.
    Raises `AnnotationError` naming the columns found, a bad label, or images that are missing.
    """
    csv_path, images_dir = Path(csv_path).expanduser(), Path(images_dir).expanduser()
    if not csv_path.is_file():
        raise AnnotationError(f"Labels CSV not found: {csv_path}")
    if not images_dir.is_dir():
        raise AnnotationError(f"Image folder not found: {images_dir}")
    by_name = {path.name.lower(): path for path in find_images([images_dir])}
    items: list[AnnotatedItem] = []
    missing: list[str] = []
    seen: set[Path] = set()
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = _labels_csv_columns(reader.fieldnames, csv_path)
        for line, row in enumerate(reader, start=2):
            name = (row[columns["file"]] or "").strip()
            if not name:
                continue
            label = _label_value(row[columns["label"]], csv_path, line)
            path = by_name.get(Path(name.replace("\\", "/")).name.lower())
            if path is None:
                missing.append(name)
                continue
            if path in seen:
                raise AnnotationError(
                    f"Labels CSV {csv_path}, line {line}: {name} is listed twice."
                )
            seen.add(path)
            raw = (row[columns["subject"]] or "").strip() if columns["subject"] else ""
            subject = subject_from_name(raw) or raw or None
            items.append(AnnotatedItem(path=path, label=label, subject=subject))
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise AnnotationError(
            f"{len(missing)} image(s) named in {csv_path} are not in {images_dir}: {shown}."
        )
    if not items:
        raise AnnotationError(f"Labels CSV {csv_path} names no image.")
    return items


def scan_labels_csv(csv_path: str | Path, images_dir: str | Path) -> AnnotatedSet:
    """The annotated set of a folder of numbered images with a labels CSV (C-NMC's test sets).

    What `evaluate --labels-csv` reads: classes and subjects from the CSV (`read_labels_csv`).
    """
    items = read_labels_csv(csv_path, images_dir)
    has_subjects = any(item.subject for item in items)
    return AnnotatedSet(
        root=Path(images_dir).expanduser(),
        items=items,
        subjects_source="csv" if has_subjects else "none",
    )
