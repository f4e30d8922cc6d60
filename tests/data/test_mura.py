"""MURA v1.1 in its published layout: headerless path and study-label CSVs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from xrayfm import DatasetError, UnknownNameError
from xrayfm.data import build_dataset
from xrayfm.io.writers import write_png

# (official split, body part, patient, study folder, number of images)
STUDIES = [
    ("train", "XR_ELBOW", "patient00011", "study1_negative", 3),
    ("train", "XR_SHOULDER", "patient00001", "study1_positive", 2),
    ("train", "XR_SHOULDER", "patient00001", "study2_negative", 1),
    ("train", "XR_WRIST", "patient06359", "study1_positive", 2),
    ("train", "XR_FINGER", "patient03215", "study1_negative", 1),
    ("train", "XR_HAND", "patient09734", "study1_positive", 1),
    ("train", "XR_HUMERUS", "patient02714", "study1_negative", 1),
    ("train", "XR_FOREARM", "patient08821", "study1_positive", 2),
    ("valid", "XR_WRIST", "patient11185", "study1_positive", 4),
    ("valid", "XR_ELBOW", "patient11186", "study1_negative", 1),
]


def _write_mura(parent: Path, studies: list[tuple[str, str, str, str, int]] = STUDIES) -> Path:
    mura = parent / "MURA-v1.1"
    rng = np.random.default_rng(0)
    paths: dict[str, list[str]] = {"train": [], "valid": []}
    labels: dict[str, list[str]] = {"train": [], "valid": []}
    for split, part, patient, study, n in studies:
        folder = f"MURA-v1.1/{split}/{part}/{patient}/{study}/"
        labels[split].append(f"{folder},{int(study.endswith('positive'))}")
        for k in range(1, n + 1):
            paths[split].append(f"{folder}image{k}.png")
            write_png(parent / folder / f"image{k}.png", rng.uniform(0, 1, (24, 20)))
    for split in ("train", "valid"):
        (mura / f"{split}_image_paths.csv").write_text("\n".join(paths[split]) + "\n")
        (mura / f"{split}_labeled_studies.csv").write_text("\n".join(labels[split]) + "\n")
    return mura


def test_labels_meta_and_official_test(tmp_path: Path) -> None:
    _write_mura(tmp_path)
    ds = build_dataset("mura", tmp_path, "all")
    assert len(ds) == 18 and ds.tasks[0].classes == ("abnormal",)
    test = build_dataset("mura", tmp_path, "test")
    assert len(test) == 5 and {r.meta["official_split"] for r in test.records} == {"valid"}
    rec = next(r for r in ds.records if r.meta["id"] == "patient00001_study1_image2")
    assert rec.labels.tolist() == [1.0] and rec.meta["body_part"] == "SHOULDER" and rec.meta["study"] == "study1"
    assert rec.meta["study_id"] == "train/XR_SHOULDER/patient00001/study1_positive"
    assert rec.image == tmp_path / "MURA-v1.1/train/XR_SHOULDER/patient00001/study1_positive/image2.png"
    assert sum(r.labels[0] for r in ds.records) == 2 + 2 + 1 + 2 + 4
    s = ds[0]
    assert s["image"].shape == (1, 24, 20) and s["meta"]["patient_id"] == "patient00011"


def test_train_val_patient_disjoint_and_root_is_release_folder(tmp_path: Path) -> None:
    mura = _write_mura(tmp_path)
    train = build_dataset("mura", mura, "train", val_fraction=0.4)
    val = build_dataset("mura", mura, "val", val_fraction=0.4)
    assert len(train) + len(val) == 13 and len(val) > 0
    assert not {r.meta["patient_id"] for r in train.records} & {r.meta["patient_id"] for r in val.records}
    both = [r for r in train.records + val.records if r.meta["patient_id"] == "patient00001"]
    assert len({r.meta["split"] for r in both}) == 1 and len(both) == 3


def test_body_part_filter(tmp_path: Path) -> None:
    _write_mura(tmp_path)
    ds = build_dataset("mura", tmp_path, "all", body_parts=("wrist", "XR_ELBOW"))
    assert {r.meta["body_part"] for r in ds.records} == {"WRIST", "ELBOW"} and len(ds) == 2 + 4 + 3 + 1
    assert len(build_dataset("mura", tmp_path, "all", body_parts="wrist")) == 6  # one name, as the CLI passes it
    with pytest.raises(UnknownNameError, match="KNEE"):
        build_dataset("mura", tmp_path, "all", body_parts=("KNEE",))


def test_folder_name_contradicting_label_is_an_error(tmp_path: Path) -> None:
    mura = _write_mura(tmp_path)
    studies = mura / "train_labeled_studies.csv"
    studies.write_text(
        studies.read_text().replace("patient00011/study1_negative/,0", "patient00011/study1_negative/,1")
    )
    with pytest.raises(
        DatasetError, match=r"train_image_paths.csv: line 1: folder 'study1_negative' contradicts label 1"
    ):
        build_dataset("mura", tmp_path, "train")
    assert len(build_dataset("mura", tmp_path, "test")) == 5  # only the files a split needs are read


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="train_image_paths.csv"):
        build_dataset("mura", tmp_path, "all")
    mura = _write_mura(tmp_path)
    studies = mura / "valid_labeled_studies.csv"
    studies.write_text(studies.read_text().replace(",0", ",2"))
    with pytest.raises(DatasetError, match="valid_labeled_studies.csv: line 2: label '2'"):
        build_dataset("mura", tmp_path, "test")
    studies.write_text("MURA-v1.1/valid/XR_WRIST/patient11185/study1_positive/,1\n")
    with pytest.raises(DatasetError, match="study valid/XR_ELBOW/patient11186/study1_negative is not in"):
        build_dataset("mura", tmp_path, "test")
    (mura / "valid/XR_WRIST/patient11185/study1_positive/image3.png").unlink()
    (mura / "valid_image_paths.csv").write_text(
        "\n".join(f"MURA-v1.1/valid/XR_WRIST/patient11185/study1_positive/image{k}.png" for k in range(1, 5))
    )
    with pytest.raises(DatasetError, match="1 of 4 labelled images are missing"):
        build_dataset("mura", tmp_path, "test")
    assert len(build_dataset("mura", tmp_path, "test", missing="skip")) == 3
    (mura / "valid_image_paths.csv").write_text("MURA-v1.1/valid/XR_WRIST/image1.png\n")
    with pytest.raises(DatasetError, match="line 1: .* is not <split>/XR_<PART>"):
        build_dataset("mura", tmp_path, "test")
