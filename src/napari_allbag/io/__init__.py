"""Files in and out: reading images, finding them in folders, worker pools, remembered settings,
atomic writes (`atomic`: the one place that writes a file through a temporary and os.replace),
and the process's allocator thresholds (`allocator`).

May import: the standard library, numpy, OpenCV, and `progress`/`defaults`. Nothing else of the
package (every other subpackage may import this one).
"""

from napari_allbag._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(
        ("IMAGE_EXTENSIONS", "ImageReadError", "read_image", "to_rgb_uint8", "find_images"),
        "images",
    ),
    **dict.fromkeys(
        ("write_bytes_atomic", "write_text_atomic", "write_json_atomic", "new_file_mode"), "atomic"
    ),
    "ordered_map": "ordered_pool",
    "tune_allocator": "allocator",
    **dict.fromkeys(
        ("load_settings", "save_settings", "last_bundle_dir", "remember_bundle_dir"), "settings"
    ),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
