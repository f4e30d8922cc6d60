"""CheXpert adapter on the real train.csv (223,414 rows), with a few written images."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from xrayfm.data import build_dataset
from xrayfm.data.datasets.chexpert import (
    CHEXPERT_LABELS,
    COMPETITION_LABELS,
    build_chexpert,
    chexpert_label_matrix,
    class_policies,
)
from xrayfm.errors import DatasetError, UnknownNameError

# tests using the label_files fixture get the shared_data marker from tests/conftest.py; the policy test needs none

VALID_CSV = """Path,Sex,Age,Frontal/Lateral,AP/PA,{labels}
CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg,Male,73,Frontal,AP,{a}
CheXpert-v1.0-small/valid/patient64542/study1/view2_lateral.jpg,Male,70,Lateral,,{b}
"""
# rows of the real train.csv that get an image (0: No Finding; 1: many -1; 3: lateral)
IMAGE_ROWS = (0, 1, 3, 5)


def _write_jpeg(path: Path, h: int = 40, w: int = 32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.arange(h * w).reshape(h, w) % 251).astype(np.uint8), mode="L").save(path, "JPEG")


def _valid_csv() -> str:
    a = ",".join("1.0" if c in ("Cardiomegaly", "Edema") else "0.0" for c in CHEXPERT_LABELS)
    b = ",".join("1.0" if c == "No Finding" else "0.0" for c in CHEXPERT_LABELS)
    return VALID_CSV.format(labels=",".join(CHEXPERT_LABELS), a=a, b=b)


@pytest.fixture(scope="module")
def real_df(label_files: Path) -> pd.DataFrame:
    return pd.read_csv(label_files / "chexpert_train.csv.gz")


@pytest.fixture(scope="module")
def root(label_files: Path, real_df: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real train.csv (symlinked .gz) + a two-row valid.csv + JPEGs for a few rows."""
    root = tmp_path_factory.mktemp("chexpert")
    folder = root / "CheXpert-v1.0-small"
    folder.mkdir()
    (folder / "train.csv.gz").symlink_to(label_files / "chexpert_train.csv.gz")
    (folder / "valid.csv").write_text(_valid_csv())
    for i in IMAGE_ROWS:
        _write_jpeg(root / real_df["Path"].iloc[i])
    _write_jpeg(folder / "valid/patient64541/study1/view1_frontal.jpg")
    _write_jpeg(folder / "valid/patient64542/study1/view2_lateral.jpg")
    return root


@pytest.fixture(scope="module")
def all_records(root: Path) -> list:
    ds = build_chexpert(root, "all", views="all", missing="keep")
    records, tasks = ds.records, ds.tasks
    assert tasks[0].classes == CHEXPERT_LABELS
    return records


def test_whole_train_csv_parses_with_real_counts(all_records: list, real_df: pd.DataFrame) -> None:
    assert len(real_df) == 223414
    train = [r for r in all_records if r.meta["split"] in ("train", "val")]
    assert len(train) == len(real_df)
    assert sum(r.meta["split"] == "test" for r in all_records) == 2
    assert sum(r.meta["view"] == "Lateral" for r in train) == (real_df["Frontal/Lateral"] == "Lateral").sum() == 32387
    assert {r.meta["view"] for r in train} == {"AP", "PA", "LL", "RL", "Lateral"}
    # U-Ones + blank=zero: positives are the 1 and -1 cells, counted independently here
    labels = np.stack([r.labels for r in train])
    assert not np.isnan(labels).any()
    for k, c in enumerate(CHEXPERT_LABELS):
        assert labels[:, k].sum() == real_df[c].isin([1.0, -1.0]).sum(), c
    assert labels[:, CHEXPERT_LABELS.index("No Finding")].sum() == 22381
    first = train[0]
    assert first.meta == {
        "id": "patient00001_study1_view1_frontal", "patient_id": "patient00001", "study": "patient00001/study1",
        "view": "AP", "sex": "Female", "age": 68, "split": first.meta["split"],
    }  # fmt: skip
    assert first.image == all_records[0].image and first.image.name == "view1_frontal.jpg"


def test_train_val_split_is_patient_disjoint(all_records: list, real_df: pd.DataFrame) -> None:
    pats = {s: {r.meta["patient_id"] for r in all_records if r.meta["split"] == s} for s in ("train", "val")}
    assert not pats["train"] & pats["val"]
    n = real_df["Path"].str.extract(r"(patient\d+)")[0].nunique()
    assert len(pats["train"]) + len(pats["val"]) == n == 64540
    assert 0.09 < len(pats["val"]) / n < 0.11


@pytest.mark.parametrize(
    ("policy", "blank"), [("ones", "zero"), ("zeros", "zero"), ("ignore", "zero"), ("ignore", "nan"), ("paper", "nan")]
)
def test_policies_on_the_whole_file(real_df: pd.DataFrame, policy: str, blank: str) -> None:
    out = chexpert_label_matrix(real_df, Path("train.csv"), CHEXPERT_LABELS, policy=policy, blank=blank)
    assert out.shape == (223414, 14) and out.dtype == np.float32
    for k, c in enumerate(CHEXPERT_LABELS):
        col = real_df[c]
        pol = class_policies(policy, (), CHEXPERT_LABELS)[c]
        uncertain = {"ones": 1.0, "zeros": 0.0, "ignore": np.nan}[pol]
        want = np.where(col == -1, uncertain, col).astype(np.float32)
        if blank == "zero":
            want[col.isna().to_numpy()] = 0.0
        np.testing.assert_array_equal(out[:, k], want, err_msg=c)
    if policy == "paper":
        assert class_policies("paper", (), COMPETITION_LABELS) == {
            "Atelectasis": "ones", "Cardiomegaly": "zeros", "Consolidation": "zeros", "Edema": "ones",
            "Pleural Effusion": "zeros",
        }  # fmt: skip


def test_label_policy_overrides() -> None:
    pol = class_policies("ignore", ("Edema=zeros", "Cardiomegaly = U-Ones"), COMPETITION_LABELS)
    assert pol == {"Atelectasis": "ignore", "Cardiomegaly": "ones", "Consolidation": "ignore", "Edema": "zeros",
                   "Pleural Effusion": "ignore"}  # fmt: skip
    assert class_policies("paper", {"Edema": "zeros"}, COMPETITION_LABELS)["Edema"] == "zeros"
    with pytest.raises(UnknownNameError, match="Fracture"):
        class_policies("ones", ("Fracture=zeros",), COMPETITION_LABELS)
    with pytest.raises(UnknownNameError, match="Label=policy"):
        class_policies("ones", ("Edema",), COMPETITION_LABELS)


def test_end_to_end_samples(root: Path, real_df: pd.DataFrame) -> None:
    ds = build_dataset("chexpert", root, "all", missing="skip", views="all", policy="ignore", blank="nan")
    assert len(ds) == len(IMAGE_ROWS) + 2
    by_id = {ds.records[i].meta["id"]: i for i in range(len(ds))}
    s = ds[by_id["patient00002_study2_view1_frontal"]]
    assert s["image"].shape == (1, 40, 32) and s["image"].dtype.is_floating_point
    row = real_df.iloc[1]
    for k, c in enumerate(CHEXPERT_LABELS):
        got = s["labels"][k].item()
        if pd.isna(row[c]) or row[c] == -1:
            assert np.isnan(got), c
        else:
            assert got == row[c], c
    assert np.isnan(s["labels"][CHEXPERT_LABELS.index("Cardiomegaly")].item())  # -1 in the real file
    assert s["meta"]["patient_id"] == "patient00002" and s["meta"]["age"] == 87
    lateral = ds[by_id["patient00002_study1_view2_lateral"]]
    assert lateral["meta"]["view"] == "Lateral"
    test = build_dataset("chexpert", root, "test", missing="skip")  # frontal only by default
    assert [r.meta["patient_id"] for r in test.records] == ["patient64541"]
    assert test[0]["labels"].tolist() == [float(c in ("Cardiomegaly", "Edema")) for c in CHEXPERT_LABELS]


@pytest.fixture
def small_root(tmp_path: Path, label_files: Path) -> Path:
    """The first 8 real rows, as an uncompressed train.csv (ROOT is the release folder itself)."""
    with gzip.open(label_files / "chexpert_train.csv.gz", "rt") as fh:
        lines = [next(fh) for _ in range(9)]
    (tmp_path / "train.csv").write_text("".join(lines))
    return tmp_path


def test_frontal_competition_set_and_root_is_release_folder(small_root: Path, real_df: pd.DataFrame) -> None:
    for i in IMAGE_ROWS:
        _write_jpeg(small_root / real_df["Path"].iloc[i].replace("CheXpert-v1.0-small/", ""))
    ds = build_dataset("chexpert", small_root, "all", missing="skip", label_set="competition", policy="paper")
    assert {r.meta["id"] for r in ds.records} == {
        "patient00001_study1_view1_frontal", "patient00002_study2_view1_frontal", "patient00004_study1_view1_frontal",
    }  # fmt: skip
    assert ds.tasks[0].classes == COMPETITION_LABELS
    s = next(ds[i] for i in range(len(ds)) if ds.records[i].meta["patient_id"] == "patient00002")
    # real row: Atelectasis -1, Cardiomegaly -1, Consolidation -1, Edema -1, Pleural Effusion -1
    assert s["labels"].tolist() == [1.0, 0.0, 0.0, 1.0, 0.0]
    ds = build_dataset("chexpert", small_root, "all", missing="skip", label_policies=("Edema=ignore",))
    s = next(ds[i] for i in range(len(ds)) if ds.records[i].meta["patient_id"] == "patient00002")
    assert np.isnan(s["labels"][CHEXPERT_LABELS.index("Edema")].item())
    assert s["labels"][CHEXPERT_LABELS.index("Atelectasis")].item() == 1.0


def test_errors(tmp_path: Path, small_root: Path) -> None:
    with pytest.raises(DatasetError, match="no CheXpert label file"):
        build_dataset("chexpert", _empty(tmp_path))
    with pytest.raises(UnknownNameError, match="uncertainty policy"):
        build_dataset("chexpert", small_root, policy="maybe")
    with pytest.raises(UnknownNameError, match="no option"):
        build_dataset("chexpert", small_root, uncertainty="ones")
    with pytest.raises(UnknownNameError, match="views"):
        build_dataset("chexpert", small_root, views="oblique")
    with pytest.raises(UnknownNameError, match="blank policy"):
        build_dataset("chexpert", small_root, blank="one")
    with pytest.raises(UnknownNameError, match="label_set"):
        build_dataset("chexpert", small_root, label_set="all28")
    with pytest.raises(DatasetError, match="labelled images are missing"):
        build_dataset("chexpert", small_root)
    with pytest.raises(DatasetError, match=r"valid\.csv not found"):
        build_dataset("chexpert", small_root, "test")
    df = pd.read_csv(small_root / "train.csv")
    df.drop(columns=["Edema"]).to_csv(small_root / "train.csv", index=False)
    with pytest.raises(DatasetError, match=r"train\.csv: missing column\(s\) \['Edema'\]"):
        build_dataset("chexpert", small_root, missing="skip")
    df.loc[3, "Pneumonia"] = 2.0
    df.to_csv(small_root / "train.csv", index=False)
    with pytest.raises(DatasetError, match="row 5, column 'Pneumonia': value 2.0"):
        build_dataset("chexpert", small_root, missing="skip", views="all")
    df["Pneumonia"] = df["Pneumonia"].astype(object)
    df.loc[3, "Pneumonia"] = "yes"
    df.to_csv(small_root / "train.csv", index=False)
    with pytest.raises(DatasetError, match="row 5, column 'Pneumonia': value 'yes'"):
        build_dataset("chexpert", small_root, missing="skip", views="all")


def _empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty"
    path.mkdir()
    return path


def test_recipe_options_give_u_ones_for_atelectasis_edema_and_u_zeros_for_the_rest(
    small_root: Path, real_df: pd.DataFrame
) -> None:
    """The options of the eva_x_cls_chexpert recipe, as ``-o`` strings: EVA-X's per-finding policy
    (hustvl/EVA-X classification/utils/dataloader_med.py:253-258), every train.csv patient in train."""
    from xrayfm.cli.recipes import parse_options

    for i in IMAGE_ROWS:
        _write_jpeg(small_root / real_df["Path"].iloc[i].replace("CheXpert-v1.0-small/", ""))
    opts = parse_options(
        ["label_set=competition", "views=frontal", "policy=zeros", "label_policies=Atelectasis=ones,Edema=ones",
         "blank=zero", "val_fraction=0"]
    )  # fmt: skip
    train = build_dataset("chexpert", small_root, "train", missing="skip", **opts)
    assert len(train) == 3 and len(build_dataset("chexpert", small_root, "val", missing="skip", **opts)) == 0
    s = next(train[i] for i in range(len(train)) if train.records[i].meta["patient_id"] == "patient00002")
    # real row: all five findings uncertain (-1): ones for Atelectasis and Edema, zeros for the rest
    assert dict(zip(COMPETITION_LABELS, s["labels"].tolist())) == {
        "Atelectasis": 1.0, "Cardiomegaly": 0.0, "Consolidation": 0.0, "Edema": 1.0, "Pleural Effusion": 0.0,
    }  # fmt: skip
    paper = build_dataset("chexpert", small_root, "train", missing="skip", label_set="competition", policy="paper")
    assert all((a.labels == b.labels).all() for a, b in zip(train.records, paper.records))
