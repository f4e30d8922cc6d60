"""Generic adapters: image_folder, coco, mask_folder (written files), and csv on real images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from xrayfm import DatasetError
from xrayfm.data import build_dataset, collate_samples
from xrayfm.io.writers import write_dicom, write_mask_png, write_png


def _img(seed: int, h: int = 24, w: int = 20) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (h, w))


# ---------------------------------------------------------------- image_folder


def test_image_folder_hashed_split_and_group_regex(tmp_path: Path) -> None:
    names = {"NORMAL": ["IM-0001-0001.jpeg", "IM-0003-0001.jpeg"],
             "PNEUMONIA": ["person1_bacteria_1.jpeg", "person1_bacteria_2.jpeg", "person3_virus_15.jpeg"]}  # fmt: skip
    for cls, files in names.items():
        (tmp_path / cls).mkdir()
        for i, f in enumerate(files):
            Image.fromarray(np.uint8(_img(i) * 255)).save(tmp_path / cls / f, "JPEG")  # Kermany ships JPEGs
    write_dicom(tmp_path / "PNEUMONIA" / "sub" / "p9.dcm", _img(9))
    (tmp_path / "PNEUMONIA" / ".DS_Store").write_bytes(b"x")
    ds = build_dataset("image_folder", tmp_path, "all")
    assert len(ds) == 6 and ds.tasks[0].classes == ("NORMAL", "PNEUMONIA") and ds.tasks[0].kind == "multiclass"
    by_id = {r.meta["id"]: r for r in ds.records}
    assert by_id["p9"].labels.tolist() == [0, 1] and by_id["IM-0001-0001"].labels.tolist() == [1, 0]
    assert ds[[r.meta["id"] for r in ds.records].index("p9")]["image"].shape == (1, 24, 20)
    grouped = build_dataset("image_folder", tmp_path, "all", group_regex=r"^(person\d+)_")
    p1 = {r.meta["split"] for r in grouped.records if r.meta["id"].startswith("person1_")}
    assert len(p1) == 1
    assert sum(len(build_dataset("image_folder", tmp_path, s)) for s in ("train", "val", "test")) == 6
    with pytest.raises(DatasetError, match=r"folders \['PNEUMONIA'\]"):
        build_dataset("image_folder", tmp_path, "all", classes=("NORMAL",))
    rev = build_dataset("image_folder", tmp_path, "all", classes=("PNEUMONIA", "NORMAL"))
    assert {r.meta["id"]: r for r in rev.records}["p9"].labels.tolist() == [1, 0]


def test_image_folder_split_folders(tmp_path: Path) -> None:
    for split, cls, n in (("train", "covid", 2), ("train", "normal", 1), ("valid", "normal", 1), ("test", "viral", 1)):
        for i in range(n):
            write_png(tmp_path / split / cls / f"{split}_{cls}_{i}.png", _img(i))
    parts = {s: build_dataset("image_folder", tmp_path, s) for s in ("train", "val", "test")}
    assert [len(parts[s]) for s in ("train", "val", "test")] == [3, 1, 1]
    assert parts["val"].tasks[0].classes == ("covid", "normal", "viral")
    assert parts["test"].records[0].labels.tolist() == [0, 0, 1]
    with pytest.raises(DatasetError, match="no class folder"):
        build_dataset("image_folder", tmp_path / "test" / "viral", "all")


# ---------------------------------------------------------------- coco


def _coco(root: Path, anns: list[dict], image_dir: str = "images") -> dict:
    images = [
        {"id": 1, "file_name": "tb0004.png", "width": 40, "height": 30},
        {"id": 2, "file_name": "tb0024.png", "width": 40, "height": 30},
        {"id": 7, "file_name": "h0001.png", "width": 40, "height": 30},  # healthy: no annotation
    ]
    for i, im in enumerate(images):
        write_png(root / image_dir / im["file_name"], _img(i, 30, 40))
    data = {"images": images, "annotations": anns,
            "categories": [{"id": 3, "name": "LatentTB"}, {"id": 1, "name": "ActiveTB"}]}  # fmt: skip
    (root / "annotations.json").write_text(json.dumps(data))
    return data


ANNS = [
    {"id": 10, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 8], "iscrowd": 0, "area": 80},
    {"id": 11, "image_id": 1, "category_id": 3, "bbox": [20, 5, 19.5, 20], "iscrowd": 0, "area": 390},
    {"id": 12, "image_id": 2, "category_id": 1, "bbox": [0, 0, 40, 30], "iscrowd": 0, "area": 1200},
    {"id": 13, "image_id": 2, "category_id": 3, "bbox": [1, 1, 5, 5], "iscrowd": 1, "area": 25},
]


def test_coco_boxes_categories_and_empty_images(tmp_path: Path) -> None:
    _coco(tmp_path, ANNS)
    ds = build_dataset("coco", tmp_path, "all")
    assert len(ds) == 3 and ds.tasks[0].classes == ("ActiveTB", "LatentTB") and ds.tasks[0].kind == "detection"
    by_id = {r.meta["coco_id"]: i for i, r in enumerate(ds.records)}
    s = ds[by_id[1]]
    np.testing.assert_allclose(s["boxes"].numpy(), [[2, 3, 12, 11], [20, 5, 39.5, 25]])
    assert s["box_labels"].tolist() == [0, 1]
    assert ds[by_id[2]]["boxes"].shape == (1, 4)  # the crowd box is skipped
    assert len(build_dataset("coco", tmp_path, "all", include_crowd=True)[by_id[2]]["boxes"]) == 2
    empty = ds[by_id[7]]
    assert empty["boxes"].shape == (0, 4) and empty["box_labels"].shape == (0,)
    batch = collate_samples([ds[0], ds[1], ds[2]])
    assert len(batch["boxes"]) == 3


def test_coco_images_at_root_and_rescaled(tmp_path: Path) -> None:
    data = _coco(tmp_path, ANNS[:1], image_dir=".")
    write_png(tmp_path / "tb0004.png", _img(0, 60, 80))  # stored at twice the declared size
    ds = build_dataset("coco", tmp_path, "all")
    s = ds[[r.meta["coco_id"] for r in ds.records].index(1)]
    np.testing.assert_allclose(s["boxes"].numpy(), [[4, 6, 24, 22]])
    assert data["images"][0]["width"] == 40


@pytest.mark.parametrize(
    ("ann", "message"),
    [
        (
            {"id": 99, "image_id": 1, "category_id": 1, "bbox": [35, 3, 10, 8]},
            "annotation 99: bbox .* outside its 40x30 image tb0004.png",
        ),
        ({"id": 98, "image_id": 1, "category_id": 5, "bbox": [1, 1, 2, 2]}, "annotation 98: unknown category_id 5"),
        ({"id": 97, "image_id": 42, "category_id": 1, "bbox": [1, 1, 2, 2]}, "annotation 97: unknown image_id 42"),
        ({"id": 96, "image_id": 1, "category_id": 1, "bbox": [1, 1, 0, 2]}, "annotation 96: bbox .* no positive size"),
        (
            {"id": 95, "image_id": 1, "category_id": 1, "bbox": [1, 1]},
            r"annotation 95: bbox must be \[x, y, width, height\]",
        ),
    ],
)
def test_coco_invalid_annotations(tmp_path: Path, ann: dict, message: str) -> None:
    _coco(tmp_path, [*ANNS, ann])
    with pytest.raises(DatasetError, match=message):
        build_dataset("coco", tmp_path, "all")


def test_coco_file_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no annotation file"):
        build_dataset("coco", tmp_path, "all")
    (tmp_path / "annotations.json").write_text("{not json")
    with pytest.raises(DatasetError, match="cannot read COCO json"):
        build_dataset("coco", tmp_path, "all")
    (tmp_path / "other.json").write_text(json.dumps({"images": []}))
    with pytest.raises(DatasetError, match="not a COCO detection file"):
        build_dataset("coco", tmp_path, "all", annotations="other.json")


# ---------------------------------------------------------------- mask_folder


def test_mask_folder_binary_suffix_and_ignore(tmp_path: Path) -> None:
    for i, stem in enumerate(["CHNCXR_0001_0", "CHNCXR_0002_0", "case_3"]):
        write_png(tmp_path / "images" / f"{stem}.png", _img(i))
        m = np.zeros((24, 20), np.uint8)
        m[2:10, 2:8] = 255
        m[20:, :] = 128  # "ignore" value
        write_mask_png(tmp_path / "masks" / f"{stem}_mask.png", m)
    ds = build_dataset("mask_folder", tmp_path, "all", mask_suffix="_mask", ignore_value=128)
    assert len(ds) == 3 and ds.tasks[0].classes == ("foreground",)
    mask = ds[0]["mask"].numpy()
    assert mask.shape == (1, 24, 20) and int((mask == 1).sum()) == 48 and int((mask == 255).sum()) == 4 * 20
    with pytest.raises(DatasetError, match="no mask .*CHNCXR_0001_0.png for image"):
        build_dataset("mask_folder", tmp_path, "all")


def test_mask_folder_label_map_and_split_folders(tmp_path: Path) -> None:
    for split, stem in (("train", "a"), ("train", "b"), ("test", "c")):
        write_png(tmp_path / split / "images" / f"{stem}.png", _img(0))
        lm = np.zeros((24, 20), np.uint8)
        lm[:5] = 1
        lm[5:8] = 2
        lm[8:9] = 255
        write_mask_png(tmp_path / split / "masks" / f"{stem}.png", lm)
    ds = build_dataset("mask_folder", tmp_path, "train", classes=("lungs", "heart"), ignore_value=255)
    assert len(ds) == 2 and ds.tasks[0].classes == ("lungs", "heart")
    m = ds[0]["mask"].numpy()
    assert m.shape == (2, 24, 20) and int((m[0] == 1).sum()) == 100 and int((m[1] == 1).sum()) == 60
    assert (m[:, 8] == 255).all()
    heart = build_dataset("mask_folder", tmp_path, "test", classes="heart", values=2)
    assert int(heart[0]["mask"].sum()) == 60
    with pytest.raises(DatasetError, match="2 values"):
        build_dataset("mask_folder", tmp_path, "all", classes=("heart",), values=(1, 2))


def test_mask_folder_size_mismatch_fails_on_load(tmp_path: Path) -> None:
    write_png(tmp_path / "images" / "x.png", _img(0))
    write_mask_png(tmp_path / "masks" / "x.png", np.zeros((12, 10), np.uint8))
    (tmp_path / "images" / "y.png").write_bytes((tmp_path / "images" / "x.png").read_bytes())
    ds = build_dataset("mask_folder", tmp_path, "all", missing_masks="skip")
    assert len(ds) == 1
    with pytest.raises(DatasetError, match=r"x.png: mask shape \(1, 12, 10\) does not match image 24x20"):
        ds[0]


# ---------------------------------------------------------------- csv on real shared images


@pytest.mark.shared_data
def test_csv_real_jsrt_lungs_fraction(shared_datasets: Path) -> None:
    root = shared_datasets / "jsrt_lungs"
    ds = build_dataset("csv", root, "train", mask_columns=("mask",), label_columns=("nodule",))
    assert len(ds) == 174 and ds.task_for("mask").classes == ("mask",)
    table = pd.read_csv(root / "labels.csv").set_index("image")
    for rec in ds.records:
        frac = float(rec.mask().mean())
        row = table.loc[rec.image.relative_to(root).as_posix()]
        assert abs(frac - row["lung_fraction"]) < 0.002 and rec.labels[0] == row["nodule"]
    s = ds[0]
    assert s["image"].shape == s["mask"].shape == (1, 512, 512)


@pytest.mark.shared_data
def test_csv_real_covid_ignore_regions(shared_datasets: Path) -> None:
    root = shared_datasets / "covid_v7labs_lungs"
    ds = build_dataset("csv", root, "all", mask_columns=("mask",), mask_ignore_value=255, label_columns=())
    table = pd.read_csv(root / "labels.csv").set_index("image")
    has_ignore = {rec.image.name: bool((rec.mask() == 255).any()) for rec in ds.records}
    expected = {Path(i).name: bool(v) for i, v in table["has_ignore_region"].items()}
    assert len(ds) == 427 and sum(expected.values()) == 50 and has_ignore == expected


@pytest.mark.shared_data
@pytest.mark.parametrize(("folder", "n_boxes"), [("nih_cxr14_sample", 49), ("tbx11k_tb_boxes", 305)])
def test_csv_real_boxes(shared_datasets: Path, folder: str, n_boxes: int) -> None:
    ds = build_dataset("csv", shared_datasets / folder, "all")
    assert sum(len(r.boxes) for r in ds.records if r.boxes is not None) == n_boxes
    i = next(i for i, r in enumerate(ds.records) if r.boxes is not None)
    s = ds[i]
    assert s["boxes"].shape[1] == 4 and (s["boxes"][:, 2:] > s["boxes"][:, :2]).all()


@pytest.mark.shared_data
def test_csv_real_kermany_positives(shared_datasets: Path) -> None:
    ds = build_dataset("csv", shared_datasets / "kermany_pneumonia_test224", "test", label_columns=("pneumonia",))
    assert len(ds) == 624 and int(sum(r.labels[0] for r in ds.records)) == 390
    assert ds[0]["image"].shape == (1, 224, 224)
