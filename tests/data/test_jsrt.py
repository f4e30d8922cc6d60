"""JSRT: the raw 2048x2048 12-bit release (+ SCR GIF masks) and the jsrt-segmentation PNG layout."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from xrayfm import DatasetError, UnknownNameError
from xrayfm.data import build_dataset
from xrayfm.data.datasets.jsrt import RAW_BYTES, read_jsrt_raw
from xrayfm.io.writers import write_mask_png, write_png

RAW_IDS = ["JPCLN001", "JPCLN002", "JPCNN001"]


def _raw(seed: int) -> np.ndarray:
    """A 12-bit raw image: 0 (white, dense) in a top-left square, 4095 (black) around it."""
    raw = np.full((2048, 2048), 4095, np.uint16)
    raw[:512, :512] = 0
    raw[1024:1026, 1024:1026] = [[0, 4095], [4095, 4095]]  # one 2x2 cell averages to 0.25
    raw[1500, 1500] = 1000 + seed
    return raw


def _gif(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8)).quantize(2).save(path)  # palette GIF, white may be index 0


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("jsrt_raw")
    (root / "All247images").mkdir()
    for i, image_id in enumerate(RAW_IDS):
        _raw(i).astype(">u2").tofile(root / "All247images" / f"{image_id}.IMG")
    lung = np.zeros((1024, 1024), np.uint8)
    lung[100:300, 100:200] = 255
    heart = np.zeros((1024, 1024), np.uint8)
    heart[500:600, 400:600] = 255
    for image_id in RAW_IDS:
        fold = "fold1" if int(image_id[-1]) % 2 else "fold2"  # SCR splits the masks over two folds
        masks = root / "scr" / fold / "masks"
        _gif(masks / "left lung" / f"{image_id}.gif", lung)
        _gif(masks / "right lung" / f"{image_id}.gif", lung[:, ::-1])
        _gif(masks / "heart" / f"{image_id}.gif", heart)
    return root


def test_raw_reader_polarity_and_size_check(raw_root: Path, tmp_path: Path) -> None:
    assert (raw_root / "All247images" / "JPCLN001.IMG").stat().st_size == RAW_BYTES == 2048 * 2048 * 2
    unit = read_jsrt_raw(raw_root / "All247images" / "JPCLN001.IMG")
    assert unit.shape == (2048, 2048) and unit[0, 0] == 1.0 and unit[-1, -1] == 0.0  # raw 0 = white
    short = tmp_path / "JPCLN009.IMG"
    short.write_bytes(b"\0" * (RAW_BYTES - 2))
    with pytest.raises(DatasetError, match=r"JPCLN009.IMG: 8388606 bytes; a JSRT .IMG file is exactly 8388608"):
        read_jsrt_raw(short)
    big = tmp_path / "JPCLN010.IMG"
    np.full((2048, 2048), 5000, ">u2").tofile(big)
    with pytest.raises(DatasetError, match="12 bits"):
        read_jsrt_raw(big)


def test_raw_with_scr_masks_converts_at_1024(raw_root: Path) -> None:
    ds = build_dataset("jsrt", raw_root, "all", structures=("lungs", "heart"))
    assert len(ds) == 3 and ds.task_for("mask").classes == ("lungs", "heart")
    assert {r.meta["id"]: r.labels[0] for r in ds.records} == {"JPCLN001": 1, "JPCLN002": 1, "JPCNN001": 0}
    assert all(r.image.parent == raw_root / "png16" / "1024" for r in ds.records)
    s = ds[0]
    img = s["image"][0].numpy()
    assert img.shape == (1024, 1024) and img[0, 0] == 1.0 and img[-1, -1] == 0.0
    assert abs(img[512, 512] - 0.25) < 1e-4  # 2x2 mean of one white and three black pixels
    m = s["mask"].numpy()
    assert m.shape == (2, 1024, 1024) and m.max() == 1
    assert int(m[0].sum()) == 2 * 200 * 100 and int(m[1].sum()) == 100 * 200
    assert m[0, 150, 150] == 1 and m[0, 150, 1024 - 150] == 1 and m[0, 150, 512] == 0
    heart = build_dataset("jsrt", raw_root, "all", structures="heart")  # one name, as the CLI passes it
    assert heart.task_for("mask").classes == ("heart",) and int(heart[0]["mask"].sum()) == 100 * 200
    # a second build reuses the cache
    before = {r.image: r.image.stat().st_mtime_ns for r in ds.records}
    again = build_dataset("jsrt", raw_root, "all", structures=("lungs", "heart"))
    assert {r.image: r.image.stat().st_mtime_ns for r in again.records} == before
    assert not list((raw_root / "png16" / "1024").glob(".*"))  # no temporary file left


def test_raw_without_masks_keeps_2048_and_splits(raw_root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    parts = {s: build_dataset("jsrt", raw_root, s, masks=False, cache_dir=str(cache)) for s in ("train", "val", "test")}
    assert sum(len(p) for p in parts.values()) == 3 and len(parts["train"].tasks) == 1
    ds = next(p for p in parts.values() if len(p))
    assert ds.records[0].image.parent == cache / "2048"
    assert ds[0]["image"].shape == (1, 2048, 2048)
    with pytest.raises(DatasetError, match="size=1024"):
        build_dataset("jsrt", raw_root, "all", size=2048, cache_dir=str(cache))


def test_raw_errors(raw_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "jsrt"
    (root / "All247images").mkdir(parents=True)
    for image_id in RAW_IDS:
        os.symlink(raw_root / "All247images" / f"{image_id}.IMG", root / "All247images" / f"{image_id}.IMG")
    (root / "All247images" / "JPCNN002.IMG").write_bytes(b"\0" * 1000)
    with pytest.raises(DatasetError, match="JPCNN002.IMG: 1000 bytes"):
        build_dataset("jsrt", root, "all")
    (root / "All247images" / "JPCNN002.IMG").unlink()
    os.symlink(raw_root / "scr", root / "scr")
    with pytest.raises(DatasetError, match=r"masks/left clavicle/JPCLN001.gif"):
        build_dataset("jsrt", root, "all", structures=("clavicles",), cache_dir=str(tmp_path / "c"))
    with pytest.raises(UnknownNameError, match="unknown structures"):
        build_dataset("jsrt", root, "all", structures=("liver",))
    with pytest.raises(DatasetError, match="All247images"):
        build_dataset("jsrt", tmp_path / "jsrt" / "All247images", "all")


def _png_layout(root: Path, n: dict[str, list[str]]) -> None:
    rng = np.random.default_rng(0)
    for folder, ids in n.items():
        for image_id in ids:
            write_png(root / folder / "Images" / f"{image_id}.png", rng.uniform(0, 1, (32, 32)))
            lab = np.zeros((32, 32), np.uint8)
            lab[4:20, 4:12] = 1
            write_mask_png(root / folder / "Labels" / f"{image_id}_labels.png", lab)


def test_png_layout_synthetic(tmp_path: Path) -> None:
    _png_layout(tmp_path, {"Train": ["JPCLN001", "JPCNN010"], "Val": ["JPCLN050"], "Test": ["JPCNN093"]})
    ds = build_dataset("jsrt", tmp_path, "all")
    assert len(ds) == 4 and ds.task_for("mask").classes == ("lungs",)
    assert [len(build_dataset("jsrt", tmp_path, s)) for s in ("train", "val", "test")] == [2, 1, 1]
    s = ds[0]
    assert s["meta"]["id"] == "JPCLN001" and s["labels"].tolist() == [1.0] and int(s["mask"].sum()) == 16 * 8
    with pytest.raises(DatasetError, match="only has lung masks"):
        build_dataset("jsrt", tmp_path, "all", structures=("heart",))
    (tmp_path / "Val" / "Labels" / "JPCLN050_labels.png").unlink()
    with pytest.raises(DatasetError, match="no lung label .*JPCLN050_labels.png"):
        build_dataset("jsrt", tmp_path, "all")
    assert len(build_dataset("jsrt", tmp_path, "all", masks=False)) == 4
    write_png(tmp_path / "Test" / "Images" / "IMG001.png", np.zeros((32, 32)))
    with pytest.raises(DatasetError, match="not a JSRT image name"):
        build_dataset("jsrt", tmp_path, "all", masks=False)


@pytest.mark.shared_data
def test_png_layout_on_real_jsrt_images(tmp_path: Path, shared_datasets: Path) -> None:
    """Rebuild the jsrt-segmentation repo layout from real JSRT images and masks (symlinks)."""
    src = shared_datasets / "jsrt_lungs"
    table = pd.read_csv(src / "labels.csv")
    picked = pd.concat([table[table["split"] == s].head(3) for s in ("train", "val", "test")])
    folder = {"train": "Train", "val": "Val", "test": "Test"}
    for row in picked.itertuples():
        image_id = Path(row.image).stem
        for sub, name, rel in (
            ("Images", f"{image_id}.png", row.image),
            ("Labels", f"{image_id}_labels.png", row.mask),
        ):
            (tmp_path / folder[row.split] / sub).mkdir(parents=True, exist_ok=True)
            os.symlink(src / rel, tmp_path / folder[row.split] / sub / name)
    ds = build_dataset("jsrt", tmp_path, "all", allow_outside_root=True)  # linked in from the shared folder
    assert len(ds) == 9
    expected = {Path(r.image).stem: r for r in picked.itertuples()}
    for i, rec in enumerate(ds.records):
        row = expected[rec.meta["id"]]
        assert rec.meta["split"] == row.split and rec.labels[0] == row.nodule
        s = ds[i]
        assert s["image"].shape == (1, 512, 512) and s["mask"].shape == (1, 512, 512)
        assert abs(float(s["mask"].float().mean()) - row.lung_fraction) < 0.002
