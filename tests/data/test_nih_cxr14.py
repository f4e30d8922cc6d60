"""NIH ChestX-ray14 adapter on the real published label files and real NIH images."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xrayfm import DatasetError, UnknownNameError
from xrayfm.data import build_dataset
from xrayfm.data.datasets.nih_cxr14 import BOX_CLASSES, FINDINGS

#: The fixture links the sample images in from the read-only shared folder: symlinks leading out of the root.
LINKED = {"allow_outside_root": True}


@pytest.fixture(scope="module")
def nih_root(tmp_path_factory: pytest.TempPathFactory, shared_datasets: Path) -> Path:
    """The real NIH layout: full Data_Entry + BBox_List, with the 300 real sample images."""
    root = tmp_path_factory.mktemp("nih")
    labels = shared_datasets / "label_files"
    shutil.copy(labels / "Data_Entry_2017_v2020.csv.gz", root)
    (root / "BBox_List_2017.csv").write_bytes(gzip.decompress((labels / "BBox_List_2017.csv.gz").read_bytes()))
    (root / "images").mkdir()
    for img in (shared_datasets / "nih_cxr14_sample" / "images").glob("*.png"):
        (root / "images" / img.name).symlink_to(img)
    return root


def test_parses_whole_label_file_with_skip(nih_root: Path, shared_datasets: Path) -> None:
    ds = build_dataset("nih_cxr14", nih_root, "all", missing="skip", **LINKED)
    assert len(ds) == 300  # every sample image is in Data_Entry
    sample_labels = pd.read_csv(shared_datasets / "nih_cxr14_sample" / "labels.csv")
    by_id = {Path(p).stem: row for p, row in zip(sample_labels["image"], sample_labels.itertuples())}
    for rec in ds.records:
        row = by_id[rec.meta["id"]]
        expected = [getattr(row, c) for c in FINDINGS]
        np.testing.assert_array_equal(rec.labels, expected)
        assert rec.meta["patient_id"] == f"{row.patient_id:05d}"


def test_missing_images_are_an_error_by_default(nih_root: Path) -> None:
    with pytest.raises(DatasetError, match="labelled images are missing"):
        build_dataset("nih_cxr14", nih_root, "all")


def test_keep_gives_label_statistics_without_images(nih_root: Path, shared_datasets: Path) -> None:
    ds = build_dataset("nih_cxr14", nih_root, "all", missing="keep", **LINKED)
    full = pd.read_csv(shared_datasets / "label_files" / "Data_Entry_2017_v2020.csv.gz")
    assert len(ds) == len(full) == 112120
    hernia = full["Finding Labels"].str.split("|").apply(lambda t: "Hernia" in t).sum()
    assert int(sum(r.labels[FINDINGS.index("Hernia")] for r in ds.records)) == hernia


def test_boxes_scaled_from_1024_space(nih_root: Path, shared_datasets: Path) -> None:
    ds = build_dataset("nih_cxr14", nih_root, "all", missing="skip", box_images_only=True, **LINKED)
    assert len(ds) == 44 and ds.task_for("boxes").classes == BOX_CLASSES
    truth = pd.read_csv(shared_datasets / "nih_cxr14_sample" / "boxes.csv")
    assert sum(len(r.boxes) for r in ds.records) == len(truth) == 49
    i = next(i for i, r in enumerate(ds.records) if r.meta["id"] == "00000150_002")
    s = ds[i]
    assert s["image"].shape == (1, 512, 512)
    row = truth[truth["image"] == "images/00000150_002.png"].iloc[0]
    np.testing.assert_allclose(
        s["boxes"][0].numpy(), row[["x_min", "y_min", "x_max", "y_max"]].to_numpy(float), atol=0.02
    )
    assert BOX_CLASSES[int(s["box_labels"][0])] == row["label"]


def test_splits_patient_disjoint_and_official_test(nih_root: Path) -> None:
    names = sorted(p.name for p in (nih_root / "images").glob("*.png"))
    (nih_root / "test_list.txt").write_text("\n".join(names[:60]) + "\n")
    try:
        parts = {s: build_dataset("nih_cxr14", nih_root, s, missing="skip", **LINKED) for s in ("train", "val", "test")}
    finally:
        (nih_root / "test_list.txt").unlink()
    assert {r.image.name for r in parts["test"].records} == set(names[:60])
    train_p = {r.meta["patient_id"] for r in parts["train"].records}
    val_p = {r.meta["patient_id"] for r in parts["val"].records}
    assert not train_p & val_p and len(parts["train"]) + len(parts["val"]) + len(parts["test"]) == 300


def test_no_finding_option_and_unknown_option(nih_root: Path) -> None:
    ds = build_dataset("nih_cxr14", nih_root, "all", missing="skip", include_no_finding=True, **LINKED)
    assert ds.task_for("labels").classes[-1] == "No Finding"
    with pytest.raises(UnknownNameError, match="no option"):
        build_dataset("nih_cxr14", nih_root, "all", misssing="skip")


def test_label_file_missing_column(tmp_path: Path) -> None:
    (tmp_path / "Data_Entry_2017.csv").write_text("Image Index,Finding Labels\n1.png,Mass\n")
    with pytest.raises(DatasetError, match="missing column"):
        build_dataset("nih_cxr14", tmp_path, "all")
