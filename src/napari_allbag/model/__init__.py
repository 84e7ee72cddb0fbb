"""The networks: timm backbones, the stage-1 and combined models, the ensemble and its decision
rule (`networks`), the other ensemble rules and the threshold (`rules`), temperature scaling, ECE
and the sensitivity-first threshold (`calibration`), the model bundle folder (`bundle`; `meta`
reads its bundle.json without torch), its model card (`card`, torch-free), the bioimage.io export
(`export_bioimageio`), and the compute device (`devices`).

May import: `io`, `data`, `segmentation` (the bundle records its segmentation parameters),
`progress`, `defaults`. `networks` imports torch and timm only;
`rules` numpy only, `calibration` numpy and scipy.
"""

from napari_allbag._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(
        (
            "CLASS_NAMES",
            "MODEL_NAMES",
            "BackboneConfig",
            "UnknownBackboneError",
            "resolve_backbone",
            "create_backbone",
            "Stage1Model",
            "CombinedHead",
            "CombinedModel",
            "Preprocess",
            "Ensemble",
            "decide",
            "build_ensemble",
        ),
        "networks",
    ),
    **dict.fromkeys(
        (
            "LoadedBundle",
            "save_bundle",
            "load_bundle",
        ),
        "bundle",
    ),
    **dict.fromkeys(
        ("FORMAT_VERSION", "META_FILE", "BundleError", "bundle_folder", "read_bundle_meta"), "meta"
    ),
    **dict.fromkeys(
        (
            "ModelCardError",
            "build_model_card",
            "format_model_card",
            "read_model_card",
            "validate_model_card",
            "software_versions",
        ),
        "card",
    ),
    **dict.fromkeys(("ExportSettings", "export_bioimageio"), "export_bioimageio"),
    **dict.fromkeys(
        ("RULES", "DEFAULT_RULE", "decide_rule", "rule_p_all", "decide_threshold", "model_labels"),
        "rules",
    ),
    **dict.fromkeys(
        (
            "ECE_BINS",
            "fit_temperature",
            "fit_temperatures",
            "apply_temperature",
            "apply_temperatures",
            "reliability_bins",
            "expected_calibration_error",
            "ThresholdChoice",
            "sensitivity_threshold",
        ),
        "calibration",
    ),
    **dict.fromkeys(
        ("DeviceError", "select_device", "device_description", "release_memory"), "devices"
    ),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
