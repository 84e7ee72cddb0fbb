"""What the console says about each image's segmentation, and the counts in the final summary.

A bright-field smear run through the dark path gives one "cell" covering the whole field, and a
model then classifies it with confidence: so every command that segments (`segment`, `predict`,
`evaluate`) says per image, in words, when the background mode had to be guessed, when no
(white) cell was found, when the cells look wrong, and which white cells have a nucleus smaller
than a red cell (`defaults.SMALL_NUCLEUS_RBC`: a faint nucleus caught in part, or a platelet
clump or red cells overlapping), and counts each in its summary line:

    3 images: bright-field (auto); 1 with no white cell found, 1 doubtful segmentation,
    2 cells with a small nucleus: see the warnings above

`ImageFeedback` is small and picklable (it travels back from worker processes instead of the
whole result); `FeedbackTally` adds them up. Plain Python: the CLI prints, the widgets show.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from napari_allbag.defaults import SMALL_NUCLEUS_RBC

if TYPE_CHECKING:  # loads OpenCV; `inference.predict` imports this module on torch-only hosts
    from napari_allbag.segmentation.dark import SegmentationResult

#: How the summary names each mode.
MODE_WORDS = {"dark": "dark background", "bright": "bright-field", "": "unknown background"}


@dataclass(frozen=True)
class ImageFeedback:
    """One image's segmentation in brief: mode and how it was chosen, cells, what looks wrong."""

    mode: str = ""
    auto: bool = False
    n_cells: int = 0
    guessed: str = ""
    doubtful: str = ""
    message: str = ""
    #: ids of the cells whose nucleus is under `SMALL_NUCLEUS_RBC` red-cell areas
    small_nuclei: tuple[int, ...] = ()

    def __post_init__(self) -> None:  # a list when read back from a crop cache's JSON index
        object.__setattr__(self, "small_nuclei", tuple(int(i) for i in self.small_nuclei))

    @classmethod
    def of(cls, result: SegmentationResult) -> ImageFeedback:
        """From a `SegmentationResult` (or any object with its fields: a test's stand-in)."""
        table = getattr(result, "table", None)
        table = {} if table is None else table
        n_cells = len(table["cell_id"]) if "cell_id" in table else 0
        mode = getattr(result, "mode", "")
        if not mode and n_cells and "mode" in table:
            mode = str(table["mode"][0])
        return cls(
            mode,
            bool(getattr(result, "auto", False)),
            n_cells,
            getattr(result, "guessed", ""),
            getattr(result, "doubtful", ""),
            str(getattr(result, "message", "") or ""),
            _small_nuclei(table),
        )

    @property
    def mode_text(self) -> str:
        """e.g. "bright-field (auto)" or "dark background (set)"."""
        return f"{MODE_WORDS.get(self.mode, self.mode)} ({'auto' if self.auto else 'set'})"

    @property
    def cell_word(self) -> str:
        return "white cell" if self.mode == "bright" else "cell"

    def warnings(self) -> list[str]:
        """Plain-words warnings for this image ([] when all looks well)."""
        found = []
        if self.guessed:
            found.append(
                f"background guessed as {MODE_WORDS.get(self.mode, self.mode)} ({self.guessed}); "
                "pass --background dark or bright if that is wrong"
            )
        if self.n_cells == 0:
            found.append(
                f"no {self.cell_word} found" + (f" ({why})" if (why := self._why()) else "")
            )
        elif self.doubtful:
            found.append(f"doubtful segmentation: {self.doubtful}")
        if self.small_nuclei:
            ids = ", ".join(map(str, self.small_nuclei))
            found.append(
                f"cell{'s' if len(self.small_nuclei) > 1 else ''} {ids}: nucleus smaller than a "
                "red cell (a platelet clump, red cells overlapping or a faint nucleus?), "
                "check before trusting"
            )
        return found

    def _why(self) -> str:
        """The segmentation's own reason for finding nothing, without the guess note."""
        parts = [p for p in self.message.split("; ") if not p.startswith("background guessed")]
        why = "; ".join(parts)
        for lead in ("no white cell found:", "no cell found:"):
            why = why.split(lead, 1)[-1]
        return why.strip(" ;")

    def line(self, name: str) -> str | None:
        """`name: mode: warning; warning`, or None when there is nothing to say."""
        warnings = self.warnings()
        if not warnings:
            return None
        return f"{name}: {self.mode_text}: {'; '.join(warnings)}"


@dataclass
class FeedbackTally:
    """Counts over many images, for the summary line."""

    modes: Counter = field(default_factory=Counter)
    no_cell: Counter = field(default_factory=Counter)
    guessed: int = 0
    doubtful: int = 0
    small_nuclei: int = 0  # cells, not images

    def add(self, feedback: ImageFeedback) -> None:
        self.modes[feedback.mode_text] += 1
        self.guessed += bool(feedback.guessed)
        if feedback.n_cells == 0:
            self.no_cell[feedback.cell_word] += 1
        elif feedback.doubtful:
            self.doubtful += 1
        self.small_nuclei += len(feedback.small_nuclei)

    @property
    def images(self) -> int:
        return sum(self.modes.values())

    @property
    def warned(self) -> bool:
        return bool(
            self.guessed or self.doubtful or self.small_nuclei or sum(self.no_cell.values())
        )

    def text(self) -> str:
        """e.g. "3 images: bright-field (auto); 1 with no white cell found, 1 doubtful
        segmentation, 2 cells with a small nucleus: see the warnings above"."""
        n = self.images
        if len(self.modes) == 1:
            modes = next(iter(self.modes))
        else:
            modes = ", ".join(f"{count} {text}" for text, count in sorted(self.modes.items()))
        head = f"{n} image{'s' if n != 1 else ''}: {modes}"
        notes = []
        if self.guessed:
            notes.append(f"{self.guessed} with the background guessed")
        words = sorted(self.no_cell)
        notes += [f"{self.no_cell[word]} with no {word} found" for word in words]
        if self.doubtful:
            notes.append(f"{self.doubtful} doubtful segmentation{'s' if self.doubtful > 1 else ''}")
        if self.small_nuclei:
            many = self.small_nuclei > 1
            notes.append(f"{self.small_nuclei} cell{'s' if many else ''} with a small nucleus")
        if not notes:
            return head
        return f"{head}; {', '.join(notes)}: see the warnings above"


def _small_nuclei(table) -> tuple[int, ...]:
    """Ids of the cells whose measured nucleus is under `SMALL_NUCLEUS_RBC` red-cell areas."""
    if "nucleus_area_rbc" not in table or "cell_id" not in table:
        return ()
    small = np.asarray(table["nucleus_area_rbc"], dtype=float) < SMALL_NUCLEUS_RBC  # NaN: no
    return tuple(int(i) for i in np.asarray(table["cell_id"])[small])
