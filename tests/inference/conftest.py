"""Shared by the inference tests: one tiny random bundle per module."""

from __future__ import annotations

import pytest

from napari_allbag.model.bundle import load_bundle
from tests.model_factory import make_tiny_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """The tiny test bundle (seed 4), loaded on the CPU."""
    return load_bundle(make_tiny_bundle(tmp_path_factory.mktemp("b") / "tiny", seed=4), "cpu")
