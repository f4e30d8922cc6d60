"""``xrayfm inspect`` checking a dataset: a DICOM whose decoder kills its process is a problem listed, the check
goes on, and the dataset reads with ``read_xray`` again afterwards."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from xrayfm.data import build_dataset
from xrayfm.data.inspect import inspect_path
from xrayfm.io import read_xray
from xrayfm.io.writers import write_png

CRASHERS = sorted((Path(__file__).parents[1] / "io" / "data").glob("gdcm_*.dcm"))


def test_a_dataset_check_lists_a_crashing_dicom_and_checks_the_rest(tmp_path: Path) -> None:
    for i in range(3):
        write_png(tmp_path / "normal" / f"n{i}.png", np.full((24, 20), 0.2 + 0.2 * i, dtype=np.float32))
    (tmp_path / "abnormal").mkdir()
    for crasher in CRASHERS:
        shutil.copy(crasher, tmp_path / "abnormal" / crasher.name)
    summary = inspect_path(tmp_path, dataset="image_folder", check=-1)
    assert summary["checked"] == 5 and summary["image_sizes"] == {"20x24": 3}
    assert sorted(summary["problems"]) == [
        f"{tmp_path / 'abnormal' / c.name}: the DICOM decoder crashed on this file's pixel data (damaged or hostile)"
        for c in CRASHERS
    ]


def test_reading_with_swaps_the_reader_for_a_block_only(tmp_path: Path) -> None:
    write_png(tmp_path / "a" / "x.png", np.zeros((8, 8), dtype=np.float32))
    ds = build_dataset("image_folder", tmp_path, "all")
    seen = []

    def spy(source, **options):  # noqa: ANN001, ANN202
        seen.append(Path(source).name)
        return read_xray(source, **options)

    with ds.reading_with(spy):
        ds.load(0)
    ds.load(0)
    assert seen == ["x.png"]
