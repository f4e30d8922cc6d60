"""ChestX-Det adapter on a small synthetic copy of the published layout (two json files, train/, test/)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from xrayfm.data import build_dataset
from xrayfm.data.datasets.chestx_det import CLASSES
from xrayfm.errors import DatasetError
from xrayfm.io.writers import write_png

MASS, NODULE, EFFUSION = (CLASSES.index(c) for c in ("Mass", "Nodule", "Effusion"))
# a 201 x 81 px rectangle (PIL fills the outline too): x 100..300, y 40..120 in the 1024-px space
RECT = [[100, 40], [300, 40], [300, 120], [100, 120]]
TRIANGLE = [[500, 500], [600, 500], [500, 600]]
# 320 x 320 px square at x 160..480, y 320..640: x 10..30, y 20..40 in a 64-px image
SQUARE = [[160, 320], [480, 320], [480, 640], [160, 640]]


def _entry(name: str, syms=(), boxes=(), polygons=()) -> dict:
    return {"file_name": name, "syms": list(syms), "boxes": list(boxes), "polygons": list(polygons)}


TRAIN = [
    _entry("100.png", ["Mass", "Nodule"], [[100, 40, 300, 120], [500, 500, 600, 600]], [RECT, TRIANGLE]),
    _entry("101.png", ["Effusion"], [[160, 320, 480, 640]], [SQUARE]),
    *(_entry(f"{i}.png") for i in range(102, 130)),
]
TEST = [_entry("200.png", ["Effusion", "Effusion"], [[1, 1, 9, 9], [20, 20, 40, 40]], [RECT, SQUARE])]
SIZES = {"100.png": 1024, "101.png": 64}  # the others: 16 px


def _write(root: Path, train: list[dict] = TRAIN, test: list[dict] = TEST) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for part, entries in (("train", train), ("test", test)):
        (root / f"ChestX_Det_{part}.json").write_text(json.dumps(entries))
        for e in entries:
            size = SIZES.get(e.get("file_name"), 16)
            if "file_name" in e and not (root / part / e["file_name"]).exists():
                write_png(root / part / e["file_name"], np.full((size, size), 0.5))
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write(tmp_path_factory.mktemp("chestx_det"))


def test_classes_are_the_13_in_sorted_order() -> None:
    assert len(CLASSES) == 13 and list(CLASSES) == sorted(CLASSES)


def test_labels_boxes_and_exact_polygon_mask(root: Path) -> None:
    ds = build_dataset("chestx_det", root, "all")
    assert [(t.name, t.kind, t.classes) for t in ds.tasks] == [
        ("findings", "multilabel", CLASSES),
        ("lesions", "detection", CLASSES),
        ("lesion_masks", "segmentation", CLASSES),
    ]
    i = next(k for k, r in enumerate(ds.records) if r.meta["id"] == "100")
    s = ds[i]
    assert s["image"].shape == (1, 1024, 1024)
    assert np.flatnonzero(s["labels"].numpy()).tolist() == sorted([MASS, NODULE])
    np.testing.assert_array_equal(s["boxes"].numpy(), [[100, 40, 300, 120], [500, 500, 600, 600]])
    assert s["box_labels"].tolist() == [MASS, NODULE]
    mask = s["mask"].numpy()
    assert mask.shape == (13, 1024, 1024) and mask.dtype == np.uint8
    want = np.zeros((1024, 1024), np.uint8)
    want[40:121, 100:301] = 1  # rows are y, columns x
    np.testing.assert_array_equal(mask[MASS], want)
    assert mask[NODULE].sum() > 0 and mask[NODULE][500, 500] == 1 and mask[NODULE][599, 599] == 0
    others = [k for k in range(13) if k not in (MASS, NODULE)]
    assert mask[others].sum() == 0
    empty = ds[next(k for k, r in enumerate(ds.records) if r.meta["id"] == "102")]
    assert empty["labels"].sum() == 0 and empty["boxes"].shape == (0, 4) and empty["mask"].sum() == 0


def test_boxes_and_polygons_follow_a_downscaled_image(root: Path) -> None:
    ds = build_dataset("chestx_det", root, "all")
    i = next(k for k, r in enumerate(ds.records) if r.meta["id"] == "101")
    assert ds.records[i].box_space == (1024, 1024)
    s = ds[i]
    np.testing.assert_allclose(s["boxes"].numpy(), [[10, 20, 30, 40]])  # 1024 px -> 64 px
    want = np.zeros((64, 64), np.uint8)
    want[20:41, 10:31] = 1
    np.testing.assert_array_equal(s["mask"].numpy()[EFFUSION], want)
    source = pickle.loads(pickle.dumps(ds.records[i].mask))  # DataLoader workers get a copy
    np.testing.assert_array_equal(source(), s["mask"].numpy())


def test_splits(root: Path) -> None:
    parts = {s: build_dataset("chestx_det", root, s, masks=False) for s in ("train", "val", "test", "all")}
    ids = {s: {r.meta["id"] for r in d.records} for s, d in parts.items()}
    train_json = {Path(e["file_name"]).stem for e in TRAIN}
    assert ids["train"] and ids["val"] and not ids["train"] & ids["val"]
    assert ids["train"] | ids["val"] == train_json and ids["test"] == {"200"}
    assert ids["all"] == train_json | {"200"}
    assert all(r.meta["split"] == s for s in ("train", "val", "test") for r in parts[s].records)
    assert all(r.meta["patient_id"] == r.meta["id"] for r in parts["all"].records)
    test = parts["test"][0]
    assert test["box_labels"].tolist() == [EFFUSION, EFFUSION] and "mask" not in test
    assert [t.kind for t in parts["test"].tasks] == ["multilabel", "detection"]
    other = {r.meta["id"] for r in build_dataset("chestx_det", root, "val", seed=5, masks=False).records}
    assert other != ids["val"] and other <= train_json
    none_held = build_dataset("chestx_det", root, "val", val_fraction=0.0, masks=False)
    assert len(none_held) == 0


@pytest.mark.parametrize(
    "entry, message",
    [
        (_entry("1.png", ["Hernia"], [[1, 1, 5, 5]], [RECT]), r"\(1.png\): unknown class 'Hernia'"),
        (_entry("1.png", ["Mass"], [[5, 1, 5, 9]], [RECT]), r"\(1.png\): box 0 .* x1 < x2"),
        (_entry("1.png", ["Mass"], [[5, 1, 9]], [RECT]), r"box 0 \[5, 1, 9\] is not \[x1, y1, x2, y2\]"),
        (_entry("1.png", ["Mass"], [[5, 1, 1030, 9]], [RECT]), r"box 0 .* outside the 1024x1024"),
        (_entry("1.png", ["Mass"], [[1, 1, 5, 5]], [[[1, 1], [5, 5]]]), r"polygon 0 is not a list of at least 3"),
        (_entry("1.png", ["Mass"], [[1, 1, 5, 5]], [[[1, 1], [5, "a"], [3, 3]]]), r"polygon 0 is not a list"),
        (_entry("1.png", ["Mass"], [[1, 1, 5, 5]], [[[1, 1], [5, 5], [3, 1100]]]), r"polygon 0 has a point outside"),
        (_entry("1.png", ["Mass", "Nodule"], [[1, 1, 5, 5]], [RECT]), r"2 syms, 1 boxes and 1 polygons"),
        ({"syms": []}, r": not an object with a file_name"),
    ],
)
def test_bad_entries_are_named(tmp_path: Path, entry: dict, message: str) -> None:
    _write(tmp_path, train=[entry])
    with pytest.raises(DatasetError, match=r"ChestX_Det_train.json: entry 0.*" + message):
        build_dataset("chestx_det", tmp_path, "train", missing="keep")


def test_file_errors_and_missing_images(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"ChestX_Det_train.json not found; expected .*ChestX_Det_test.json"):
        build_dataset("chestx_det", tmp_path, "train")
    _write(tmp_path, train=[*TRAIN, TRAIN[0]])
    with pytest.raises(DatasetError, match=r"entry 30: 100.png appears twice"):
        build_dataset("chestx_det", tmp_path, "all")
    _write(tmp_path)
    (tmp_path / "test" / "200.png").unlink()
    with pytest.raises(DatasetError, match=r"1 of 1 labelled images are missing|none of the 1 labelled images"):
        build_dataset("chestx_det", tmp_path, "test")
    assert len(build_dataset("chestx_det", tmp_path, "all", missing="skip")) == len(TRAIN)
    (tmp_path / "ChestX_Det_test.json").write_text("{not json")
    with pytest.raises(DatasetError, match="cannot read json"):
        build_dataset("chestx_det", tmp_path, "test")
    with pytest.raises(DatasetError, match="val_fraction"):
        build_dataset("chestx_det", tmp_path, "train", val_fraction=1.0)
