"""Cells out of images: the paper's dark-background segmentation (`dark`), white cells in
bright-field smears and crops (`brightfield`, with `segment_auto` choosing the path per image),
large images in overlapping tiles (`tiles`), crops of hand-edited label images (`recrop`), the
on-disk crop cache training and evaluation share (`crop_cache`), and files segmented into a
folder of crops and tables (`to_folder`, what `segment` runs).

May import: `io`, `data`, `progress`, `defaults`.
"""

from napari_allbag._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(
        (
            "TABLE_COLUMNS",
            "BACKGROUND_MODES",
            "empty_table",
            "SegmentationParams",
            "SegmentationResult",
            "FileSegmentation",
            "segment_image",
            "segment_file",
            "segment_image_progress",
            "iter_segment_files",
            "default_workers",
        ),
        "dark",
    ),
    **dict.fromkeys(
        (
            "BackgroundGuess",
            "detect_background",
            "stain_channel",
            "segment_brightfield",
            "segment_brightfield_progress",
            "segment_auto",
            "segment_auto_progress",
        ),
        "brightfield",
    ),
    "crops_from_labels": "recrop",
    **dict.fromkeys(("CropCache", "build_crop_cache", "default_cache_dir"), "crop_cache"),
    **dict.fromkeys(("CELLS_COLUMNS", "segment_to_folder", "unique_stems"), "to_folder"),
    **dict.fromkeys(
        (
            "LargeImage",
            "TileOptions",
            "needs_tiling",
            "open_large_image",
            "read_window",
            "plan_tiles",
            "segment_tiled",
            "iter_tile_cells",
        ),
        "tiles",
    ),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
