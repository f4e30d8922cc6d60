"""NODE21 adapter on a tiny synthetic copy of the published layout (PNG conversions; .mha via a stand-in reader)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xrayfm.data import build_dataset
from xrayfm.data.datasets.node21 import build_node21
from xrayfm.errors import DatasetError, UnknownNameError
from xrayfm.io import read_xray
from xrayfm.io.writers import write_png

DATA = Path("cxr_images") / "proccessed_data"  # the release's spelling
COLUMNS = ["img_name", "x", "y", "width", "height", "label"]
ROWS = [
    ("n0001.mha", 100, 200, 50, 60, 1),
    ("n0001.mha", 600, 400, 40, 32, 1),
    ("n0002.mha", 512, 256, 64, 64, 1),
    ("c0001.mha", 0, 0, 0, 0, 0),
]


def write_layout(root: Path, rows: list[tuple], sizes: dict[str, int] | None = None) -> Path:
    """metadata.csv as published and PNG conversions of the named images (side per image id)."""
    folder = root / DATA
    (folder / "images").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=COLUMNS).to_csv(folder / "metadata.csv")  # with the index column, as pandas writes
    for image_id, side in (sizes or {}).items():
        write_png(folder / "images" / f"{image_id}.png", np.full((side, side), 0.5))
    return folder


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    write_layout(tmp_path, ROWS, {"n0001": 128, "n0002": 1024, "c0001": 64})
    return tmp_path


def test_tasks_boxes_and_labels(root: Path) -> None:
    ds = build_dataset("node21", root, "all")
    assert [(t.kind, t.classes) for t in ds.tasks] == [("multilabel", ("nodule",)), ("detection", ("nodule",))]
    samples = {ds.records[i].meta["id"]: ds[i] for i in range(len(ds))}
    assert set(samples) == {"n0001", "n0002", "c0001"}
    two = samples["n0001"]
    assert two["image"].shape == (1, 128, 128) and two["labels"].tolist() == [1.0]
    want = np.asarray([[100, 200, 150, 260], [600, 400, 640, 432]], np.float32) / 8  # 1024 px -> 128 px
    np.testing.assert_allclose(two["boxes"].numpy(), want)
    assert two["box_labels"].tolist() == [0, 0]
    np.testing.assert_allclose(samples["n0002"]["boxes"].numpy(), [[512, 256, 576, 320]])
    neg = samples["c0001"]
    assert neg["boxes"].shape == (0, 4) and neg["box_labels"].shape == (0,) and neg["labels"].tolist() == [0.0]
    assert neg["meta"]["patient_id"] is None and neg["meta"]["file"] == "c0001.mha"
    assert all(r.box_space == (1024, 1024) for r in ds.records)


def test_root_may_be_the_proccessed_data_folder(root: Path) -> None:
    ds = build_dataset("node21", root / DATA, "all")
    assert sorted(r.meta["id"] for r in ds.records) == ["c0001", "n0001", "n0002"]


def test_hashed_split_by_image(tmp_path: Path) -> None:
    rows = [(f"n{i:04d}.mha", 10, 10, 20, 20, 1) for i in range(150)] + [
        (f"c{i:04d}.mha", 0, 0, 0, 0, 0) for i in range(150)
    ]
    write_layout(tmp_path, rows)
    parts = {s: build_node21(tmp_path, s, missing="keep") for s in ("all", "train", "val", "test")}
    ids = {s: {r.meta["id"] for r in ds.records} for s, ds in parts.items()}
    assert len(ids["all"]) == 300 and ids["train"] | ids["val"] | ids["test"] == ids["all"]
    assert not (ids["train"] & ids["val"] or ids["train"] & ids["test"] or ids["val"] & ids["test"])
    assert 0.55 < len(ids["train"]) / 300 < 0.85 and ids["val"] and ids["test"]
    assert {r.meta["split"] for r in parts["val"].records} == {"val"}
    other = {r.meta["id"] for r in build_node21(tmp_path, "train", missing="keep", seed=1).records}
    assert other != ids["train"]
    no_holdout = build_node21(tmp_path, "all", missing="keep", val_fraction=0.0, test_fraction=0.0)
    assert {r.meta["split"] for r in no_holdout.records} == {"train"}


def _fake_simpleitk(monkeypatch: pytest.MonkeyPatch, arrays: dict[str, np.ndarray]) -> list[str]:
    """Install a stand-in SimpleITK whose ReadImage returns ``arrays[file name]``; returns the names read."""
    calls: list[str] = []

    def read_image(path: str) -> str:
        calls.append(Path(path).name)
        if Path(path).name not in arrays:
            raise RuntimeError("Exception thrown in SimpleITK ImageFileReader_Execute\nUnable to open file")
        return Path(path).name

    fake = types.SimpleNamespace(ReadImage=read_image, GetArrayFromImage=lambda name: arrays[name])
    monkeypatch.setitem(sys.modules, "SimpleITK", fake)
    return calls


def test_mha_is_converted_once_into_the_png_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_layout(tmp_path, ROWS[:3], {"n0001": 128})
    (folder / "images" / "n0002.mha").write_bytes(b"ObjectType = Image\n")
    raw = np.arange(32 * 32, dtype=np.int16).reshape(1, 32, 32) - 300  # SimpleITK gives (1, H, W) for 2-D slices
    calls = _fake_simpleitk(monkeypatch, {"n0002.mha": raw})
    ds = build_dataset("node21", tmp_path, "all")
    converted = next(r for r in ds.records if r.meta["id"] == "n0002")
    assert converted.image == tmp_path / "png16" / "n0002.png" and calls == ["n0002.mha"]
    pixels = read_xray(converted.image).pixels
    want = (raw[0] - raw.min()) / (raw.max() - raw.min())
    np.testing.assert_allclose(pixels, want, atol=1 / 65535)
    build_dataset("node21", tmp_path, "all")
    assert calls == ["n0002.mha"]  # the cache is fresh: not converted again
    bad = write_layout(tmp_path / "other", [("n0009.mha", 1, 1, 5, 5, 1)])
    (bad / "images" / "n0009.mha").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="n0009.mha: unreadable MetaImage .*Unable to open file"):
        build_dataset("node21", tmp_path / "other", "all")


def test_mha_without_simpleitk_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_layout(tmp_path, ROWS[2:3])
    (folder / "images" / "n0002.mha").write_bytes(b"ObjectType = Image\n")
    monkeypatch.setitem(sys.modules, "SimpleITK", None)  # import fails as when it is not installed
    with pytest.raises(DatasetError, match=r"n0002.mha: .*pip install 'xrayfm\[node21\]'"):
        build_dataset("node21", tmp_path, "all")
    kept = build_dataset("node21", tmp_path, "all", missing="keep")  # labels only: nothing read
    assert kept.records[0].image == tmp_path / "png16" / "n0002.png"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (("n0003.mha", 1, 1, 5, 5, 2), "row 6 \\(n0003.mha\\): label 2.*label of 0 or 1"),
        (("n0003.mha", 1, 1, 0, 5, 1), "row 6 \\(n0003.mha\\).*positive width and height"),
        (("n0003.mha", -4, 1, 5, 5, 1), "row 6 \\(n0003.mha\\).*x, y >= 0"),
        (("c0003.mha", 1, 1, 5, 5, 0), "row 6 \\(c0003.mha\\).*label 0 \\(no nodule\\) needs a zero"),
        (("n0001.mha", 0, 0, 0, 0, 0), "row 6: n0001.mha has both a label-0 row and nodule boxes"),
        (("n0001.png", 9, 9, 5, 5, 1), "row 6: 'n0001.png' and 'n0001.mha' name the same image id"),
    ],
)
def test_bad_rows_are_named(root: Path, row: tuple, message: str) -> None:
    write_layout(root, [*ROWS, row])
    with pytest.raises(DatasetError, match=message):
        build_dataset("node21", root, "all", missing="skip")


def test_errors(tmp_path: Path, root: Path) -> None:
    with pytest.raises(DatasetError, match="no NODE21 metadata.csv found"):
        build_dataset("node21", tmp_path / DATA / "images")
    with pytest.raises(UnknownNameError, match="no option"):
        build_dataset("node21", root, labels="nodule")
    (root / DATA / "images" / "n0002.png").unlink()
    with pytest.raises(DatasetError, match="1 of 3 labelled images are missing"):
        build_dataset("node21", root, "all")
    assert len(build_dataset("node21", root, "all", missing="skip")) == 2
    pd.DataFrame(ROWS, columns=COLUMNS).drop(columns="label").to_csv(root / DATA / "metadata.csv", index=False)
    with pytest.raises(DatasetError, match=r"missing column\(s\) \['label'\]"):
        build_dataset("node21", root, "all")
