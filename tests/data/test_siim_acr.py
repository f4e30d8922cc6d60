"""SIIM-ACR adapter on the real train-rle.csv (12,954 rows, 12,047 images)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xrayfm.data import build_dataset
from xrayfm.data.datasets.siim_acr import build_siim_acr, check_rle
from xrayfm.data.masks import decode_rle
from xrayfm.errors import DatasetError, UnknownNameError
from xrayfm.io.writers import write_dicom, write_png

pytestmark = pytest.mark.shared_data

RLE_GZ = "siim-pneumothorax-train-rle.csv.gz"


def _run_sum(rle: str) -> int:
    return 0 if rle.strip() == "-1" else int(np.asarray(rle.split(), np.int64)[1::2].sum())


@pytest.fixture(scope="module")
def real_df(label_files: Path) -> pd.DataFrame:
    df = pd.read_csv(label_files / RLE_GZ)
    assert list(df.columns) == ["ImageId", " EncodedPixels"]  # the published header quirk
    return df.rename(columns={" EncodedPixels": "EncodedPixels"})


@pytest.fixture(scope="module")
def picks(real_df: pd.DataFrame) -> dict[str, str]:
    """A one-region image, a three-region image and a negative one, from the real file."""
    n = real_df[real_df["EncodedPixels"].str.strip() != "-1"].groupby("ImageId").size()
    return {
        "one": n[n == 1].index[0],
        "three": n[n == 3].index[0],
        "negative": real_df[real_df["EncodedPixels"].str.strip() == "-1"]["ImageId"].iloc[0],
    }


@pytest.fixture(scope="module")
def root(label_files: Path, picks: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("siim")
    (root / "train-rle.csv.gz").symlink_to(label_files / RLE_GZ)
    rng = np.random.default_rng(0)
    for i, image_id in enumerate(picks.values()):  # nested as published: <study>/<series>/<ImageId>.dcm
        write_dicom(root / "dicom-images-train" / f"1.2.{i}" / f"1.3.{i}" / f"{image_id}.dcm", rng.random((1024, 1024)))
    return root


@pytest.fixture(scope="module")
def records(root: Path) -> list:
    ds = build_siim_acr(root, "all", missing="keep")
    recs, tasks = ds.records, ds.tasks
    assert [(t.kind, t.classes) for t in tasks] == [
        ("multilabel", ("Pneumothorax",)), ("segmentation", ("Pneumothorax",)),
    ]  # fmt: skip
    return recs


def test_whole_file_parses(real_df: pd.DataFrame, records: list) -> None:
    assert len(real_df) == 12954 and len(records) == real_df["ImageId"].nunique() == 12047
    positive = real_df[real_df["EncodedPixels"].str.strip() != "-1"]
    assert sum(r.labels[0] for r in records) == positive["ImageId"].nunique() == 2669
    assert sum(r.meta["regions"] for r in records) == len(positive) == 3576
    assert sum(r.meta["regions"] > 1 for r in records) == 624
    assert all(r.labels[0] == float(r.meta["regions"] > 0) for r in records)
    shares = pd.Series([r.meta["split"] for r in records]).value_counts(normalize=True)
    assert abs(shares["train"] - 0.7) < 0.02 and abs(shares["val"] - 0.1) < 0.02 and abs(shares["test"] - 0.2) < 0.02


def test_every_real_rle_decodes_inside_1024(real_df: pd.DataFrame, records: list) -> None:
    for rle in real_df["EncodedPixels"]:  # each row on its own, with the shared decoder
        area = _run_sum(rle)
        assert check_rle(rle, 1024, 1024) == area
        assert np.count_nonzero(decode_rle(rle, 1024, 1024)) == area
    sums = real_df.groupby("ImageId")["EncodedPixels"].apply(lambda s: sum(_run_sum(r) for r in s))
    overlapping = 0
    for rec in records:
        if rec.meta["regions"] < 2:
            continue
        mask = rec.mask()  # the union of an image's rows, as samples carry it
        assert mask.shape == (1, 1024, 1024) and mask.dtype == np.uint8
        area = np.count_nonzero(mask)
        assert 0 < area <= sums[rec.meta["id"]]
        overlapping += area < sums[rec.meta["id"]]
    assert overlapping == 183  # regions of the real file sometimes overlap


def test_end_to_end(root: Path, real_df: pd.DataFrame, picks: dict) -> None:
    ds = build_dataset("siim_acr", root, "all", missing="skip")
    samples = {ds.records[i].meta["id"]: ds[i] for i in range(len(ds))}
    assert set(samples) == set(picks.values())
    for key, s in samples.items():
        assert s["image"].shape == (1, 1024, 1024) and s["mask"].shape == (1, 1024, 1024)
        rles = real_df[real_df["ImageId"] == key]["EncodedPixels"].tolist()
        union = np.zeros((1024, 1024), np.uint8)
        for rle in rles:
            union |= decode_rle(rle, 1024, 1024)
        np.testing.assert_array_equal(s["mask"][0].numpy(), union)
    (one_rle,) = real_df[real_df["ImageId"] == picks["one"]]["EncodedPixels"]
    assert samples[picks["one"]]["mask"].sum().item() == _run_sum(one_rle)
    assert samples[picks["one"]]["labels"].tolist() == [1.0] and samples[picks["three"]]["meta"]["regions"] == 3
    assert samples[picks["negative"]]["labels"].tolist() == [0.0] and samples[picks["negative"]]["mask"].sum() == 0
    # column-major: the first run of the one-region image starts at its first offset, down column x
    first = int(real_df[real_df["ImageId"] == picks["one"]]["EncodedPixels"].iloc[0].split()[0])
    assert samples[picks["one"]]["mask"][0, first % 1024, first // 1024] == 1


def test_flat_layout_and_options(tmp_path: Path, real_df: pd.DataFrame, picks: dict) -> None:
    rows = real_df[real_df["ImageId"].isin(list(picks.values()))]
    rows.rename(columns={"EncodedPixels": " EncodedPixels"}).to_csv(tmp_path / "train-rle.csv", index=False)
    write_png(tmp_path / "train" / f"{picks['one']}.png", np.full((1024, 1024), 0.5))
    write_dicom(tmp_path / "train" / f"{picks['negative']}.dcm", np.full((1024, 1024), 0.5))
    ds = build_dataset("siim_acr", tmp_path, "all", missing="skip")
    assert {r.image.name for r in ds.records} == {f"{picks['one']}.png", f"{picks['negative']}.dcm"}
    (one_rle,) = rows[rows["ImageId"] == picks["one"]]["EncodedPixels"]
    assert sum(ds[i]["mask"].sum().item() for i in range(len(ds))) == _run_sum(one_rle)
    # absolute (stage-2 style) RLE of the same mask gives the same samples
    absolute = []
    for rle in rows["EncodedPixels"]:
        nums = [] if rle.strip() == "-1" else [int(t) for t in rle.split()]
        pos, pairs = 0, []
        for start, length in zip(nums[0::2], nums[1::2]):
            pairs += [pos + start + 1, length]
            pos += start + length
        absolute.append(" ".join(map(str, pairs)) if pairs else "-1")
    rows.assign(EncodedPixels=absolute).to_csv(tmp_path / "stage_2_train.csv", index=False)
    ds2 = build_dataset("siim_acr", tmp_path, "all", missing="skip", labels_file="stage_2_train.csv", rle="absolute")
    for i in range(len(ds)):
        assert (ds[i]["mask"] == ds2[i]["mask"]).all()
    small = build_dataset(
        "siim_acr", tmp_path, "all", missing="skip", mask_size=(1024, 1024), val_fraction=0.0, test_fraction=0.0
    )
    assert {r.meta["split"] for r in small.records} == {"train"}


def test_errors(tmp_path: Path, real_df: pd.DataFrame, picks: dict) -> None:
    with pytest.raises(DatasetError, match="no SIIM-ACR RLE label file"):
        build_dataset("siim_acr", tmp_path)
    rows = real_df[real_df["ImageId"].isin(list(picks.values()))].reset_index(drop=True)
    path = tmp_path / "train-rle.csv.gz"

    def write(df: pd.DataFrame) -> None:
        with gzip.open(path, "wt") as fh:
            df.rename(columns={"EncodedPixels": " EncodedPixels"}).to_csv(fh, index=False)

    write(rows)
    with pytest.raises(UnknownNameError, match="unknown rle"):
        build_dataset("siim_acr", tmp_path, rle="rowmajor")
    with pytest.raises(UnknownNameError, match="no option"):
        build_dataset("siim_acr", tmp_path, size=1024)
    with pytest.raises(DatasetError, match="labelled images are missing|none of the 3"):
        build_dataset("siim_acr", tmp_path, "all")
    pos = int((rows["EncodedPixels"].str.strip() != "-1").to_numpy().argmax())
    for corrupt, message in [
        (rows["EncodedPixels"][pos] + " 17", "odd number of values"),
        ("12 x4 3 4", "non-integer token"),
        ("1048570 10", "beyond a 1024x1024 image"),
        ("5 -3", "negative start or length"),
    ]:
        bad = rows.copy()
        bad.loc[pos, "EncodedPixels"] = corrupt
        write(bad)
        with pytest.raises(DatasetError, match=f"row {pos + 2} \\({rows['ImageId'][pos]}\\): .*{message}"):
            build_dataset("siim_acr", tmp_path, "all", missing="skip")
    neg = int((rows["EncodedPixels"].str.strip() == "-1").to_numpy().argmax())
    write(pd.concat([rows, rows.iloc[[neg]].assign(EncodedPixels="5 10")]))
    with pytest.raises(DatasetError, match="has both a '-1' row and a mask"):
        build_dataset("siim_acr", tmp_path, "all", missing="skip")
    write(rows.rename(columns={"EncodedPixels": "Pixels"}))
    with pytest.raises(DatasetError, match=r"missing column\(s\) \['EncodedPixels'\]"):
        build_dataset("siim_acr", tmp_path, "all", missing="skip")
    # a 512-px conversion does not fit 1024-px masks: named at load time
    write(rows)
    write_png(tmp_path / "train" / f"{picks['one']}.png", np.full((512, 512), 0.5))
    ds = build_dataset("siim_acr", tmp_path, "all", missing="skip")
    with pytest.raises(DatasetError, match="mask shape .* does not match image 512x512"):
        ds[0]


def _check_component_boxes(boxes: np.ndarray, mask: np.ndarray) -> None:
    """Boxes are tight around mask pixels, cover all of them and together span the mask's extent."""
    covered = np.zeros_like(mask, dtype=bool)
    for x0, y0, x1, y1 in boxes.astype(int):
        crop = mask[y0:y1, x0:x1]
        assert crop[:, 0].any() and crop[:, -1].any() and crop[0].any() and crop[-1].any()  # tight
        covered[y0:y1, x0:x1] = True
    assert not (mask.astype(bool) & ~covered).any()
    ys, xs = np.nonzero(mask)
    assert boxes[:, :2].min(0).tolist() == [xs.min(), ys.min()]
    assert boxes[:, 2:].max(0).tolist() == [xs.max() + 1, ys.max() + 1]


def test_boxes_from_masks(root: Path, tmp_path: Path, real_df: pd.DataFrame, picks: dict) -> None:
    ds = build_dataset("siim_acr", root, "all", missing="skip", boxes=True)
    assert [(t.name, t.kind, t.classes) for t in ds.tasks][-1] == ("pneumothorax_boxes", "detection", ("Pneumothorax",))
    for i, rec in enumerate(ds.records):
        s = ds[i]
        union = np.zeros((1024, 1024), np.uint8)
        for rle in real_df[real_df["ImageId"] == rec.meta["id"]]["EncodedPixels"]:
            union |= decode_rle(rle, 1024, 1024)
        assert rec.box_space == (1024, 1024) and s["box_labels"].tolist() == [0] * len(s["boxes"])
        if rec.meta["id"] == picks["negative"]:
            assert s["boxes"].shape == (0, 4)
            continue
        assert len(s["boxes"]) >= 1
        _check_component_boxes(s["boxes"].numpy(), union)
    plain = build_dataset("siim_acr", root, "all", missing="skip")
    assert [t.kind for t in plain.tasks] == ["multilabel", "segmentation"]
    assert all(r.boxes is None for r in plain.records)
    # a larger real sample, labels only: every positive image gets tight covering boxes, negatives none
    ids = real_df["ImageId"].drop_duplicates().iloc[:150]
    sample = real_df[real_df["ImageId"].isin(ids)]
    sample.rename(columns={"EncodedPixels": " EncodedPixels"}).to_csv(tmp_path / "train-rle.csv", index=False)
    records = build_siim_acr(tmp_path, "all", missing="keep", boxes=True).records
    assert len(records) == 150 and sum(r.meta["regions"] > 0 for r in records) >= 20
    for rec in records:
        if not rec.meta["regions"]:
            assert rec.boxes.shape == (0, 4)
            continue
        _check_component_boxes(rec.boxes, rec.mask()[0])
    assert any(len(r.boxes) != r.meta["regions"] for r in records)  # components, not RLE rows
