"""``xrayfm inspect`` names the adapter of a folder from its published marker files."""

from __future__ import annotations

from pathlib import Path

import pytest

from xrayfm.data.inspect import LAYOUT_MARKERS, detect_layout
from xrayfm.data.registry import list_datasets


@pytest.mark.parametrize(
    ("marker", "adapter"),
    [
        ("TBX11K/lists/TBX11K_train.txt", "tbx11k"),
        ("cxr_images/proccessed_data/metadata.csv", "node21"),
        ("Pneumothorax_reports.csv", "candid_ptx"),
        ("ChestX_Det_train.json", "chestx_det"),
        ("stage_2_train_labels.csv", "rsna_pneumonia"),
    ],
)
def test_a_published_marker_file_names_its_adapter(marker: str, adapter: str, tmp_path: Path) -> None:
    (tmp_path / marker).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / marker).write_text("")
    assert detect_layout(tmp_path) == adapter


def test_every_marked_layout_is_a_registered_adapter(tmp_path: Path) -> None:
    assert detect_layout(tmp_path) is None
    assert {name for name, _ in LAYOUT_MARKERS} <= {d.name for d in list_datasets()}
