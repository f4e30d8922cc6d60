"""Shenzhen and Montgomery TB sets in their published NLM folder layouts (small written images)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from xrayfm import DatasetError, UnknownNameError
from xrayfm.data import build_dataset, collate_samples
from xrayfm.data.datasets.shenzhen_montgomery import parse_clinical_reading
from xrayfm.io.writers import write_mask_png, write_png

H, W = 40, 32
SHENZHEN = ["CHNCXR_0001_0", "CHNCXR_0002_0", "CHNCXR_0003_0", "CHNCXR_0327_1", "CHNCXR_0328_1", "CHNCXR_0662_1"]
MONTGOMERY = ["MCUCXR_0001_0", "MCUCXR_0002_0", "MCUCXR_0003_0", "MCUCXR_0104_1", "MCUCXR_0108_1"]


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.1, 0.9, (H, W))


def _lung(left: bool) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    if left:
        m[8:32, 18:28] = 255
    else:
        m[8:32, 4:14] = 255
    return m


@pytest.fixture
def shenzhen(tmp_path: Path) -> Path:
    root = tmp_path / "ChinaSet_AllFiles"
    for i, stem in enumerate(SHENZHEN):
        write_png(root / "CXR_png" / f"{stem}.png", _image(i), bits=8)
        tb = stem.endswith("_1")
        text = "Male     35yrs\nSTB,ATB in left upper field\n" if tb else "female 26yrs\nnormal\n"
        (root / "ClinicalReadings").mkdir(exist_ok=True)
        (root / "ClinicalReadings" / f"{stem}.txt").write_text(text)
        if i % 3 != 2:  # not every image has a Kaggle mask
            write_mask_png(root / "mask" / f"{stem}_mask.png", _lung(True) | _lung(False))
    (root / "CXR_png" / "Thumbs.db").write_bytes(b"x")  # stray files are ignored
    return root


@pytest.fixture
def montgomery(tmp_path: Path) -> Path:
    root = tmp_path / "MontgomerySet"
    for i, stem in enumerate(MONTGOMERY):
        write_png(root / "CXR_png" / f"{stem}.png", _image(i), bits=16)
        write_mask_png(root / "ManualMask" / "leftMask" / f"{stem}.png", _lung(True))
        write_mask_png(root / "ManualMask" / "rightMask" / f"{stem}.png", _lung(False) // 255)  # 0/1 works too
        (root / "ClinicalReadings").mkdir(exist_ok=True)
        finding = "right upper lobe cavitary TB" if stem.endswith("_1") else "normal"
        (root / "ClinicalReadings" / f"{stem}.txt").write_text(f"Patient's Sex: F\nPatient's Age: 058Y\n{finding}\n")
    return root


def test_clinical_readings_both_styles() -> None:
    assert parse_clinical_reading("Male     35yrs\nSTB,ATB in left upper field\n") == {
        "sex": "M", "age": 35, "finding": "STB,ATB in left upper field"}  # fmt: skip
    assert parse_clinical_reading("Patient's Sex: F\nPatient's Age: 058Y\nnormal\n") == {
        "sex": "F",
        "age": 58,
        "finding": "normal",
    }
    assert parse_clinical_reading("female 7month\nnormal") == {"sex": "F", "age": 0, "finding": "normal"}
    assert parse_clinical_reading("") == {"sex": None, "age": None, "finding": None}


def test_shenzhen_labels_meta_and_optional_masks(shenzhen: Path) -> None:
    ds = build_dataset("shenzhen", shenzhen, "all")
    assert len(ds) == 6 and [t.name for t in ds.tasks] == ["tuberculosis", "lungs"]
    by_id = {r.meta["id"]: r for r in ds.records}
    assert by_id["CHNCXR_0327_1"].labels.tolist() == [1.0] and by_id["CHNCXR_0001_0"].labels.tolist() == [0.0]
    assert by_id["CHNCXR_0327_1"].meta["sex"] == "M" and by_id["CHNCXR_0327_1"].meta["age"] == 35
    assert by_id["CHNCXR_0001_0"].meta["finding"] == "normal"
    assert sum(r.mask is not None for r in ds.records) == 4
    i = next(i for i, r in enumerate(ds.records) if r.mask is not None)
    s = ds[i]
    assert s["image"].shape == (1, H, W) and s["mask"].shape == (1, H, W)
    assert set(np.unique(s["mask"].numpy())) == {0, 1} and int(s["mask"].sum()) == 2 * 24 * 10
    assert len(build_dataset("shenzhen", shenzhen, "all", masks="require")) == 4
    none = build_dataset("shenzhen", shenzhen, "all", masks="none")
    assert len(none.tasks) == 1 and all(r.mask is None for r in none.records)


def test_shenzhen_split_is_hashed_image_id_and_disjoint(shenzhen: Path) -> None:
    parts = {
        s: {r.meta["id"] for r in build_dataset("shenzhen", shenzhen, s).records} for s in ("train", "val", "test")
    }
    assert sum(map(len, parts.values())) == 6
    assert not (parts["train"] & parts["val"] or parts["train"] & parts["test"] or parts["val"] & parts["test"])
    ds = build_dataset("shenzhen", shenzhen, "all")
    assert all(r.meta["patient_id"] == r.meta["id"] for r in ds.records)


def test_shenzhen_errors(shenzhen: Path, tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="masks mode"):
        build_dataset("shenzhen", shenzhen, "all", masks="sometimes")
    write_png(shenzhen / "CXR_png" / "CHNCXR_0663_2.png", _image(9))
    with pytest.raises(DatasetError, match=r"CHNCXR_0663_2.png.*_0 \(normal\) or _1"):
        build_dataset("shenzhen", shenzhen, "all")
    (shenzhen / "CXR_png" / "CHNCXR_0663_2.png").unlink()
    empty = tmp_path / "empty"
    (empty / "CXR_png").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no CHNCXR"):
        build_dataset("shenzhen", empty, "all")
    with pytest.raises(DatasetError, match="CXR_png"):
        build_dataset("shenzhen", tmp_path, "all")
    shutil.rmtree(shenzhen / "mask")
    with pytest.raises(DatasetError, match="masks='require'"):
        build_dataset("shenzhen", shenzhen, "all", masks="require")


def test_shenzhen_mask_size_mismatch_fails_on_load(shenzhen: Path) -> None:
    write_mask_png(shenzhen / "mask" / "CHNCXR_0001_0_mask.png", np.zeros((H // 2, W // 2), np.uint8))
    ds = build_dataset("shenzhen", shenzhen, "all")
    i = next(i for i, r in enumerate(ds.records) if r.meta["id"] == "CHNCXR_0001_0")
    with pytest.raises(DatasetError, match=r"CHNCXR_0001_0.png: mask shape \(1, 20, 16\)"):
        ds[i]


def test_montgomery_merged_and_separate(montgomery: Path) -> None:
    ds = build_dataset("montgomery", montgomery, "all")
    assert len(ds) == 5 and ds.task_for("mask").classes == ("lungs",)
    by_id = {r.meta["id"]: i for i, r in enumerate(ds.records)}
    s = ds[by_id["MCUCXR_0104_1"]]
    assert s["labels"].tolist() == [1.0] and s["meta"]["sex"] == "F" and s["meta"]["age"] == 58
    assert s["meta"]["finding"] == "right upper lobe cavitary TB" and s["image"].dtype.is_floating_point
    assert int(s["mask"].sum()) == 2 * 24 * 10
    sep = build_dataset("montgomery", montgomery, "all", lungs="separate")
    assert sep.task_for("mask").classes == ("left_lung", "right_lung")
    m = sep[0]["mask"].numpy()
    assert m.shape == (2, H, W) and m[0, 10, 20] == 1 and m[0, 10, 8] == 0 and m[1, 10, 8] == 1
    batch = collate_samples([sep[0], sep[1]])
    assert batch["mask"].shape == (2, 2, H, W)
    assert len(build_dataset("montgomery", montgomery, "all", lungs="none").tasks) == 1


def test_montgomery_missing_mask_and_bad_option(montgomery: Path) -> None:
    (montgomery / "ManualMask" / "rightMask" / "MCUCXR_0002_0.png").unlink()
    with pytest.raises(DatasetError, match=r"rightMask/MCUCXR_0002_0.png not found"):
        build_dataset("montgomery", montgomery, "all")
    assert len(build_dataset("montgomery", montgomery, "all", lungs="none")) == 5
    with pytest.raises(UnknownNameError, match="lungs mode"):
        build_dataset("montgomery", montgomery, "all", lungs="both")


def test_kaggle_combined_folder(tmp_path: Path) -> None:
    """The Kaggle 'Chest X-ray Masks and Labels' set mixes both sets in one CXR_png folder."""
    root = tmp_path / "Lung Segmentation"
    for i, stem in enumerate(["CHNCXR_0001_0", "CHNCXR_0002_1", "MCUCXR_0001_0"]):
        write_png(root / "CXR_png" / f"{stem}.png", _image(i))
        name = f"{stem}_mask.png" if stem.startswith("CHN") else f"{stem}.png"
        write_mask_png(root / "masks" / name, _lung(True))
    assert len(build_dataset("shenzhen", root, "all", masks="require")) == 2
    mc = build_dataset("montgomery", root, "all")
    assert len(mc) == 1 and int(mc[0]["mask"].sum()) == 24 * 10
