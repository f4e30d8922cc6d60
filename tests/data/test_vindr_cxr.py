"""VinDr-CXR adapter on the real Kaggle VinBigData train.csv (67,914 rows, 15,000 images)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xrayfm.data import build_dataset
from xrayfm.data.datasets.vindr_cxr import DIAGNOSES, LESIONS, NO_FINDING, build_vindr_cxr
from xrayfm.errors import DatasetError, UnknownNameError
from xrayfm.io.writers import write_dicom, write_png

pytestmark = pytest.mark.shared_data

COORDS = ["x_min", "y_min", "x_max", "y_max"]
CLASSES = (*LESIONS, NO_FINDING)
# PhysioNet's image_labels files carry more columns than the 14 lesions + No finding
EXTRA = ("Emphysema", "Rib fracture", "COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases")
PNG_SIZE = (2560, 3072)  # original (width, height) declared for the PNG conversion


@pytest.fixture(scope="module")
def real_df(label_files: Path) -> pd.DataFrame:
    return pd.read_csv(label_files / "vinbigdata-train.csv.gz")


@pytest.fixture(scope="module")
def picks(real_df: pd.DataFrame) -> dict[str, str]:
    """Real images: one where readers disagree (some classes by 1, one by 2 readers), one more such, one normal."""
    lesions = real_df[real_df["class_name"] != NO_FINDING]
    votes = lesions.groupby(["image_id", "class_name"])["rad_id"].nunique().unstack()
    mixed = votes[(votes == 1).any(axis=1) & (votes >= 2).any(axis=1)].index
    normal = real_df[real_df["class_name"] == NO_FINDING]["image_id"].min()
    return {"dicom": mixed[0], "png": mixed[1], "normal": normal}


@pytest.fixture(scope="module")
def kaggle_root(
    label_files: Path, real_df: pd.DataFrame, picks: dict, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    root = tmp_path_factory.mktemp("vinbigdata")
    (root / "train.csv.gz").symlink_to(label_files / "vinbigdata-train.csv.gz")
    extent = real_df[real_df["image_id"] == picks["dicom"]][["x_max", "y_max"]].max()
    h, w = int(extent["y_max"]) + 5, int(extent["x_max"]) + 5  # a DICOM just large enough
    write_dicom(root / "train" / f"{picks['dicom']}.dicom", np.random.default_rng(0).random((h, w)))
    write_dicom(root / "train" / f"{picks['normal']}.dicom", np.full((48, 64), 0.5))
    write_png(root / "train" / f"{picks['png']}.png", np.full((96, 80), 0.5))
    pd.DataFrame({"image_id": [picks["png"]], "dim0": [PNG_SIZE[1]], "dim1": [PNG_SIZE[0]]}).to_csv(
        root / "train_meta.csv", index=False
    )
    return root


@pytest.fixture(scope="module")
def loaded(kaggle_root: Path) -> dict[str, dict]:
    out = {}
    for rule in ("all", "majority"):
        ds = build_vindr_cxr(kaggle_root, "all", box_consensus=rule, missing="keep")
        records, tasks = ds.records, ds.tasks
        assert [t.classes for t in tasks] == [CLASSES, LESIONS]
        out[rule] = {r.meta["id"]: r for r in records}
    return out


def test_real_file_has_three_readers_per_image(real_df: pd.DataFrame, loaded: dict) -> None:
    assert len(real_df) == 67914 and real_df["image_id"].nunique() == 15000
    assert (real_df.groupby("image_id")["rad_id"].nunique() == 3).all()
    records = loaded["all"]
    assert len(records) == 15000
    assert all(len(r.meta["readers"]) == 3 for r in records.values())
    assert {r.meta["split"] for r in records.values()} == {"train", "val", "test"}
    shares = pd.Series([r.meta["split"] for r in records.values()]).value_counts(normalize=True)
    assert abs(shares["train"] - 0.7) < 0.02 and abs(shares["val"] - 0.1) < 0.02 and abs(shares["test"] - 0.2) < 0.02


def test_any_reader_labels_and_every_box(real_df: pd.DataFrame, loaded: dict) -> None:
    records = loaded["all"]
    labels = pd.DataFrame({k: r.labels for k, r in records.items()}, index=list(CLASSES)).T
    per_class = real_df.groupby("class_name")["image_id"].nunique()
    for c in CLASSES:
        assert labels[c].sum() == per_class[c], c
    assert labels[NO_FINDING].sum() == 10606  # images all three readers called normal
    lesion_rows = real_df[real_df["class_name"] != NO_FINDING]
    assert sum(len(r.boxes) for r in records.values()) == len(lesion_rows) == 36096
    rows_per_image = lesion_rows.groupby("image_id").size()
    assert all(len(r.boxes) == rows_per_image.get(k, 0) for k, r in records.items())
    assert all(r.box_space is None and len(r.meta["box_readers"]) == len(r.boxes) for r in records.values())


def test_majority_labels_and_boxes(real_df: pd.DataFrame, loaded: dict) -> None:
    records = loaded["majority"]
    votes = real_df.groupby(["image_id", "class_name"])["rad_id"].nunique()
    agreed = votes[votes >= 2].reset_index()
    labels = pd.DataFrame({k: r.labels for k, r in records.items()}, index=list(CLASSES)).T
    expected = agreed.groupby("class_name")["image_id"].nunique()
    for c in CLASSES:
        assert labels[c].sum() == expected.get(c, 0), c
    keep = real_df.merge(agreed[["image_id", "class_name"]], on=["image_id", "class_name"])
    assert sum(len(r.boxes) for r in records.values()) == (keep["class_name"] != NO_FINDING).sum() == 28172


def test_end_to_end_kaggle(kaggle_root: Path, real_df: pd.DataFrame, picks: dict) -> None:
    ds = build_dataset("vindr_cxr", kaggle_root, "all", missing="skip", size_file="train_meta.csv")
    assert len(ds) == 3
    samples = {ds.records[i].meta["id"]: ds[i] for i in range(len(ds))}
    rows = real_df[real_df["image_id"] == picks["dicom"]]
    s = samples[picks["dicom"]]
    assert s["image"].shape[1:] == (int(rows["y_max"].max()) + 5, int(rows["x_max"].max()) + 5)
    got = sorted(zip(s["box_labels"].tolist(), s["meta"]["box_readers"], map(tuple, s["boxes"].tolist())))
    want = sorted(zip(rows["class_id"], rows["rad_id"], map(tuple, rows[COORDS].to_numpy(np.float32).tolist())))
    assert got == want
    assert {CLASSES[k] for k in np.flatnonzero(s["labels"].numpy())} == set(rows["class_name"])
    # PNG conversion: boxes rescaled from the declared original size to the stored 80x96
    p = samples[picks["png"]]
    rows = real_df[real_df["image_id"] == picks["png"]].sort_values(COORDS)
    scale = np.asarray([80 / PNG_SIZE[0], 96 / PNG_SIZE[1]] * 2, np.float32)
    np.testing.assert_allclose(
        np.sort(p["boxes"].numpy(), axis=0), np.sort(rows[COORDS].to_numpy(np.float32) * scale, axis=0), rtol=1e-5
    )
    n = samples[picks["normal"]]
    assert n["boxes"].shape == (0, 4) and n["labels"].tolist() == [0.0] * 14 + [1.0]
    maj = build_dataset(
        "vindr_cxr", kaggle_root, "all", missing="skip", size_file="train_meta.csv", box_consensus="majority"
    )
    m = next(maj[i] for i in range(len(maj)) if maj.records[i].meta["id"] == picks["dicom"])
    votes = real_df[real_df["image_id"] == picks["dicom"]].groupby("class_name")["rad_id"].nunique()
    assert {CLASSES[k] for k in np.flatnonzero(m["labels"].numpy())} == set(votes[votes >= 2].index)
    assert len(m["boxes"]) == int(votes[votes >= 2].sum())


def _physionet(root: Path, real_df: pd.DataFrame, ids: list[str], part: str, consensus: bool) -> None:
    """Write PhysioNet-style annotation files for real Kaggle rows of ``ids``."""
    rows = real_df[real_df["image_id"].isin(ids)]
    ann = rows[["image_id", "rad_id", "class_name", *COORDS]]
    labels = rows.assign(v=1).pivot_table(index=["image_id", "rad_id"], columns="class_name", values="v", fill_value=0)
    labels = labels.reindex(columns=[*LESIONS, *EXTRA, NO_FINDING], fill_value=0).reset_index()
    labels = labels.rename(columns={"rad_id": "rad_ID"})
    if consensus:  # the test set: one consensus read, no reader column
        ann = ann.drop(columns="rad_id").drop_duplicates("class_name")
        labels = labels.drop(columns="rad_ID").groupby("image_id").max().reset_index()
    (root / "annotations").mkdir(exist_ok=True)
    ann.to_csv(root / "annotations" / f"annotations_{part}.csv", index=False)
    labels.to_csv(root / "annotations" / f"image_labels_{part}.csv", index=False)


def test_physionet_layout(tmp_path: Path, real_df: pd.DataFrame, picks: dict) -> None:
    _physionet(tmp_path, real_df, [picks["dicom"], picks["normal"]], "train", consensus=False)
    _physionet(tmp_path, real_df, [picks["png"]], "test", consensus=True)
    write_dicom(tmp_path / "train" / f"{picks['normal']}.dicom", np.full((48, 64), 0.5))
    write_png(tmp_path / "test" / f"{picks['png']}.png", np.full((96, 80), 0.5))
    pd.DataFrame({"image_id": [picks["png"]], "width": [PNG_SIZE[0]], "height": [PNG_SIZE[1]]}).to_csv(
        tmp_path / "sizes.csv", index=False
    )
    ds = build_dataset("vindr_cxr", tmp_path, "test", size_file="sizes.csv")
    (s,) = [ds[0]]
    assert s["meta"]["readers"] == ["consensus"] and s["meta"]["split"] == "test"
    assert ds.records[0].box_space == PNG_SIZE
    classes = set(real_df[real_df["image_id"] == picks["png"]]["class_name"])
    assert {CLASSES[k] for k in np.flatnonzero(s["labels"].numpy())} == classes
    assert len(s["boxes"]) == len(classes)
    ds = build_vindr_cxr(tmp_path, "all", box_consensus="majority", missing="keep")
    records = ds.records
    assert {r.meta["id"]: r.meta["split"] for r in records}[picks["png"]] == "test"
    rec = next(r for r in records if r.meta["id"] == picks["dicom"])
    assert rec.meta["readers"] == sorted(set(real_df[real_df["image_id"] == picks["dicom"]]["rad_id"]))
    assert rec.labels.tolist() == [float(c == "Lung Opacity") for c in CLASSES]
    train = build_dataset("vindr_cxr", tmp_path, "all", missing="skip")
    assert {r.meta["id"] for r in train.records} == {picks["normal"], picks["png"]}


def test_errors(tmp_path: Path, real_df: pd.DataFrame, picks: dict) -> None:
    with pytest.raises(DatasetError, match="neither annotations/"):
        build_dataset("vindr_cxr", tmp_path)
    rows = real_df[real_df["image_id"].isin(list(picks.values()))].reset_index(drop=True)
    rows.to_csv(tmp_path / "train.csv", index=False)
    write_dicom(tmp_path / "train" / f"{picks['normal']}.dcm", np.full((48, 64), 0.5))
    assert len(build_dataset("vindr_cxr", tmp_path, "all", missing="skip")) == 1
    with pytest.raises(UnknownNameError, match="box_consensus"):
        build_dataset("vindr_cxr", tmp_path, box_consensus="union")
    with pytest.raises(UnknownNameError, match="no option"):
        build_dataset("vindr_cxr", tmp_path, consensus="all")
    with pytest.raises(DatasetError, match="labelled images are missing"):
        build_dataset("vindr_cxr", tmp_path, "all")
    lesion = int((rows["class_name"] != NO_FINDING).to_numpy().argmax())
    bad = rows.copy()
    bad.loc[lesion, "x_max"] = np.nan
    bad.to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(DatasetError, match=f"row {lesion + 2}: .* box has a missing"):
        build_dataset("vindr_cxr", tmp_path, "all", missing="skip")
    bad = rows.copy()
    bad.loc[lesion, "class_name"] = "Nodule"
    bad.to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(DatasetError, match=f"row {lesion + 2}: unknown class 'Nodule'"):
        build_dataset("vindr_cxr", tmp_path, "all", missing="skip")
    bad = rows.copy()
    bad.loc[lesion, "class_id"] = 99
    bad.to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(DatasetError, match="class_id 99 does not match"):
        build_dataset("vindr_cxr", tmp_path, "all", missing="skip")
    rows.drop(columns="rad_id").to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(DatasetError, match=r"missing column\(s\) \['rad_id'\]"):
        build_dataset("vindr_cxr", tmp_path, "all", missing="skip")
    rows.to_csv(tmp_path / "train.csv", index=False)
    write_png(tmp_path / "train" / f"{picks['png']}.png", np.full((96, 80), 0.5))
    pd.DataFrame({"image_id": ["other"], "width": [10], "height": [10]}).to_csv(tmp_path / "sizes.csv", index=False)
    with pytest.raises(DatasetError, match=f"sizes.csv: no original size for {picks['png']}"):
        build_dataset("vindr_cxr", tmp_path, "all", missing="skip", size_file="sizes.csv")
    with pytest.raises(DatasetError, match="lies outside"):  # PNG smaller than the DICOM, no size file
        ds = build_dataset("vindr_cxr", tmp_path, "all", missing="skip")
        [ds[i] for i in range(len(ds))]


def _votes(table: pd.DataFrame, columns: list[str], rule: str) -> pd.DataFrame:
    """Expected labels per image, straight from a labels table (pandas, not the adapter's reader sets)."""
    votes = table.groupby("image_id")[columns].sum()
    n = table.groupby("image_id").size()
    if rule == "majority":
        return (votes.ge(n // 2 + 1, axis=0)).astype(float)
    out = (votes >= 1).astype(float)
    if NO_FINDING in columns:
        out[NO_FINDING] = votes[NO_FINDING].eq(n).astype(float)
    return out


def test_global_labels(tmp_path: Path, kaggle_root: Path, real_df: pd.DataFrame, picks: dict) -> None:
    _physionet(tmp_path, real_df, [picks["dicom"], picks["normal"]], "train", consensus=False)
    _physionet(tmp_path, real_df, [picks["png"]], "test", consensus=True)
    ann = tmp_path / "annotations"
    train = pd.read_csv(ann / "image_labels_train.csv")
    rows = train.index[train["image_id"] == picks["dicom"]]
    assert len(rows) == 3
    readers = dict(zip(DIAGNOSES, [0, 1, 2, 3, 1]))  # how many of the 3 readers report each diagnosis
    for name, k in readers.items():
        train.loc[rows[:k], name] = 1
    normal = train.index[train["image_id"] == picks["normal"]]
    train.loc[normal[0], ["COPD", NO_FINDING]] = [1, 0]  # one reader of the normal image disagrees
    train.to_csv(ann / "image_labels_train.csv", index=False)
    test = pd.read_csv(ann / "image_labels_test.csv").rename(columns={"Other diseases": "Other disease"})
    test.loc[0, ["Tuberculosis", "Other disease"]] = 1  # the published test file's spelling
    test.to_csv(ann / "image_labels_test.csv", index=False)
    glob_cols = [*DIAGNOSES, NO_FINDING]
    for rule in ("all", "majority"):
        ds = build_vindr_cxr(tmp_path, "all", labels="global", box_consensus=rule, missing="keep")
        assert [(t.name, t.kind, t.classes) for t in ds.tasks] == [
            ("diagnoses", "multilabel", (*DIAGNOSES, NO_FINDING)), ("lesions", "detection", LESIONS),
        ]  # fmt: skip
        got = {r.meta["id"]: r.labels.tolist() for r in ds.records}
        want = _votes(train, glob_cols, rule)
        for image_id in want.index:
            assert got[image_id] == want.loc[image_id].tolist(), (rule, image_id)
        need = 1 if rule == "all" else 2
        assert got[picks["dicom"]][:5] == [float(k >= need) for k in readers.values()]
        assert got[picks["normal"]] == ([1.0, 0, 0, 0, 0, 0] if rule == "all" else [0, 0, 0, 0, 0, 1.0])
        assert got[picks["png"]] == [0.0, 0.0, 0.0, 1.0, 1.0, float(test.loc[0, NO_FINDING])]
        lesions = {
            r.meta["id"]: r for r in build_vindr_cxr(tmp_path, "all", box_consensus=rule, missing="keep").records
        }
        both = build_vindr_cxr(tmp_path, "all", labels="both", box_consensus=rule, missing="keep")
        assert both.tasks[0].name == "findings" and both.tasks[0].classes == (*LESIONS, *DIAGNOSES, NO_FINDING)
        for rec in both.records:
            ref = lesions[rec.meta["id"]]
            assert rec.labels.tolist() == ref.labels[:14].tolist() + got[rec.meta["id"]]
            np.testing.assert_array_equal(rec.boxes, ref.boxes)  # boxes do not depend on the labels chosen
            assert rec.box_labels.tolist() == ref.box_labels.tolist()
    bare = build_vindr_cxr(tmp_path, "test", labels="global", include_no_finding=False, missing="keep")
    assert bare.tasks[0].classes == DIAGNOSES and bare.records[0].labels.tolist() == [0, 0, 0, 1, 1]
    with pytest.raises(DatasetError, match=r"labels='global' needs the PhysioNet layout.*Kaggle VinBigData layout"):
        build_vindr_cxr(kaggle_root, "all", labels="global", missing="keep")
    with pytest.raises(DatasetError, match=r"labels='both' needs the PhysioNet layout"):
        build_dataset("vindr_cxr", kaggle_root, "all", labels="both", missing="keep")
    with pytest.raises(UnknownNameError, match="unknown labels 'diseases'"):
        build_dataset("vindr_cxr", tmp_path, labels="diseases")
    train.drop(columns="COPD").to_csv(ann / "image_labels_train.csv", index=False)
    with pytest.raises(DatasetError, match=r"image_labels_train.csv: missing column\(s\) \['COPD'\]"):
        build_vindr_cxr(tmp_path, "train", labels="global", missing="keep")
    assert len(build_vindr_cxr(tmp_path, "train", missing="keep")) == 2  # lesion labels need no global column
