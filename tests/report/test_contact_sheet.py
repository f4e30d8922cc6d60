"""Contact sheets draw the dataset's own boxes and mask outlines on its images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xrayfm import XrayfmError
from xrayfm.data import build_dataset
from xrayfm.data.phantom_io import write_phantom_dataset
from xrayfm.report import contact_sheet
from xrayfm.report.contact_sheet import COLOURS


def test_sheet_grid_and_box_colours(tmp_path: Path) -> None:
    root = write_phantom_dataset(tmp_path / "ph", n=9, seed=3, size=96)
    ds = build_dataset("phantom", root, "all")
    path = contact_sheet(ds, tmp_path / "sheet.png", n=9, side=96)
    px = np.asarray(Image.open(path).convert("RGB"))
    assert px.shape == (3 * 96, 3 * 96, 3)
    drawn = {tuple(c) for c in px.reshape(-1, 3)}
    used = {COLOURS[int(k) % len(COLOURS)] for r in ds.records if r.box_labels is not None for k in r.box_labels}
    assert used and used <= drawn  # every box class present appears in its colour
    assert COLOURS[3] in drawn  # lung outline (mask channel 0)


def test_empty_dataset_refused(tmp_path: Path) -> None:
    root = write_phantom_dataset(tmp_path / "ph", n=2, seed=0, size=64)
    ds = build_dataset("phantom", root, "all").subset([])
    with pytest.raises(XrayfmError, match="empty"):
        contact_sheet(ds, tmp_path / "x.png")
