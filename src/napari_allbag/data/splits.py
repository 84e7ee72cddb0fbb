"""The 7:3 train/validation split: by subject, stratified by class, seeded.

Cells of one subject look alike (same patient, same smear, same stain), so a split that puts a
subject on both sides measures memory rather than generalisation. Subjects are therefore split,
ALL subjects and HEM subjects separately so that both sides hold both classes, choosing the
subjects whose cells come closest to the wanted fraction. Without subject ids the split is by cell
(still stratified) and the note says so.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from napari_allbag.data.annotations import CLASS_NAMES, AnnotatedItem

#: Random subject orders tried per class; the one whose prefix comes closest to the target wins.
ORDERS_TRIED = 64


@dataclass(frozen=True)
class Split:
    """Indices into the items: `train` and `val` (sorted), how they were split, and a note."""

    train: list[int]
    val: list[int]
    by_subject: bool
    note: str
    train_subjects: tuple[str, ...] = field(default=())
    val_subjects: tuple[str, ...] = field(default=())


def split_train_val(
    items: Sequence[AnnotatedItem], val_fraction: float = 0.3, seed: int = 0
) -> Split:
    """Split `items` into train and validation, by subject when every item has one.

    Raises ValueError when a class has too few subjects (fewer than 2) or cells (fewer than 2) to
    appear on both sides.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1 (got {val_fraction}).")
    if not items:
        raise ValueError("Nothing to split: no annotated cells.")
    rng = np.random.default_rng(seed)
    with_subject = sum(item.subject is not None for item in items)
    if with_subject == len(items):
        return _split_by_subject(items, val_fraction, rng)
    reason = (
        "no subject ids"
        if with_subject == 0
        else f"{len(items) - with_subject} of {len(items)} cells have no subject id"
    )
    return _split_by_cell(items, val_fraction, rng, reason)


def _split_by_subject(
    items: Sequence[AnnotatedItem], val_fraction: float, rng: np.random.Generator
) -> Split:
    cells_of: dict[str, list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        cells_of[item.subject].append(index)
    # A subject's stratum is its majority class (C-NMC subjects hold one class only).
    strata: dict[str, list[str]] = {name: [] for name in CLASS_NAMES}
    for subject, cells in cells_of.items():
        n_all = sum(items[i].label == "all" for i in cells)
        strata["all" if n_all * 2 >= len(cells) else "hem"].append(subject)
    for name, subjects in strata.items():
        if len(subjects) < 2:
            raise ValueError(
                f"Too few {name.upper()} subjects to split by subject: found {len(subjects)}, "
                f"need at least 2 (one for training, one for validation). Add cells from more "
                f"subjects, or give no subject ids to split by cell."
            )
    val_subjects: list[str] = []
    for name in CLASS_NAMES:
        subjects = sorted(strata[name])
        sizes = np.array([len(cells_of[s]) for s in subjects])
        val_subjects += [subjects[i] for i in _closest_prefix(sizes, val_fraction, rng)]
    val_set = set(val_subjects)
    val = sorted(i for s in val_set for i in cells_of[s])
    train = sorted(i for s in cells_of if s not in val_set for i in cells_of[s])
    train_subjects = tuple(sorted(s for s in cells_of if s not in val_set))
    note = (
        f"split by subject: {len(train_subjects)} subjects ({len(train)} cells) for training, "
        f"{len(val_set)} subjects ({len(val)} cells) for validation "
        f"(validation fraction {len(val) / len(items):.2f}, wanted {val_fraction:.2f}); "
        "no subject on both sides"
    )
    return Split(train, val, True, note, train_subjects, tuple(sorted(val_set)))


def _closest_prefix(sizes: np.ndarray, fraction: float, rng: np.random.Generator) -> list[int]:
    """Indices of a non-empty, non-full set of groups whose total comes closest to `fraction`.

    Tries `ORDERS_TRIED` seeded random orders and every prefix of each; the first best one wins.
    """
    target = fraction * sizes.sum()
    best: tuple[float, list[int]] | None = None
    for _ in range(ORDERS_TRIED):
        order = rng.permutation(len(sizes))
        totals = np.cumsum(sizes[order])[:-1]  # prefixes of 1 .. n-1 groups
        k = int(np.argmin(np.abs(totals - target)))
        gap = float(abs(totals[k] - target))
        if best is None or gap < best[0]:
            best = (gap, order[: k + 1].tolist())
    return best[1]


def _split_by_cell(
    items: Sequence[AnnotatedItem], val_fraction: float, rng: np.random.Generator, reason: str
) -> Split:
    train: list[int] = []
    val: list[int] = []
    for name in CLASS_NAMES:
        cells = [i for i, item in enumerate(items) if item.label == name]
        if len(cells) < 2:
            raise ValueError(
                f"Too few {name.upper()} cells to split: found {len(cells)}, need at least 2 "
                "(one for training, one for validation)."
            )
        n_val = min(max(int(round(val_fraction * len(cells))), 1), len(cells) - 1)
        order = rng.permutation(len(cells))
        val += [cells[i] for i in order[:n_val]]
        train += [cells[i] for i in order[n_val:]]
    note = (
        f"split by cell, not by subject ({reason}): {len(train)} cells for training, "
        f"{len(val)} for validation; cells of one subject may be on both sides, so validation "
        "figures may be optimistic"
    )
    return Split(sorted(train), sorted(val), False, note)
