"""The synthetic phantom: determinism, label/pixel/mask/box consistency, every on-disk layout
read back by its adapter, DICOM round trip, and learnability (a tiny CNN beats chance)."""

from __future__ import annotations

import ast
import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from xrayfm import XrayfmError
from xrayfm.data import build_dataset, list_datasets
from xrayfm.data.datasets import nih_cxr14
from xrayfm.data.datasets.shenzhen_montgomery import parse_clinical_reading
from xrayfm.data.phantom import BOX_CLASSES, FINDINGS, PhantomConfig, generate_phantom
from xrayfm.data.phantom_io import NIH_BBOX_HEADER, NIH_HEADER, write_phantom_dataset
from xrayfm.io import read_xray

SIZE, N = 64, 16
LESION_FINDINGS = ("nodule", "effusion", "pneumothorax", "consolidation")


def _cases(n: int = N, seed: int = 0, size: int = SIZE, **kw: object) -> list:
    cfg = PhantomConfig(size=size, **kw)  # type: ignore[arg-type]
    return [generate_phantom(i, seed, cfg) for i in range(n)]


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(r):
        p = np.pad(out, 1)
        out = p[1:-1, 1:-1] | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]
    return out


def _bounds(mask: np.ndarray) -> tuple[float, float, float, float]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


def _registered(name: str) -> None:
    """Every phantom layout has its adapter: a missing one fails, it is never skipped."""
    assert name in {i.name for i in list_datasets()}, f"dataset adapter {name!r} is not registered"


def _auroc(scores: np.ndarray, y: np.ndarray) -> float:
    """Mann-Whitney AUROC (ties broken by order; scores are continuous here)."""
    ranks = np.argsort(np.argsort(scores)) + 1.0
    pos, neg = y.sum(), len(y) - y.sum()
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


# ---------------------------------------------------------------------------- generator


def test_same_seed_same_bytes_other_seed_differs() -> None:
    a, b = generate_phantom(5, 3), generate_phantom(5, 3)
    assert a.image.dtype == np.float32 and a.image.shape == (256, 256)
    assert a.image.tobytes() == b.image.tobytes()
    assert all(a.anatomy[k].tobytes() == b.anatomy[k].tobytes() for k in a.anatomy)
    assert [(x.label, x.box) for x in a.lesions] == [(x.label, x.box) for x in b.lesions]
    assert (a.labels == b.labels).all() and (a.patient_id, a.view, a.sex) == (b.patient_id, b.view, b.sex)
    assert generate_phantom(5, 4).image.tobytes() != a.image.tobytes()
    assert generate_phantom(6, 3).image.tobytes() != a.image.tobytes()


def test_images_are_in_unit_range_and_look_like_a_chest() -> None:
    for case in _cases(8, size=128):
        img, lungs, heart = case.image, case.anatomy["lungs"], case.anatomy["heart"]
        assert 0.0 <= img.min() and img.max() <= 1.0
        normal = lungs & ~_dilate(case.lesion_mask, 3)
        assert img[normal].mean() + 0.15 < img[heart].mean()  # lungs dark, heart bright
        assert img[:, :3].mean() < img[normal].mean()  # air outside the body darkest
        # spine: the midline column is brighter than the lungs at mid-lung height
        rows = np.flatnonzero(lungs.any(1))
        mid = rows[len(rows) // 2]
        assert img[mid, 56:72].mean() > img[mid][lungs[mid]].mean() + 0.1


def test_patients_share_anatomy_across_follow_ups() -> None:
    a, b, c = _cases(3, size=64)
    assert a.patient_id == b.patient_id != c.patient_id and (a.followup, b.followup) == (0, 1)
    assert a.sex == b.sex and b.age == a.age + 1


def test_masks_and_boxes_are_consistent() -> None:
    for case in _cases(40, size=96):
        lungs, heart = case.anatomy["lungs"], case.anatomy["heart"]
        assert not (lungs & heart).any()
        assert (case.anatomy["right_lung"] | case.anatomy["left_lung"] == lungs).all()
        w = lungs.shape[1]
        # the patient's right lung is on the image's left (PA/AP display convention)
        right_x = np.argwhere(case.anatomy["right_lung"])[:, 1].mean()
        assert right_x < w / 2 < np.argwhere(case.anatomy["left_lung"])[:, 1].mean()
        for les in case.lesions:
            assert les.mask.any() and not (les.mask & ~lungs).any(), les.label
            assert les.box == _bounds(les.mask)
            assert 0 <= les.box[0] < les.box[2] <= w and 0 <= les.box[1] < les.box[3] <= w
        assert (case.boxes.shape[0] == len(case.box_labels)) and set(case.box_labels) <= set(range(len(BOX_CLASSES)))
        for f in LESION_FINDINGS:
            has = any(les.label == f for les in case.lesions)
            assert bool(case.labels[FINDINGS.index(f)]) == has, (case.index, f)


@pytest.mark.parametrize("finding", FINDINGS)
def test_each_finding_changes_its_region_and_only_there(finding: str) -> None:
    drawn = 0
    for i in range(6):
        base = generate_phantom(i, 1, PhantomConfig.only(size=128))
        case = generate_phantom(i, 1, PhantomConfig.only(finding, size=128))
        assert base.labels.sum() == 0 and base.lesions == []
        expected = np.asarray([f == finding for f in FINDINGS], np.float32)
        if not (case.labels == expected).all():  # the finding may not fit (e.g. no room for a mass)
            assert case.labels.sum() == 0 and case.image.tobytes() == base.image.tobytes()
            continue
        drawn += 1
        diff = case.image - base.image
        if finding == "cardiomegaly":
            assert case.ctr > 0.5 > base.ctr
            grown = case.anatomy["heart"] & ~base.anatomy["heart"]
            assert grown.sum() > 0.2 * base.anatomy["heart"].sum()
            assert diff[grown].mean() > 0.1  # lung replaced by heart: brighter
            region = _dilate(case.anatomy["heart"] | base.anatomy["heart"], 4)
        else:
            assert len(case.lesions) >= 1 and {les.label for les in case.lesions} == {finding}
            mask = case.lesion_mask
            sign = -1.0 if finding == "pneumothorax" else 1.0  # air rim darker, the rest denser
            assert sign * diff[mask].mean() > 0.03, (i, finding, diff[mask].mean())
            sides = [case.anatomy[f"{les.attrs['side']}_lung"] for les in case.lesions]
            region = _dilate(np.logical_or.reduce([*sides, mask]), 4)
        assert np.abs(diff[~region]).max() == 0.0, f"{finding} changed pixels outside its region"
    assert drawn >= 5


def test_cardiothoracic_ratio_from_masks() -> None:
    def measured(case) -> float:  # noqa: ANN001
        heart, lungs = case.anatomy["heart"], case.anatomy["lungs"]
        hc, lc = np.flatnonzero(heart.any(0)), np.flatnonzero(lungs.any(0))
        return (hc[-1] - hc[0] + 1) / (lc[-1] - lc[0] + 1)

    big = [measured(generate_phantom(i, 2, PhantomConfig.only("cardiomegaly", size=128))) for i in range(30)]
    normal = [measured(generate_phantom(i, 2, PhantomConfig.only(size=128))) for i in range(30)]
    assert min(big) > 0.5 and np.mean(normal) < 0.47 and np.mean(np.asarray(normal) < 0.5) >= 0.9


def test_nodule_sizes_include_masses() -> None:
    cfg = PhantomConfig.only("nodule", size=64)
    lesions = [les for i in range(60) for les in generate_phantom(i, 0, cfg).lesions]
    mass = [les.attrs["mass"] for les in lesions]
    assert any(mass) and not all(mass)
    assert all((les.attrs["diameter_mm"] > 30) == les.attrs["mass"] for les in lesions)


def test_config_is_validated() -> None:
    with pytest.raises(XrayfmError, match="unknown finding"):
        PhantomConfig(prevalence={"tumour": 0.5})
    with pytest.raises(XrayfmError, match=r"\[0, 1\]"):
        PhantomConfig(prevalence={"nodule": 2.0})
    with pytest.raises(XrayfmError, match="unknown finding"):
        PhantomConfig.only("nodul")
    with pytest.raises(XrayfmError, match="at least 32"):
        PhantomConfig(size=8)
    with pytest.raises(XrayfmError, match=">= 0"):
        generate_phantom(-1)


def test_phantom_modules_import_one_way_through_public_names() -> None:
    """anatomy <- findings <- phantom <- phantom_io: each imports only lower layers, and no private names."""
    import xrayfm.data.phantom_anatomy as anatomy

    layers = ["phantom_anatomy", "phantom_findings", "phantom", "phantom_io"]
    for level, module in enumerate(layers):
        tree = ast.parse((Path(anatomy.__file__).parent / f"{module}.py").read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("xrayfm.data.phantom"):
                imported = node.module.rsplit(".", 1)[1]
                assert imported in layers[:level], f"{module} imports {imported}"
                assert not [a.name for a in node.names if a.name.startswith("_")], f"{module}: private import"
            elif isinstance(node, ast.Import):
                assert not [a.name for a in node.names if a.name.startswith("xrayfm.data.phantom")], module


# ---------------------------------------------------------------------------- layouts


@pytest.fixture(scope="module")
def cases() -> list:
    return _cases()


def _write(tmp_path: Path, layout: str, **kw: object) -> Path:
    return write_phantom_dataset(tmp_path / layout, N, 0, layout=layout, size=SIZE, **kw)  # type: ignore[arg-type]


def test_same_seed_writes_identical_files(tmp_path: Path) -> None:
    a = write_phantom_dataset(tmp_path / "a", 6, 7, size=48)
    b = write_phantom_dataset(tmp_path / "b", 6, 7, size=48)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    c = write_phantom_dataset(tmp_path / "c", 6, 8, size=48)
    assert (a / "images" / "phantom_000000.png").read_bytes() != (c / "images" / "phantom_000000.png").read_bytes()


def test_native_layout_read_back(tmp_path: Path, cases: list) -> None:
    root = _write(tmp_path, "native")
    df = pd.read_csv(root / "labels.csv")
    assert list(df.columns) == ["image", "split", "patient_id", "view", "sex", *FINDINGS,
                                "lungs_mask", "heart_mask", "lesions_mask"]  # fmt: skip
    assert "synthetic" in (root / "README.md").read_text().lower()
    ds = build_dataset("phantom", root, "all")
    assert ds.name == "phantom" and len(ds) == N
    assert [t.classes for t in ds.tasks] == [FINDINGS, ("lungs", "heart", "lesions"), BOX_CLASSES]
    for i, (case, rec) in enumerate(zip(cases, ds.records)):
        s = ds[i]
        np.testing.assert_allclose(s["image"][0].numpy(), case.image, atol=0.5 / 255 + 1e-6)
        np.testing.assert_array_equal(s["labels"].numpy(), case.labels)
        np.testing.assert_array_equal(s["mask"][0].numpy(), case.anatomy["lungs"])
        np.testing.assert_array_equal(s["mask"][1].numpy(), case.anatomy["heart"])
        np.testing.assert_array_equal(s["mask"][2].numpy(), case.lesion_mask)
        np.testing.assert_array_equal(s["boxes"].numpy(), case.boxes)  # empty (0, 4) when no lesion
        np.testing.assert_array_equal(s["box_labels"].numpy(), case.box_labels)
        assert rec.meta["patient_id"] == case.patient_id
        mem = case.to_sample()  # in memory = what the adapter reads from disk (up to 8-bit rounding)
        for key in ("labels", "mask", "boxes", "box_labels"):
            assert torch.equal(mem[key], s[key]), key
    parts = {
        p: {r.meta["patient_id"] for r in build_dataset("phantom", root, p).records} for p in ("train", "val", "test")
    }
    assert sum(len(build_dataset("phantom", root, p)) for p in parts) == N
    assert not (parts["train"] & parts["test"]) and not (parts["train"] & parts["val"])
    csv_ds = build_dataset("csv", root, "all", mask_columns=("lungs_mask", "heart_mask", "lesions_mask"))
    assert csv_ds.tasks[0].classes == FINDINGS and len(csv_ds) == N
    np.testing.assert_array_equal(csv_ds[3]["mask"].numpy(), ds[3]["mask"].numpy())


def test_rewrite_replaces_an_earlier_phantom_but_not_other_folders(tmp_path: Path) -> None:
    root = write_phantom_dataset(tmp_path / "p", 8, 0, size=48)
    write_phantom_dataset(root, 3, 0, size=48, layout="coco")
    assert not (root / "labels.csv").exists() and len(list((root / "images").iterdir())) == 3
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(XrayfmError, match="not an empty folder"):
        write_phantom_dataset(tmp_path / "mine", 2, 0, size=48)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(XrayfmError, match="unknown phantom layout"):
        write_phantom_dataset(tmp_path / "x", 2, layout="mimic")
    with pytest.raises(XrayfmError, match="only available for the native"):
        write_phantom_dataset(tmp_path / "x", 2, layout="coco", dicom=True)


def test_nih_layout_files_and_adapter(tmp_path: Path, cases: list) -> None:
    root = _write(tmp_path, "nih_cxr14")
    entry_lines = (root / "Data_Entry_2017_v2020.csv").read_text().splitlines()
    assert entry_lines[0] == NIH_HEADER and len(entry_lines) == N + 1
    assert all(len(line.split(",")) == 11 for line in entry_lines)  # 9 names, 11 fields (bracket commas)
    assert (root / "BBox_List_2017.csv").read_text().splitlines()[0] == NIH_BBOX_HEADER
    listed = (root / "train_val_list.txt").read_text().split() + (root / "test_list.txt").read_text().split()
    assert sorted(listed) == sorted(p.name for p in (root / "images").iterdir())
    ds = build_dataset("nih_cxr14", root, "all")
    assert len(ds) == N and ds.task_for("boxes").classes == nih_cxr14.BOX_CLASSES
    by_name = {f"{c.patient + 1:08d}_{c.followup:03d}": c for c in cases}
    n_boxed = 0
    for i, rec in enumerate(ds.records):
        case = by_name[rec.meta["id"]]
        nih = set(np.asarray(nih_cxr14.FINDINGS)[rec.labels > 0])
        nodules = {"Mass" if les.attrs["mass"] else "Nodule" for les in case.lesions if les.label == "nodule"}
        assert nih - {"Nodule", "Mass"} == {f.capitalize() for f in case.findings if f != "nodule"}
        assert nih & {"Nodule", "Mass"} == nodules
        if rec.boxes is not None:  # scaled from 1024 space back to the stored 64 px
            n_boxed += 1
            s = ds[i]
            kept = [les for les in case.lesions if les.label != "consolidation"]
            pairs = zip(s["box_labels"].tolist(), s["boxes"].numpy())
            got = {(nih_cxr14.BOX_CLASSES[k], tuple(np.round(b, 3))) for k, b in pairs}
            for les in kept:
                name = "Mass" if les.attrs.get("mass") else les.label.capitalize()
                assert (name, tuple(np.round(np.asarray(les.box, np.float32), 3))) in got
    assert n_boxed >= 4
    test_pids = {r.meta["patient_id"] for r in build_dataset("nih_cxr14", root, "test").records}
    train_pids = {r.meta["patient_id"] for r in build_dataset("nih_cxr14", root, "train").records}
    assert not test_pids & train_pids


def test_nih_headers_match_the_real_files(label_files: Path) -> None:
    with gzip.open(label_files / "Data_Entry_2017_v2020.csv.gz", "rt") as fh:
        assert fh.readline().rstrip("\n") == NIH_HEADER
    with gzip.open(label_files / "BBox_List_2017.csv.gz", "rt") as fh:
        assert fh.readline().rstrip("\n") == NIH_BBOX_HEADER


def test_shenzhen_layout(tmp_path: Path) -> None:
    root = _write(tmp_path, "shenzhen")
    cases = _cases(images_per_patient=1, ap_fraction=0.0)
    for i, case in enumerate(cases):
        stem = f"CHNCXR_{i + 1:04d}_{int(case.labels.any())}"
        assert (root / "CXR_png" / f"{stem}.png").is_file()
        mask = np.asarray(read_xray(root / "mask" / f"{stem}_mask.png").pixels)
        np.testing.assert_array_equal(mask, case.anatomy["lungs"].astype(np.float32))  # 0/255 -> 0/1
        reading = parse_clinical_reading((root / "ClinicalReadings" / f"{stem}.txt").read_text())
        assert reading["sex"] == case.sex and reading["age"] == case.age
        assert (reading["finding"] == "normal") == (not case.labels.any())
    _registered("shenzhen")
    ds = build_dataset("shenzhen", root, "all")
    assert len(ds) == N and ds[0]["mask"].shape == (1, SIZE, SIZE)
    assert sorted(float(r.labels[0]) for r in ds.records) == sorted(float(c.labels.any()) for c in cases)


def test_montgomery_layout_puts_the_patients_left_lung_on_the_image_right(tmp_path: Path) -> None:
    root = _write(tmp_path, "montgomery")
    cases = _cases(images_per_patient=1, ap_fraction=0.0)
    for i, case in enumerate(cases):
        stem = f"MCUCXR_{i + 1:04d}_{int(case.labels.any())}"
        left = np.asarray(read_xray(root / "ManualMask" / "leftMask" / f"{stem}.png").pixels) > 0.5
        right = np.asarray(read_xray(root / "ManualMask" / "rightMask" / f"{stem}.png").pixels) > 0.5
        np.testing.assert_array_equal(left, case.anatomy["left_lung"])
        assert np.argwhere(left)[:, 1].mean() > SIZE / 2 > np.argwhere(right)[:, 1].mean()
        text = (root / "ClinicalReadings" / f"{stem}.txt").read_text()
        assert text.startswith(f"Patient's Sex: {case.sex}\nPatient's Age: {case.age:03d}Y\n")
    _registered("montgomery")
    ds = build_dataset("montgomery", root, "all", lungs="separate")
    s = ds[0]
    assert len(ds) == N and s["mask"].shape == (2, SIZE, SIZE)
    assert np.argwhere(s["mask"][0].numpy())[:, 1].mean() > SIZE / 2  # channel 0 = left_lung


def test_coco_layout(tmp_path: Path, cases: list) -> None:
    root = _write(tmp_path, "coco")
    data = json.loads((root / "annotations.json").read_text())
    assert [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])] == list(BOX_CLASSES)
    assert len(data["images"]) == N and not (root / "labels.csv").exists()
    for case in cases:
        anns = [a for a in data["annotations"] if a["image_id"] == case.index + 1]
        assert [(BOX_CLASSES[a["category_id"] - 1], a["bbox"]) for a in anns] == [
            (les.label, [les.box[0], les.box[1], les.box[2] - les.box[0], les.box[3] - les.box[1]])
            for les in case.lesions
        ]
        assert all(a["iscrowd"] == 0 and a["area"] == les.mask.sum() for a, les in zip(anns, case.lesions))
    _registered("coco")
    ds = build_dataset("coco", root, "all")
    assert len(ds) == N and ds.tasks[0].classes == BOX_CLASSES
    for i, rec in enumerate(ds.records):
        case = cases[rec.meta["coco_id"] - 1]
        np.testing.assert_allclose(ds[i]["boxes"].numpy(), case.boxes)


def test_dicom_round_trip_inverts_monochrome1(tmp_path: Path, cases: list) -> None:
    root = _write(tmp_path, "native", dicom=True)
    pngs = _write(tmp_path / "png", "native")
    seen = set()
    for case in cases[:6]:
        img = read_xray(root / "images" / f"{case.id}.dcm")
        png = read_xray(pngs / "images" / f"{case.id}.png").pixels
        seen.add(img.meta["inverted"])
        assert img.meta["inverted"] == bool(case.index % 2) and img.meta["BitsStored"] == 12
        assert np.corrcoef(img.pixels.ravel(), png.ravel())[0, 1] > 0.99
    assert seen == {True, False}
    ds = build_dataset("phantom", root, "all")
    assert ds[1]["image"].shape == (1, SIZE, SIZE) and ds[1]["meta"]["image_inverted"] is True


def test_sixteen_bit_png(tmp_path: Path, cases: list) -> None:
    root = _write(tmp_path, "native", bits=16)
    img = read_xray(root / "images" / f"{cases[0].id}.png")
    np.testing.assert_allclose(img.pixels, cases[0].image, atol=0.5 / 65535 + 1e-6)


# ---------------------------------------------------------------------------- learnability


def test_tiny_cnn_learns_the_findings() -> None:
    """Labels are learnable from pixels: 400 training images at 64 px, a 4-layer CNN, 8 epochs."""
    cfg = PhantomConfig(size=64)

    def make(seed: int, n: int) -> tuple[torch.Tensor, np.ndarray]:
        cs = [generate_phantom(i, seed, cfg) for i in range(n)]
        return torch.from_numpy(np.stack([c.image for c in cs])[:, None]), np.stack([c.labels for c in cs])

    (x, y), (xt, yt) = make(1, 400), make(2, 200)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def block(i: int, o: int) -> list[torch.nn.Module]:
        return [torch.nn.Conv2d(i, o, 3, padding=1), torch.nn.BatchNorm2d(o), torch.nn.ReLU()]

    net = torch.nn.Sequential(
        *block(1, 16), torch.nn.MaxPool2d(2), *block(16, 32), torch.nn.MaxPool2d(2), *block(32, 32),
        torch.nn.MaxPool2d(2), *block(32, 64), torch.nn.AdaptiveMaxPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, 5),
    )  # fmt: skip
    opt = torch.optim.AdamW(net.parameters(), 3e-3, weight_decay=1e-4)
    yy = torch.from_numpy(y)
    try:
        for _ in range(8):
            net.train()
            for idx in torch.randperm(len(x)).split(32):
                loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x[idx]), yy[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        net.eval()
        with torch.no_grad():
            scores = net(xt).numpy()
    finally:
        torch.set_num_threads(threads)
    auc = {f: _auroc(scores[:, k], yt[:, k]) for k, f in enumerate(FINDINGS)}
    assert np.mean(list(auc.values())) > 0.75, auc
    assert min(auc[f] for f in ("effusion", "pneumothorax", "cardiomegaly")) > 0.8, auc
