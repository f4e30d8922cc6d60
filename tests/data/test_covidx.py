"""COVIDx list files (v9 3-class with source column, CXR-4 binary with val.txt, old 3-column)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from xrayfm import DatasetError
from xrayfm.data import build_dataset
from xrayfm.data.datasets.covidx import BINARY, THREE_CLASS, parse_list
from xrayfm.io.writers import write_dicom, write_png

V9_TRAIN = [
    "3 SARS-10.1148rg.242035193-g04mr34g0-Fig8a-day0.jpeg pneumonia cohen",
    "3 SARS-10.1148rg.242035193-g04mr34g0-Fig8a-day7.jpeg pneumonia cohen",
    "0a0f91dc-6015-4342-b809-d19610854a21 0a0f91dc-6015-4342-b809-d19610854a21.png normal rsna",
    "1b4a8d3c-0de4-4e8c-a55b-25e2b1d4a0a1 1b4a8d3c-0de4-4e8c-a55b-25e2b1d4a0a1.png normal rsna",
    "419639-003251 MIDRC-RICORD-1C-419639-003251-46647-0.png COVID-19 ricord",
    "419639-003251 MIDRC-RICORD-1C-419639-003251-46647-1.png COVID-19 ricord",
    "101 COVID-19 (1).png COVID-19 sirm",
    "102 person1_bacteria_1.jpeg pneumonia cohen",
    "103 covid-19-pneumonia-58-prior.jpg COVID-19 cohen",
    "104 NORMAL2-IM-1427-0001.jpeg normal cohen",
]
V9_TEST = [
    "419639-000082 MIDRC-RICORD-1A-419639-000082-39881-0.png COVID-19 ricord",
    "c2a4d5f1-2c15-4d1b-9d39-0f3e37b7b4c5 c2a4d5f1-2c15-4d1b-9d39-0f3e37b7b4c5.png normal rsna",
]


def _write(root: Path, part: str, lines: list[str]) -> None:
    rng = np.random.default_rng(len(lines))
    (root / f"{part}.txt").write_text("\n".join(lines) + "\n")
    for line in lines:
        tokens = line.split()
        name = (
            " ".join(tokens[1:-2]) if len(tokens) > 3 and tokens[-2] in THREE_CLASS + BINARY else " ".join(tokens[1:-1])
        )
        if name.endswith(".dcm"):
            write_dicom(root / part / name, rng.uniform(0, 1, (16, 16)))
        else:
            write_png(root / part / name, rng.uniform(0, 1, (16, 16)))


def test_v9_three_class_hashed_val(tmp_path: Path) -> None:
    _write(tmp_path, "train", V9_TRAIN)
    _write(tmp_path, "test", V9_TEST)
    ds = build_dataset("covidx", tmp_path, "all")
    assert len(ds) == 12 and ds.tasks[0].classes == THREE_CLASS and ds.tasks[0].kind == "multiclass"
    by_id = {r.meta["id"]: r for r in ds.records}
    assert by_id["COVID-19 (1)"].labels.tolist() == [0, 0, 1]  # file name with a space
    assert by_id["person1_bacteria_1"].labels.tolist() == [0, 1, 0]
    assert by_id["NORMAL2-IM-1427-0001"].meta["data_source"] == "cohen"
    test = build_dataset("covidx", tmp_path, "test")
    assert len(test) == 2 and all(r.image.parent == tmp_path / "test" for r in test.records)
    train = build_dataset("covidx", tmp_path, "train", val_fraction=0.5)
    val = build_dataset("covidx", tmp_path, "val", val_fraction=0.5)
    assert len(train) + len(val) == 10 and len(val) > 0
    assert not {r.meta["patient_id"] for r in train.records} & {r.meta["patient_id"] for r in val.records}
    assert all(r.image.parent == tmp_path / "train" for r in val.records)
    s = test[0]
    assert s["image"].shape == (1, 16, 16) and s["labels"].sum() == 1


def test_cxr4_binary_with_official_val(tmp_path: Path) -> None:
    _write(tmp_path, "train", [
        "419639-003251 MIDRC-RICORD-1C-419639-003251-46647-0.png positive ricord",
        "0a0f91dc-6015-4342-b809-d19610854a21 0a0f91dc-6015-4342-b809-d19610854a21.png negative rsna",
        "A123 A123-study.dcm positive bimcv",
    ])  # fmt: skip
    _write(tmp_path, "val", ["5 val-image-5.png negative rsna", "6 val-image-6.png positive ricord"])
    _write(tmp_path, "test", ["7 test-image-7.png negative rsna"])
    parts = {s: build_dataset("covidx", tmp_path, s) for s in ("train", "val", "test")}
    assert [len(parts[s]) for s in ("train", "val", "test")] == [3, 2, 1]
    assert parts["val"].tasks[0].classes == BINARY and parts["val"].records[1].labels.tolist() == [0, 1]
    assert all(r.image.parent == tmp_path / "val" for r in parts["val"].records)
    dcm = next(i for i, r in enumerate(parts["train"].records) if r.image.suffix == ".dcm")
    assert parts["train"][dcm]["image"].shape == (1, 16, 16)


def test_old_three_column_format_and_versioned_names(tmp_path: Path) -> None:
    lines = ["1 person1_virus_6.jpeg pneumonia", "2 IM-0115-0001.jpeg normal", "3 covid-19-x.png COVID-19"]
    _write(tmp_path, "train", lines)
    (tmp_path / "train.txt").rename(tmp_path / "train_split_v3.txt")
    _write(tmp_path, "test", ["4 IM-0117-0001.jpeg normal"])
    (tmp_path / "test.txt").rename(tmp_path / "test_COVIDx9A.txt")
    entries = parse_list(tmp_path / "train_split_v3.txt")
    assert entries[0] == ("1", "person1_virus_6.jpeg", "pneumonia", None, 1)
    assert len(build_dataset("covidx", tmp_path, "all")) == 4


def test_errors(tmp_path: Path) -> None:
    _write(tmp_path, "train", V9_TRAIN[:3])
    with pytest.raises(DatasetError, match="no test list"):
        build_dataset("covidx", tmp_path, "test")
    (tmp_path / "test.txt").write_text("9 x.png normal rsna\n10 y.png viral rsna\n")
    with pytest.raises(DatasetError, match=r"test.txt: line 2: expected 'patient_id filename class \[source\]'"):
        build_dataset("covidx", tmp_path, "test")
    (tmp_path / "test.txt").write_text("9 x.png negative rsna\n")
    with pytest.raises(DatasetError, match="mix the 3-class and binary"):
        build_dataset("covidx", tmp_path, "all")
    (tmp_path / "test.txt").write_text("9 x.png normal rsna\n")
    with pytest.raises(DatasetError, match="1 of 1 labelled images are missing"):
        build_dataset("covidx", tmp_path, "test")
