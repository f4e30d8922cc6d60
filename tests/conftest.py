"""Shared fixtures: where the real datasets are, the ``shared_data`` policy, and small file factories.

Tests that need the real datasets in ``../shared/datasets`` carry the ``shared_data`` marker: every
test using the ``shared_datasets`` / ``label_files`` fixtures (directly or through another fixture)
gets it at collection; a test that reads :data:`SHARED` without them must be marked by hand. When the
folder is missing such a test is skipped with the reason, except under CI (``CI=true``), where it
fails: a CI run must not pass by silently skipping the real-data tests.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("XRAYFM_SHARED", REPO.parent / "shared")) / "datasets"
#: Fixtures that hand out ../shared: a test using any of them needs the real datasets.
SHARED_FIXTURES = frozenset({"shared_datasets", "label_files"})


def in_ci() -> bool:
    """True when the environment variable ``CI`` says so (``true`` / ``1``, any case)."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1"}


def shared_data_missing(reason: str) -> NoReturn:
    """Skip a test that needs ../shared; under CI fail it instead, with the same reason."""
    if in_ci():
        pytest.fail(
            f"{reason}. CI=true: tests marked shared_data must run in CI, not skip; put shared/ beside the "
            "repository or point XRAYFM_SHARED at it",
            pytrace=False,
        )
    pytest.skip(f"{reason} (set XRAYFM_SHARED to the shared/ folder)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that uses a ../shared fixture, however indirectly, with ``shared_data``."""
    for item in items:
        if SHARED_FIXTURES & set(getattr(item, "fixturenames", ())) and not item.get_closest_marker("shared_data"):
            item.add_marker(pytest.mark.shared_data)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Apply the policy to every ``shared_data`` test before its fixtures run."""
    if item.get_closest_marker("shared_data") and not SHARED.is_dir():
        shared_data_missing(f"real datasets not found at {SHARED}")


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """Root of the real X-ray samples (``../shared/datasets``); skipped (failed under CI) when absent."""
    if not SHARED.is_dir():
        shared_data_missing(f"real datasets not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def label_files(shared_datasets: Path) -> Path:
    """Folder of the real published label files (NIH, CheXpert, VinDr, SIIM, RSNA)."""
    path = shared_datasets / "label_files"
    if not path.is_dir():
        shared_data_missing(f"label files not found at {path}")
    return path


@pytest.fixture
def umask_022() -> Iterator[None]:
    """Run a test under umask 022 (files a plain open() would create 0o644), then restore it."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def gradient_image() -> np.ndarray:
    """A 64x48 float image in [0, 1] with a horizontal ramp and a bright disc."""
    h, w = 48, 64
    yy, xx = np.mgrid[0:h, 0:w]
    img = xx / (w - 1) * 0.6
    img[(yy - 24) ** 2 + (xx - 40) ** 2 < 64] = 1.0
    return img.astype(np.float32)
