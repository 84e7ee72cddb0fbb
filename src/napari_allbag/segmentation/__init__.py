"""Cells out of images: the paper's dark-background segmentation (`dark`), crops of hand-edited
label images (`recrop`), and the on-disk crop cache training and evaluation share (`crop_cache`).
A new segmentation (bright-field) joins here as its own module.

May import: `io`, `data`, `progress`, `defaults`.
"""

from napari_allbag._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(
        (
            "TABLE_COLUMNS",
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
    "crops_from_labels": "recrop",
    **dict.fromkeys(("CropCache", "build_crop_cache", "default_cache_dir"), "crop_cache"),
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
