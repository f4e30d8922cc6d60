"""CANDID-PTX adapter on a tiny synthetic copy of the published layout (small DICOMs named by SOPInstanceUID)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xrayfm.data import build_dataset
from xrayfm.data.datasets.candid_ptx import build_candid_ptx
from xrayfm.data.masks import mask_boxes
from xrayfm.errors import DatasetError, UnknownNameError
from xrayfm.io.writers import write_dicom, write_png

SIDE = 64
A, B, C, D = "1.2.826.7.1", "1.2.826.7.2", "1.2.826.7.3", "1.2.826.7.4"


def encode(mask: np.ndarray) -> str:
    """SIIM stage-1 RLE, written independently of the adapter: column-major, starts relative to the last run's end."""
    flat = np.asarray(mask, np.uint8).T.ravel()
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [0]])))
    out, pos = [], 0
    for start, end in zip(edges[0::2], edges[1::2]):
        out += [int(start - pos), int(end - start)]
        pos = end
    return " ".join(map(str, out)) if out else "-1"


def rect(y0: int, y1: int, x0: int, x1: int, side: int = SIDE) -> np.ndarray:
    m = np.zeros((side, side), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


# A: two regions in one row (two boxes), plus a second row overlapping the first region (merged)
REGION_1, REGION_2, REGION_3 = rect(5, 20, 4, 12), rect(40, 50, 30, 60), rect(15, 25, 10, 18)
# B: two squares touching at a corner: one 8-connected component, one box
CORNER = rect(10, 20, 10, 20) | rect(20, 30, 20, 30)


def reports(with_filename: bool = True) -> pd.DataFrame:
    rows = [
        (A, "S1", encode(REGION_1 | REGION_2), "report a", "P1_a.dcm"),
        (A, "S1", encode(REGION_3), "report a", "P1_a.dcm"),
        (B, "S2", encode(CORNER), "report b", "P2_b.dcm"),
        (C, "S3", "-1", "report c", "P1_c.dcm"),
    ]
    df = pd.DataFrame(rows, columns=["SOPInstanceUID", "StudyInstanceUID", "EncodedPixels", "Report", "filename"])
    return df if with_filename else df.drop(columns="filename")


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    reports().to_csv(tmp_path / "Pneumothorax_reports.csv", index=False)
    images = tmp_path / "dataset"
    write_dicom(images / f"{A}.dcm", np.full((SIDE, SIDE), 0.5))
    write_dicom(images / B, np.full((SIDE, SIDE), 0.4))  # named by the bare SOPInstanceUID, as shipped
    write_dicom(images / f"{C}.dcm", np.full((SIDE, SIDE), 0.3))
    return tmp_path


def test_mask_labels_and_boxes(root: Path) -> None:
    ds = build_dataset("candid_ptx", root, "all")
    assert [(t.kind, t.classes) for t in ds.tasks] == [
        ("multilabel", ("Pneumothorax",)), ("segmentation", ("Pneumothorax",)), ("detection", ("Pneumothorax",)),
    ]  # fmt: skip
    samples = {ds.records[i].meta["id"]: ds[i] for i in range(len(ds))}
    a = samples[A]
    assert a["image"].shape == (1, SIDE, SIDE) and a["labels"].tolist() == [1.0] and a["meta"]["regions"] == 2
    np.testing.assert_array_equal(a["mask"][0].numpy(), REGION_1 | REGION_2 | REGION_3)  # union of the rows
    boxes = sorted(a["boxes"].tolist())
    assert boxes == [[4, 5, 18, 25], [30, 40, 60, 50]]  # regions 1 and 3 overlap: one component, one box
    assert a["box_labels"].tolist() == [0, 0]
    b = samples[B]
    np.testing.assert_array_equal(b["mask"][0].numpy(), CORNER)
    assert b["boxes"].tolist() == [[10, 10, 30, 30]]  # corner-touching squares are one component
    c = samples[C]
    assert c["labels"].tolist() == [0.0] and c["mask"].sum() == 0 and c["mask"].shape == (1, SIDE, SIDE)
    assert c["boxes"].shape == (0, 4) and c["box_labels"].shape == (0,)
    assert (a["meta"]["patient_id"], b["meta"]["patient_id"], c["meta"]["patient_id"]) == ("P1", "P2", "P1")
    assert ds.records[0].box_space == (SIDE, SIDE)


def test_mask_boxes_follow_components() -> None:
    mask = rect(0, 3, 0, 3, 16) | rect(10, 16, 12, 16, 16)
    assert sorted(mask_boxes(mask).tolist()) == [[0, 0, 3, 3], [12, 10, 16, 16]]
    assert mask_boxes(np.zeros((8, 8), np.uint8)).shape == (0, 4)


def test_optional_findings_add_classes(root: Path) -> None:
    pd.DataFrame({"anon_SOPUID": [A, C], "mask_rle": [encode(rect(0, 4, 0, 4)), "-1"]}).to_csv(
        root / "chest_tube.csv", index=False
    )
    ds = build_dataset("candid_ptx", root, "all")
    assert ds.tasks[0].classes == ("Pneumothorax", "Chest Tube")  # no rib fracture file: no class, not nan
    labels = {r.meta["id"]: r.labels.tolist() for r in ds.records}
    assert labels == {A: [1.0, 1.0], B: [1.0, 0.0], C: [0.0, 0.0]}
    pd.DataFrame({"SOPInstanceUID": [B], "EncodedPixels": [encode(rect(0, 2, 0, 2))]}).to_csv(
        root / "acute_rib_fracture.csv", index=False
    )
    ds = build_dataset("candid_ptx", root, "all")
    assert ds.tasks[0].classes == ("Pneumothorax", "Rib Fracture", "Chest Tube")
    assert {r.meta["id"]: r.labels.tolist() for r in ds.records}[B] == [1.0, 1.0, 0.0]


def test_split_keeps_patients_together(tmp_path: Path) -> None:
    rows = [(f"1.9.{i}", "-1", f"P{i // 3}_{i}.dcm") for i in range(240)]  # three images per patient
    pd.DataFrame(rows, columns=["SOPInstanceUID", "EncodedPixels", "filename"]).to_csv(
        tmp_path / "Pneumothorax_reports.csv", index=False
    )
    recs = build_candid_ptx(tmp_path, "all", missing="keep").records
    by_patient: dict[str, set[str]] = {}
    for r in recs:
        by_patient.setdefault(r.meta["patient_id"], set()).add(r.meta["split"])
    assert len(by_patient) == 80 and all(len(s) == 1 for s in by_patient.values())
    assert {r.meta["split"] for r in recs} == {"train", "val", "test"}
    val = build_candid_ptx(tmp_path, "val", missing="keep").records
    assert {r.meta["id"] for r in val} == {r.meta["id"] for r in recs if r.meta["split"] == "val"}
    pd.DataFrame(rows, columns=["SOPInstanceUID", "EncodedPixels", "filename"]).drop(columns="filename").to_csv(
        tmp_path / "Pneumothorax_reports.csv", index=False
    )
    by_image = build_candid_ptx(tmp_path, "all", missing="keep").records
    assert all(r.meta["patient_id"] is None for r in by_image)
    spread = {}
    for r in by_image:
        spread.setdefault(int(r.meta["id"].split(".")[-1]) // 3, set()).add(r.meta["split"])
    assert any(len(s) > 1 for s in spread.values())  # hashed by SOPInstanceUID: patients may be split


def test_png_conversion_and_mask_size(root: Path) -> None:
    (root / "dataset" / f"{A}.dcm").unlink()
    write_png(root / "dataset" / f"{A}.png", np.full((SIDE, SIDE), 0.5))
    ds = build_dataset("candid_ptx", root, "all")
    sample = next(ds[i] for i in range(len(ds)) if ds.records[i].meta["id"] == A)
    assert sample["mask"].sum() == (REGION_1 | REGION_2 | REGION_3).sum()
    fixed = build_dataset("candid_ptx", root, "all", mask_size=(2 * SIDE, 2 * SIDE))
    with pytest.raises(DatasetError, match=f"mask shape \\(1, {2 * SIDE}, {2 * SIDE}\\) does not match image"):
        fixed[0]


def test_errors(tmp_path: Path, root: Path) -> None:
    with pytest.raises(DatasetError, match="no CANDID-PTX Pneumothorax_reports.csv found"):
        build_dataset("candid_ptx", tmp_path / "dataset")
    with pytest.raises(UnknownNameError, match="unknown unknown_ids"):
        build_dataset("candid_ptx", root, unknown_ids="drop")
    good = reports()
    for corrupt, message in [
        (good["EncodedPixels"][0] + " 7", "odd number of values"),
        ("3 x 4 5", "non-integer token"),
        ("5 -2", "negative start or length"),
    ]:
        good.assign(EncodedPixels=[corrupt, *good["EncodedPixels"][1:]]).to_csv(
            root / "Pneumothorax_reports.csv", index=False
        )
        with pytest.raises(DatasetError, match=f"Pneumothorax_reports.csv: row 2 \\({A}\\): .*{message}"):
            build_dataset("candid_ptx", root, "all")
    good.assign(EncodedPixels=[good["EncodedPixels"][0], f"{SIDE * SIDE} 3", *good["EncodedPixels"][2:]]).to_csv(
        root / "Pneumothorax_reports.csv", index=False
    )
    with pytest.raises(DatasetError, match=f"row 3: RLE runs end at pixel .* beyond a {SIDE}x{SIDE} image"):
        build_dataset("candid_ptx", root, "all")  # the DICOM's own size bounds the runs
    pd.concat([good, good.iloc[[0]].assign(EncodedPixels="-1")]).to_csv(root / "Pneumothorax_reports.csv", index=False)
    with pytest.raises(DatasetError, match=f"row 6: {A} has both a '-1' row and a mask"):
        build_dataset("candid_ptx", root, "all")
    good.drop(columns="EncodedPixels").to_csv(root / "Pneumothorax_reports.csv", index=False)
    with pytest.raises(DatasetError, match="missing column EncodedPixels"):
        build_dataset("candid_ptx", root, "all")
    good.to_csv(root / "Pneumothorax_reports.csv", index=False)
    pd.DataFrame({"anon_SOPUID": [A, "9.9.9"], "mask_rle": ["-1", "1 2"]}).to_csv(root / "chest_tube.csv", index=False)
    with pytest.raises(DatasetError, match="chest_tube.csv: row 3: 9.9.9 is not in Pneumothorax_reports.csv"):
        build_dataset("candid_ptx", root, "all")
    skipped = build_dataset("candid_ptx", root, "all", unknown_ids="skip")
    assert [r.labels.tolist() for r in skipped.records] == [[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]]
    (root / "dataset" / f"{C}.dcm").unlink()
    with pytest.raises(DatasetError, match="1 of 3 labelled images are missing"):
        build_dataset("candid_ptx", root, "all", unknown_ids="skip")
    kept = build_dataset("candid_ptx", root, "all", unknown_ids="skip", missing="keep")
    assert len(kept) == 3 and len(build_dataset("candid_ptx", root, "all", unknown_ids="skip", missing="skip")) == 2
