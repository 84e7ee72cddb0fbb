"""napari-allbag: Liu & Long's deep bagging ensemble for ALL vs HEM white blood cells."""

__version__ = "0.1.0"
