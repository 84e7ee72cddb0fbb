"""The paper's training subsets A and B (Liu & Long 2019, Sec. 2.3 and Fig. 2).

ALL cells outnumber HEM cells about two to one. The ALL cells are split into two equal halves,
All-A and All-B, by a seeded shuffle:

- set A = All-A originals + augmented All-B + HEM originals + augmented HEM
- set B = All-B originals + augmented All-A + HEM originals + augmented HEM

so model-A and model-B see the same HEM cells but different mixtures of ALL cells. Augmented
entries point at the same training cell with `augment=True`; the trainer draws a fresh random
augmentation for them every epoch (`augment.augment_batch`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from napari_allbag.data.annotations import CLASS_NAMES, class_indices


@dataclass(frozen=True)
class Subset:
    """One training set: `indices` into the training items and, per entry, whether to augment."""

    indices: np.ndarray  # int64
    augment: np.ndarray  # bool, same length
    name: str = ""

    def __post_init__(self) -> None:
        if self.indices.shape != self.augment.shape:
            raise ValueError("indices and augment must have the same length")

    def __len__(self) -> int:
        return len(self.indices)


def split_all_halves(
    labels: Sequence[int] | np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """All-A and All-B: the ALL cells (label 1) in two halves by a seeded shuffle, each sorted.

    With an odd number of ALL cells, All-A gets the extra one.
    """
    label_array = class_indices(labels)
    all_cells = np.flatnonzero(label_array == CLASS_NAMES.index("all"))
    shuffled = np.random.default_rng(seed).permutation(all_cells)
    half = (len(shuffled) + 1) // 2
    return np.sort(shuffled[:half]), np.sort(shuffled[half:])


def make_bagging_subsets(
    labels: Sequence[int] | Sequence[str] | np.ndarray, seed: int
) -> tuple[Subset, Subset]:
    """Training sets A and B for the labels of the training cells (0/1 or "hem"/"all")."""
    label_array = class_indices(labels)
    n_all = int((label_array == 1).sum())
    n_hem = int((label_array == 0).sum())
    if n_all < 2 or n_hem < 1:
        raise ValueError(
            f"Bagging needs at least 2 ALL cells and 1 HEM cell in the training set "
            f"(found {n_all} ALL, {n_hem} HEM)."
        )
    all_a, all_b = split_all_halves(label_array, seed)
    hem = np.flatnonzero(label_array == 0)

    def compose(own: np.ndarray, other: np.ndarray, name: str) -> Subset:
        parts = [(own, False), (other, True), (hem, False), (hem, True)]
        indices = np.concatenate([p for p, _ in parts]).astype(np.int64)
        augment = np.concatenate([np.full(len(p), flag) for p, flag in parts]).astype(bool)
        return Subset(indices=indices, augment=augment, name=name)

    return compose(all_a, all_b, "A"), compose(all_b, all_a, "B")


def describe_subsets(subset_a: Subset, subset_b: Subset, labels: Sequence[int] | np.ndarray) -> str:
    """One line per set: how many original and augmented ALL and HEM entries it holds."""
    label_array = class_indices(labels)
    lines = []
    for subset in (subset_a, subset_b):
        is_all = label_array[subset.indices] == 1
        lines.append(
            f"set {subset.name}: {len(subset)} entries = {int((is_all & ~subset.augment).sum())} ALL "
            f"+ {int((is_all & subset.augment).sum())} augmented ALL + "
            f"{int((~is_all & ~subset.augment).sum())} HEM + "
            f"{int((~is_all & subset.augment).sum())} augmented HEM"
        )
    return "\n".join(lines)
