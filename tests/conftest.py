"""Shared fixtures: where the real datasets are, and small file factories."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("XRAYFM_SHARED", REPO.parent / "shared")) / "datasets"


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """Root of the real X-ray samples (``../shared/datasets``); skips when absent."""
    if not SHARED.is_dir():
        pytest.skip(f"real datasets not found at {SHARED} (set XRAYFM_SHARED to the shared/ folder)")
    return SHARED


@pytest.fixture(scope="session")
def label_files(shared_datasets: Path) -> Path:
    """Folder of the real published label files (NIH, CheXpert, VinDr, SIIM, RSNA)."""
    path = shared_datasets / "label_files"
    if not path.is_dir():
        pytest.skip(f"{path} missing")
    return path


@pytest.fixture
def gradient_image() -> np.ndarray:
    """A 64x48 float image in [0, 1] with a horizontal ramp and a bright disc."""
    h, w = 48, 64
    yy, xx = np.mgrid[0:h, 0:w]
    img = xx / (w - 1) * 0.6
    img[(yy - 24) ** 2 + (xx - 40) ** 2 < 64] = 1.0
    return img.astype(np.float32)
