"""TBX11K adapter on a small synthetic copy of the published layout (lists, COCO json, imgs/)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from xrayfm.data import build_dataset
from xrayfm.data.datasets.tbx11k import BOX_TYPES, CATEGORIES
from xrayfm.errors import DatasetError, MissingSplitError, UnknownNameError
from xrayfm.io.writers import write_png

TRAIN = ["tb/tb0001.png", "tb/tb1199.png", "health/h0001.png", "sick/s0001.png"] + [
    f"health/h{i:04d}.png" for i in range(10, 30)
]
VAL = ["tb/tb0003.png", "health/h0002.png"]
# COCO boxes [x, y, w, h] in the 512-px space of the json, category ids 1 active, 2 latent
BOXES = {"tb/tb0001.png": [([64, 128, 96, 48], 1), ([300, 200, 80, 160], 2)], "tb/tb0003.png": [([8, 16, 40, 40], 1)]}


def _coco(names: list[str], boxes: dict, extra: list[str] = ()) -> dict:
    images, anns = [], []
    for i, name in enumerate([*names, *extra], start=1):
        images.append({"id": i, "file_name": name, "width": 512, "height": 512})
        for bbox, cat in boxes.get(name, []):
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cat, "bbox": bbox, "iscrowd": 0})
    cats = [{"id": k + 1, "name": n, "supercategory": "Tuberculosis"} for k, n in enumerate(BOX_TYPES)]
    return {"images": images, "annotations": anns, "categories": cats}


def _write(root: Path, train: list[str] = TRAIN, boxes: dict = BOXES, size: int = 64) -> Path:
    (root / "lists").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "json").mkdir(parents=True, exist_ok=True)
    for part, names in (("train", train), ("val", VAL)):
        (root / "lists" / f"TBX11K_{part}.txt").write_text("\n".join(names) + "\n")
        # all_*.json also lists the extra/ images, which the TBX11K lists leave out
        coco = _coco(names, boxes, extra=[f"extra/da+db/{part}/n1.png"])
        (root / "annotations" / "json" / f"all_{part}.json").write_text(json.dumps(coco))
        for name in names:
            if not (root / "imgs" / name).exists():
                write_png(root / "imgs" / name, np.full((size, size), 0.5))
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # unpacked as the archive is: ROOT/TBX11K/{imgs,lists,annotations}
    return _write(tmp_path_factory.mktemp("tbx") / "TBX11K").parent


def test_default_follows_foundation_x(root: Path) -> None:
    ds = build_dataset("tbx11k", root, "all")
    assert [(t.kind, t.classes) for t in ds.tasks] == [
        ("multilabel", ("Tuberculosis",)),
        ("detection", ("Tuberculosis",)),
    ]
    assert len(ds) == len(TRAIN) + len(VAL)
    by_id = {ds.records[i].meta["id"]: ds[i] for i in range(len(ds))}
    tb = by_id["tb0001"]
    assert tb["image"].shape == (1, 64, 64) and tb["labels"].tolist() == [1.0]
    want = np.asarray([[64, 128, 160, 176], [300, 200, 380, 360]], np.float32) / 8  # 512 px -> 64 px
    np.testing.assert_allclose(tb["boxes"].numpy(), want)
    assert tb["box_labels"].tolist() == [0, 0]  # category-agnostic
    assert tb["meta"]["patient_id"] == "tb0001" and tb["meta"]["split"] == "train"
    for image_id in ("h0001", "s0001", "tb1199"):  # tb1199: a TB image released without boxes
        assert by_id[image_id]["boxes"].shape == (0, 4) and by_id[image_id]["box_labels"].shape == (0,)
    assert by_id["s0001"]["labels"].tolist() == [0.0] and by_id["tb1199"]["labels"].tolist() == [1.0]
    assert all(r.box_space == (512, 512) for r in ds.records)


def test_category_labels_and_box_types(root: Path) -> None:
    ds = build_dataset("tbx11k", root, "train", labels="category", boxes="types")
    assert ds.tasks[0].kind == "multiclass" and ds.tasks[0].classes == CATEGORIES
    assert ds.tasks[1].classes == BOX_TYPES
    by_id = {r.meta["id"]: r for r in ds.records}
    assert by_id["h0001"].labels.tolist() == [1, 0, 0] and by_id["s0001"].labels.tolist() == [0, 1, 0]
    assert by_id["tb0001"].labels.tolist() == [0, 0, 1] and by_id["tb0001"].meta["category"] == "Tuberculosis"
    assert by_id["tb0001"].box_labels.tolist() == [0, 1]  # ActiveTuberculosis, ObsoletePulmonaryTuberculosis
    only_boxes = build_dataset("tbx11k", root, "val", labels="none")
    assert [t.kind for t in only_boxes.tasks] == ["detection"] and "labels" not in only_boxes[0]


def test_official_splits_and_test_holdout(root: Path) -> None:
    train, val = (build_dataset("tbx11k", root, s) for s in ("train", "val"))
    assert [r.image.relative_to(root / "TBX11K" / "imgs").as_posix() for r in train.records] == TRAIN
    assert {r.meta["id"] for r in val.records} == {"tb0003", "h0002"}
    with pytest.raises(MissingSplitError, match="never released.*test_fraction"):
        build_dataset("tbx11k", root, "test")
    held = {s: build_dataset("tbx11k", root, s, test_fraction=0.3, seed=1) for s in ("train", "val", "test", "all")}
    ids = {s: {r.meta["id"] for r in d.records} for s, d in held.items()}
    assert ids["train"] and ids["test"] and not ids["train"] & ids["test"]
    assert ids["train"] | ids["test"] == {r.meta["id"] for r in train.records}
    assert ids["val"] == {"tb0003", "h0002"} and ids["all"] == ids["train"] | ids["test"] | ids["val"]
    assert {r.meta["split"] for r in held["test"].records} == {"test"}
    again = build_dataset("tbx11k", root, "test", test_fraction=0.3, seed=1)
    assert {r.meta["id"] for r in again.records} == ids["test"]


def test_labels_without_json(tmp_path: Path) -> None:
    _write(tmp_path)
    for f in (tmp_path / "annotations" / "json").iterdir():
        f.unlink()
    with pytest.raises(DatasetError, match="no box annotations for train.*boxes=none"):
        build_dataset("tbx11k", tmp_path, "train")
    ds = build_dataset("tbx11k", tmp_path, "train", boxes="none")
    assert [t.kind for t in ds.tasks] == ["multilabel"] and ds.records[0].boxes is None


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: _append(r / "lists" / "TBX11K_train.txt", "extra/da+db/train/n1.png"), r"TBX11K_train.txt line 25"),
        (
            lambda r: _append(r / "lists" / "TBX11K_train.txt", "tb/tb0001.png"),
            r"line 25: 'tb/tb0001.png' is listed twice",
        ),
        (lambda r: _write(r, boxes={**BOXES, "health/h0001.png": [([1, 1, 9, 9], 1)]}), r"h0001.png is not a TB image"),
        (lambda r: _write(r, boxes={"tb/tb0001.png": [([500, 10, 40, 10], 1)]}), r"lies outside its 512x512"),
        (lambda r: _write(r, boxes={"tb/tb0001.png": [([50, 10, 0, 10], 1)]}), r"has no positive size"),
        (lambda r: _write(r, boxes={"tb/tb0001.png": [([50, 10, 9, 10], 7)]}), r"unknown category_id 7"),
        (lambda r: _rename_category(r, "Tuberculosis"), r"unknown category name\(s\) \['Tuberculosis'\]"),
        (lambda r: _drop_from_json(r, "sick/s0001.png"), r"all_train.json: no entry for sick/s0001.png"),
        (lambda r: (r / "imgs" / "sick" / "s0001.png").unlink(), r"1 of 24 labelled images are missing"),
    ],
)
def test_errors_name_the_file_and_entry(tmp_path: Path, change, message: str) -> None:
    _write(tmp_path)
    change(tmp_path)
    with pytest.raises(DatasetError, match=message):
        build_dataset("tbx11k", tmp_path, "train")


def test_options_and_missing_images(tmp_path: Path) -> None:
    _write(tmp_path)
    (tmp_path / "imgs" / "sick" / "s0001.png").unlink()
    assert len(build_dataset("tbx11k", tmp_path, "train", missing="skip")) == len(TRAIN) - 1
    with pytest.raises(UnknownNameError, match="unknown boxes 'tb'"):
        build_dataset("tbx11k", tmp_path, boxes="tb")
    with pytest.raises(DatasetError, match="leave no task"):
        build_dataset("tbx11k", tmp_path, labels="none", boxes="none")


def test_csv_subset_is_refused_with_the_expected_files(shared_datasets: Path) -> None:
    # the 200-image subset in ../shared is a CSV layout for the `csv` adapter, not the TBX11K archive
    with pytest.raises(DatasetError, match=r"lists/TBX11K_train.txt not found.*all_\{train,val\}.json.*`csv` adapter"):
        build_dataset("tbx11k", shared_datasets / "tbx11k_tb_boxes", "train")


def _append(path: Path, line: str) -> None:
    path.write_text(path.read_text() + line + "\n")


def _rename_category(root: Path, name: str) -> None:
    path = root / "annotations" / "json" / "all_train.json"
    coco = json.loads(path.read_text())
    coco["categories"][0]["name"] = name
    path.write_text(json.dumps(coco))


def _drop_from_json(root: Path, name: str) -> None:
    path = root / "annotations" / "json" / "all_train.json"
    coco = json.loads(path.read_text())
    coco["images"] = [im for im in coco["images"] if im["file_name"] != name]
    path.write_text(json.dumps(coco))
