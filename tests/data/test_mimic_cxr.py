"""MIMIC-CXR-JPG adapter on a tiny CSV triple written in the published column layout."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xrayfm.data import build_dataset
from xrayfm.data.datasets.chexpert import CHEXPERT_LABELS, COMPETITION_LABELS
from xrayfm.errors import DatasetError, UnknownNameError

# MIMIC's label files list the observations alphabetically (not in CheXpert's order)
MIMIC_ORDER = sorted(CHEXPERT_LABELS)
METADATA = """dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,PatientOrientationCodeSequence_CodeMeaning
02aa804e-bde0afdd-112c0b34-7bc16630-4e384014,10000032,50414267,CHEST (PA AND LAT),PA,3056,2544,21800506,213014.531,CHEST (PA AND LAT),postero-anterior,Erect
174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962,10000032,50414267,CHEST (PA AND LAT),LATERAL,3056,2544,21800506,213014.531,CHEST (PA AND LAT),lateral,Erect
2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab,10000032,53189527,CHEST (PA AND LAT),AP,3056,2544,21800626,165500.312,CHEST (PA AND LAT),antero-posterior,Erect
68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714,10000764,57375967,CHEST (PORTABLE AP),,2705,2539,21321015,211549.562,CHEST (PORTABLE AP),,
fffabebf-74fd3a1f-673b6b41-96ec0ac9-2ab69818,19999733,57132437,CHEST (PA AND LAT),PA,3056,2544,21520708,224550.171,CHEST (PA AND LAT),postero-anterior,Erect
ea030e7a-2e3b1346-bc518786-7a8fd698-f673b44c,11000011,59999999,CHEST (PA AND LAT),PA,3056,2544,21520708,224550.171,CHEST (PA AND LAT),postero-anterior,Erect
"""
SPLIT = """dicom_id,study_id,subject_id,split
02aa804e-bde0afdd-112c0b34-7bc16630-4e384014,50414267,10000032,train
174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962,50414267,10000032,train
2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab,53189527,10000032,train
68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714,57375967,10000764,validate
fffabebf-74fd3a1f-673b6b41-96ec0ac9-2ab69818,57132437,19999733,test
ea030e7a-2e3b1346-bc518786-7a8fd698-f673b44c,59999999,11000011,train
"""
# study 59999999 has no label row (the labeler skipped its report)
LABELS = {
    ("10000032", "50414267"): {"No Finding": 1.0},
    ("10000032", "53189527"): {"Edema": -1.0, "Cardiomegaly": 1.0, "Pleural Effusion": 0.0, "Atelectasis": -1.0},
    ("10000764", "57375967"): {"Consolidation": -1.0, "Pneumonia": -1.0},
    ("19999733", "57132437"): {"Support Devices": 1.0, "Lung Opacity": 1.0},
}
NEGBIO = {k: {c: 0.0 for c in v} for k, v in LABELS.items()}


def _label_csv(table: dict) -> str:
    lines = ["subject_id,study_id," + ",".join(MIMIC_ORDER)]
    for (subject, study), vals in table.items():
        lines.append(f"{subject},{study}," + ",".join(str(vals[c]) if c in vals else "" for c in MIMIC_ORDER))
    return "\n".join(lines) + "\n"


def _image(root: Path, subject: str, study: str, dicom: str) -> Path:
    return root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    with gzip.open(tmp_path / "mimic-cxr-2.0.0-metadata.csv.gz", "wt") as fh:
        fh.write(METADATA)
    (tmp_path / "mimic-cxr-2.0.0-split.csv").write_text(SPLIT)
    with gzip.open(tmp_path / "mimic-cxr-2.0.0-chexpert.csv.gz", "wt") as fh:
        fh.write(_label_csv(LABELS))
    (tmp_path / "mimic-cxr-2.0.0-negbio.csv").write_text(_label_csv(NEGBIO))
    for line in METADATA.splitlines()[1:]:
        dicom, subject, study = line.split(",")[:3]
        path = _image(tmp_path, subject, study, dicom)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((24, 20), 128, np.uint8), mode="L").save(path, "JPEG")
    return tmp_path


def _by_id(ds) -> dict:
    return {ds.records[i].meta["id"]: ds[i] for i in range(len(ds))}


def test_official_split_views_and_study_labels(root: Path) -> None:
    train = build_dataset("mimic_cxr", root, "train")
    samples = _by_id(train)
    # lateral dropped by the default PA/AP filter; the unlabelled study dropped
    assert set(samples) == {
        "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014", "2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab",
    }  # fmt: skip
    s = samples["2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab"]
    assert s["image"].shape == (1, 24, 20)
    assert s["meta"]["patient_id"] == "10000032" and s["meta"]["study"] == "53189527" and s["meta"]["view"] == "AP"
    assert train.tasks[0].classes == CHEXPERT_LABELS
    want = {"Edema": 1.0, "Cardiomegaly": 1.0, "Atelectasis": 1.0}  # U-Ones, blanks negative
    assert s["labels"].tolist() == [want.get(c, 0.0) for c in CHEXPERT_LABELS]
    assert build_dataset("mimic_cxr", root, "test").records[0].meta["patient_id"] == "19999733"
    # the validate image has no ViewPosition: only views="all" keeps it
    assert len(build_dataset("mimic_cxr", root, "val")) == 0
    val = build_dataset("mimic_cxr", root, "val", views="all", policy="ignore", blank="nan")
    (s,) = _by_id(val).values()
    assert s["meta"]["view"] is None and val.records[0].meta["split"] == "val"
    labels = dict(zip(CHEXPERT_LABELS, s["labels"].tolist()))
    assert np.isnan(labels["Consolidation"]) and np.isnan(labels["Pneumonia"]) and np.isnan(labels["Edema"])
    everything = build_dataset("mimic_cxr", root, "all", views="all")
    assert len(everything) == 5
    assert len(build_dataset("mimic_cxr", root, "all", views=("lateral",))) == 1


def test_policies_label_sets_and_negbio(root: Path) -> None:
    ds = build_dataset("mimic_cxr", root, "train", policy="paper", label_set="competition")
    s = _by_id(ds)["2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab"]
    assert ds.tasks[0].classes == COMPETITION_LABELS
    assert s["labels"].tolist() == [1.0, 1.0, 0.0, 1.0, 0.0]  # Atelectasis -1 -> 1, Edema -1 -> 1
    ds = build_dataset("mimic_cxr", root, "train", label_set="competition", label_policies={"Edema": "zeros"})
    assert _by_id(ds)["2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab"]["labels"].tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]
    negbio = build_dataset("mimic_cxr", root, "all", labeler="negbio", views="all", blank="nan")
    for i in range(len(negbio)):
        labels = negbio[i]["labels"]
        assert (labels[~labels.isnan()] == 0).all()


def test_errors(root: Path) -> None:
    with pytest.raises(UnknownNameError, match="labeler"):
        build_dataset("mimic_cxr", root, labeler="chexbert")
    with pytest.raises(UnknownNameError, match="uncertainty policy"):
        build_dataset("mimic_cxr", root, policy="U-Twos")
    with pytest.raises(UnknownNameError, match="no option"):
        build_dataset("mimic_cxr", root, view="PA")
    (root / "mimic-cxr-2.0.0-negbio.csv").unlink()
    with pytest.raises(DatasetError, match="mimic-cxr-2.0.0-negbio.csv"):
        build_dataset("mimic_cxr", root, labeler="negbio")
    (root / "mimic-cxr-2.0.0-split.csv").write_text(SPLIT.replace("validate", "valid"))
    with pytest.raises(DatasetError, match="row 5: split 'valid'"):
        build_dataset("mimic_cxr", root)
    (root / "mimic-cxr-2.0.0-split.csv").write_text(SPLIT.replace("split\n", "fold\n"))
    with pytest.raises(DatasetError, match=r"missing column\(s\) \['split'\]"):
        build_dataset("mimic_cxr", root)
    (root / "mimic-cxr-2.0.0-split.csv").write_text(SPLIT)
    _image(root, "10000032", "50414267", "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014").unlink()
    with pytest.raises(DatasetError, match="1 of 2 labelled images are missing"):
        build_dataset("mimic_cxr", root, "train")
    assert len(build_dataset("mimic_cxr", root, "train", missing="skip")) == 1
    with gzip.open(root / "mimic-cxr-2.0.0-chexpert.csv.gz", "wt") as fh:
        fh.write(_label_csv(LABELS).replace("-1.0", "-2.0", 1))
    with pytest.raises(DatasetError, match="row 3, column .* value -2.0"):
        build_dataset("mimic_cxr", root, "train")
