"""Shared fixtures: the real C-NMC sample beside the project (skipped where absent)."""

from __future__ import annotations

import os
from pathlib import Path

# Busy-waiting OpenMP threads make torch ~10x slower when the two CI cores are shared with
# worker processes; passive waiting costs nothing measurable here. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CNMC_SAMPLE = REPO_ROOT.parent / "shared" / "data" / "cnmc_sample"


@pytest.fixture(scope="session")
def cnmc_dir() -> Path:
    """The folder of 62 real C-NMC cells (`all/`, `hem/`); skips the test where it is absent."""
    if not (CNMC_SAMPLE / "all").is_dir():
        pytest.skip(f"real C-NMC sample not found at {CNMC_SAMPLE}")
    return CNMC_SAMPLE


@pytest.fixture(autouse=True, scope="session")
def _few_torch_threads():
    """CI has two cores: keep torch from oversubscribing them."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        return
    torch.set_num_threads(2)
