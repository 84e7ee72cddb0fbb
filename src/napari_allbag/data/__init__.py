"""Annotated cells: folders and classes, the subject split, bagging subsets, augmentation, and the
synthetic C-NMC-like cells (with the napari sample-data menu's layers, built without napari).

May import: `io`, `progress`, `defaults` (and numpy, OpenCV, torch for augmentation only).
"""

from napari_allbag._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(
        (
            "CLASS_NAMES",
            "AnnotatedItem",
            "AnnotatedSet",
            "AnnotationError",
            "class_indices",
            "scan_annotated_folder",
        ),
        "annotations",
    ),
    **dict.fromkeys(("Split", "split_train_val"), "splits"),
    **dict.fromkeys(("Subset", "make_bagging_subsets"), "bagging"),
    **dict.fromkeys(("AugmentRanges", "augment_batch"), "augment"),
    **dict.fromkeys(("make_cell", "make_field", "write_annotated_folder"), "synthetic"),
    **dict.fromkeys(
        ("BrightfieldLook", "BrightfieldTruth", "make_brightfield_field", "make_brightfield_crop"),
        "synthetic_brightfield",
    ),
    **dict.fromkeys(("single_cell", "field_of_cells", "annotated_set"), "samples"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
