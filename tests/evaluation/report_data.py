"""Generated inputs of the report's figures and page, shared by their tests."""

from __future__ import annotations

import cv2
import numpy as np

from napari_allbag.evaluation.figures import ReportData
from napari_allbag.model.calibration import apply_temperature, fit_temperature


def decode_png(png: bytes) -> np.ndarray:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def generated_report_data(n: int = 600, seed: int = 0) -> ReportData:
    """An over-confident ensemble on 6 subjects (3 ALL, 3 HEM), with calibrated P(ALL) too:
    each cell's class is drawn with a known P(ALL), which the ensemble then sharpens."""
    rng = np.random.default_rng(seed)
    true_p = np.clip(rng.beta(0.7, 0.7, n), 0.01, 0.99)
    y_true = (rng.random(n) < true_p).astype(np.int64)
    ids = rng.integers(1, 4, n)
    subjects = [f"{i}" if label else f"H{i}" for i, label in zip(ids, y_true, strict=True)]
    logit = 3.0 * (np.log(true_p) - np.log1p(-true_p))
    p_all = 1 / (1 + np.exp(-logit))
    probs = np.stack([1 - p_all, p_all], axis=1)
    calibrated = apply_temperature(probs, fit_temperature(probs, y_true))[:, 1]
    return ReportData(y_true, p_all, None, calibrated, subjects)
