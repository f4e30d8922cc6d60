"""RSNA Pneumonia adapter on the real stage_2_train_labels.csv.zip (30,227 rows, 26,684 images)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xrayfm.data import build_dataset
from xrayfm.data.datasets.rsna_pneumonia import DETAILED_CLASSES, build_rsna_pneumonia
from xrayfm.errors import DatasetError, UnknownNameError
from xrayfm.io.writers import write_dicom, write_png

pytestmark = pytest.mark.shared_data

ZIP = "kaggle_stage_2_train_labels.csv.zip"


@pytest.fixture(scope="module")
def real_df(label_files: Path) -> pd.DataFrame:
    return pd.read_csv(label_files / ZIP)


@pytest.fixture(scope="module")
def picks(real_df: pd.DataFrame) -> dict[str, str]:
    """A real image with two boxes, one with one box, one negative."""
    n = real_df[real_df["Target"] == 1].groupby("patientId").size()
    return {
        "two": n[n == 2].index[0],
        "one": n[n == 1].index[0],
        "negative": real_df[real_df["Target"] == 0]["patientId"].iloc[0],
    }


@pytest.fixture(scope="module")
def root(label_files: Path, picks: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rsna")
    (root / ZIP).symlink_to(label_files / ZIP)
    images = root / "stage_2_train_images"
    write_dicom(images / f"{picks['two']}.dcm", np.full((64, 64), 0.5), tags={"PatientID": picks["two"]})
    write_dicom(images / f"{picks['negative']}.dcm", np.full((64, 64), 0.3))
    write_png(images / f"{picks['one']}.png", np.full((128, 128), 0.5))  # a PNG conversion
    return root


@pytest.fixture(scope="module")
def records(root: Path) -> list:
    ds = build_rsna_pneumonia(root, "all", missing="keep")
    recs, tasks = ds.records, ds.tasks
    assert [(t.kind, t.classes) for t in tasks] == [("multilabel", ("Lung Opacity",)), ("detection", ("Lung Opacity",))]
    return recs


def test_whole_file(real_df: pd.DataFrame, records: list) -> None:
    assert len(real_df) == 30227 and len(records) == real_df["patientId"].nunique() == 26684
    positives = real_df[real_df["Target"] == 1]
    assert sum(r.labels[0] for r in records) == positives["patientId"].nunique() == 6012
    assert sum(len(r.boxes) for r in records) == len(positives) == 9555
    n_boxes = pd.Series({r.meta["id"]: len(r.boxes) for r in records})
    assert n_boxes.value_counts().to_dict() == {0: 20672, 1: 2614, 2: 3266, 3: 119, 4: 13}
    boxes = np.concatenate([r.boxes for r in records])
    want = positives[["x", "y", "width", "height"]].to_numpy(np.float32)
    want[:, 2:] += want[:, :2]
    np.testing.assert_array_equal(boxes, want)  # xywh -> xyxy, file order kept
    assert all(r.box_space == (1024, 1024) for r in records) and boxes.max() <= 1024
    shares = pd.Series([r.meta["split"] for r in records]).value_counts(normalize=True)
    assert abs(shares["train"] - 0.7) < 0.02 and abs(shares["val"] - 0.1) < 0.02 and abs(shares["test"] - 0.2) < 0.02


def test_end_to_end(root: Path, real_df: pd.DataFrame, picks: dict) -> None:
    ds = build_dataset("rsna_pneumonia", root, "all", missing="skip")
    samples = {ds.records[i].meta["id"]: ds[i] for i in range(len(ds))}
    assert set(samples) == set(picks.values())
    two = samples[picks["two"]]
    assert two["image"].shape == (1, 64, 64) and two["labels"].tolist() == [1.0]
    rows = real_df[real_df["patientId"] == picks["two"]][["x", "y", "width", "height"]].to_numpy(np.float32)
    xyxy = np.concatenate([rows[:, :2], rows[:, :2] + rows[:, 2:]], axis=1)
    np.testing.assert_allclose(two["boxes"].numpy(), xyxy / 16, rtol=1e-6)  # 1024 px -> 64 px
    assert two["box_labels"].tolist() == [0, 0]
    one = samples[picks["one"]]
    assert one["boxes"].shape == (1, 4) and one["image"].shape == (1, 128, 128)
    neg = samples[picks["negative"]]
    assert neg["boxes"].shape == (0, 4) and neg["box_labels"].shape == (0,) and neg["labels"].tolist() == [0.0]
    part = two["meta"]["split"]
    sub = build_dataset("rsna_pneumonia", root, part, missing="skip")
    assert picks["two"] in {r.meta["id"] for r in sub.records} and {r.meta["split"] for r in sub.records} == {part}


def test_detailed_classes(tmp_path: Path, real_df: pd.DataFrame, picks: dict) -> None:
    # detailed class file in the published layout: one row per label row, same patientIds
    rows = real_df.copy()
    cls = np.where(rows["Target"] == 1, "Lung Opacity", "No Lung Opacity / Not Normal")
    cls[(rows["Target"] == 0).to_numpy() & (np.arange(len(rows)) % 2 == 0)] = "Normal"
    rows.to_csv(tmp_path / "stage_2_train_labels.csv", index=False)
    classes = pd.DataFrame({"patientId": rows["patientId"], "class": cls})
    classes.to_csv(tmp_path / "stage_2_detailed_class_info.csv", index=False)
    write_dicom(tmp_path / "stage_2_train_images" / f"{picks['two']}.dcm", np.full((64, 64), 0.5))
    write_dicom(tmp_path / "stage_2_train_images" / f"{picks['negative']}.dcm", np.full((64, 64), 0.5))
    ds = build_dataset("rsna_pneumonia", tmp_path, "all", labels="detailed", missing="skip")
    assert ds.tasks[0].kind == "multiclass" and ds.tasks[0].classes == DETAILED_CLASSES
    by_id = {ds.records[i].meta["id"]: ds[i] for i in range(len(ds))}
    assert by_id[picks["two"]]["labels"].tolist() == [0.0, 0.0, 1.0]
    neg = by_id[picks["negative"]]
    assert neg["labels"].sum() == 1.0 and neg["meta"]["class"] in DETAILED_CLASSES[:2]
    boxes_only = build_dataset("rsna_pneumonia", tmp_path, "all", labels="none", missing="skip")
    assert [t.kind for t in boxes_only.tasks] == ["detection"] and "labels" not in boxes_only[0]
    classes.iloc[: len(classes) - 5].to_csv(tmp_path / "stage_2_detailed_class_info.csv", index=False)
    with pytest.raises(DatasetError, match="no class for"):
        build_dataset("rsna_pneumonia", tmp_path, "all", labels="detailed", missing="skip")
    pos = int((rows["Target"] == 1).to_numpy().argmax())
    classes.loc[pos, "class"] = "Normal"
    classes.to_csv(tmp_path / "stage_2_detailed_class_info.csv", index=False)
    with pytest.raises(DatasetError, match="has two classes|is 'Normal' but has"):
        build_dataset("rsna_pneumonia", tmp_path, "all", labels="detailed", missing="skip")


def test_errors(tmp_path: Path, real_df: pd.DataFrame) -> None:
    with pytest.raises(DatasetError, match="no RSNA box label file found"):
        build_dataset("rsna_pneumonia", tmp_path)
    rows = real_df.head(50).copy()
    rows.to_csv(tmp_path / "stage_2_train_labels.csv", index=False)
    with pytest.raises(UnknownNameError, match="unknown labels"):
        build_dataset("rsna_pneumonia", tmp_path, labels="severity")
    with pytest.raises(UnknownNameError, match="no option"):
        build_dataset("rsna_pneumonia", tmp_path, label_mode="opacity")
    with pytest.raises(DatasetError, match="none of the 50 labelled images exist|labelled images are missing"):
        build_dataset("rsna_pneumonia", tmp_path, "all")
    with pytest.raises(DatasetError, match="detailed class file"):
        build_dataset("rsna_pneumonia", tmp_path, "all", labels="detailed", missing="skip")
    pos = int((rows["Target"] == 1).to_numpy().argmax())
    bad = rows.copy()
    bad.loc[pos, "width"] = np.nan
    bad.to_csv(tmp_path / "stage_2_train_labels.csv", index=False)
    with pytest.raises(DatasetError, match=f"row {pos + 2}: Target 1 with coordinates"):
        build_dataset("rsna_pneumonia", tmp_path, "all", missing="skip")
    bad = pd.concat([rows, rows.iloc[[pos]].assign(Target=0, x=np.nan, y=np.nan, width=np.nan, height=np.nan)])
    bad.to_csv(tmp_path / "stage_2_train_labels.csv", index=False)
    with pytest.raises(DatasetError, match="has both a Target 0 row and boxes"):
        build_dataset("rsna_pneumonia", tmp_path, "all", missing="skip")
    rows.drop(columns="Target").to_csv(tmp_path / "stage_2_train_labels.csv", index=False)
    with pytest.raises(DatasetError, match=r"missing column\(s\) \['Target'\]"):
        build_dataset("rsna_pneumonia", tmp_path, "all", missing="skip")
