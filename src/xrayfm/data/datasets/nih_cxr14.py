"""NIH ChestX-ray14 (Wang et al., CVPR 2017).

Reads the release as published by the NIH Clinical Center: ``Data_Entry_2017*.csv`` (the
``Finding Labels`` column, ``|``-separated), the official ``train_val_list.txt`` /
``test_list.txt``, and ``BBox_List_2017.csv`` (x, y, w, h in the 1024-px space of the released
PNGs; its header carries empty trailing columns).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xrayfm.data.base import Record, XrayDataset
from xrayfm.data.registry import register_dataset
from xrayfm.data.splits import holdout_fractions, split_groups
from xrayfm.data.tables import find_first, label_file_name, read_table, require_images, select_split
from xrayfm.errors import DatasetError
from xrayfm.tasks import TaskSpec

FINDINGS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)  # fmt: skip
BOX_CLASSES: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltrate", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
)  # fmt: skip
BOX_SPACE = (1024, 1024)


def _index_images(root: Path) -> dict[str, Path]:
    """Map file name -> path over ``images/`` and the ``images_001/images`` ... archive folders."""
    index: dict[str, Path] = {}
    for folder in sorted(root.glob("images*")):
        if folder.is_dir():
            for p in folder.rglob("*.png"):
                index.setdefault(p.name, p)
    return index


def _read_boxes(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    df = read_table(path, required=["Image Index", "Finding Label"])
    coords = df.iloc[:, 2:6].to_numpy(dtype=np.float64)
    if coords.shape[1] != 4 or np.isnan(coords).any():
        raise DatasetError(f"{path}: expected four numeric box columns x, y, w, h after 'Finding Label'")
    out: dict[str, tuple[list, list]] = {}
    for name, label, (x, y, w, h) in zip(df["Image Index"], df["Finding Label"], coords):
        if label not in BOX_CLASSES:
            raise DatasetError(f"{path}: unknown box label {label!r} for {name}")
        boxes, labels = out.setdefault(name, ([], []))
        boxes.append((x, y, x + w, y + h))
        labels.append(BOX_CLASSES.index(label))
    return {k: (np.asarray(b, np.float32).reshape(-1, 4), np.asarray(lab, np.int64)) for k, (b, lab) in out.items()}


@register_dataset(
    "nih_cxr14",
    description="NIH ChestX-ray14: 14 findings (multi-label), official split, 984 boxes on 880 images",
    layout="""
    ROOT/Data_Entry_2017.csv | Data_Entry_2017_v2020.csv (.gz allowed)
    ROOT/train_val_list.txt, ROOT/test_list.txt   (official split; optional: else by patient hash)
    ROOT/BBox_List_2017.csv                       (optional: boxes)
    ROOT/images/*.png  or  ROOT/images_001/images/*.png ... images_012/images/*.png
    """,
    tasks=("multilabel", "detection"),
)
def build_nih_cxr14(
    root: Path,
    split: str,
    *,
    include_no_finding: bool = False,
    boxes: bool = True,
    box_images_only: bool = False,
    views: tuple[str, ...] = ("PA", "AP"),
    val_fraction: float = 0.1,
    seed: int = 0,
    missing: str = "error",
) -> XrayDataset:
    """Build NIH ChestX-ray14.

    Args:
        root: Dataset root (layout above).
        split: ``train`` / ``val`` come from the official train_val list, split by patient
            (``val_fraction``, ``seed``); ``test`` is the official test list.
        include_no_finding: Add ``No Finding`` as a 15th label.
        boxes: Attach BBox_List_2017 boxes where present (others carry no box target).
        box_images_only: Keep only images with boxes (weak-localization evaluation).
        views: View positions to keep.
        val_fraction: Share of train_val patients held out as ``val``.
        seed: Seed of the patient-level train/val split.
        missing: Absent images: ``error``, ``skip`` them, or ``keep`` (labels only, no check).
    """
    entry = find_first(
        root,
        ["Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv.gz", "Data_Entry_2017_v2020.csv.gz"],
        "Data_Entry_2017 label file",
    )
    df = read_table(entry, required=["Image Index", "Finding Labels", "Patient ID", "View Position"])
    df = df[df["View Position"].isin(views)]
    classes = FINDINGS + (("No Finding",) if include_no_finding else ())
    official_test: set[str] | None = None
    if (root / "test_list.txt").is_file():
        official_test = set((root / "test_list.txt").read_text().split())
    box_table = {}
    if boxes and (root / "BBox_List_2017.csv").is_file():
        box_table = _read_boxes(root / "BBox_List_2017.csv")
    index = _index_images(root)
    images_dir = root / "images"
    findings = "|" + df["Finding Labels"].astype(str) + "|"
    tokens = {t for combo in df["Finding Labels"].astype(str).unique() for t in combo.split("|")}
    unknown = tokens - set(FINDINGS) - {"No Finding"}
    if unknown:
        raise DatasetError(f"{entry}: unknown finding(s) {sorted(unknown)} in 'Finding Labels'")
    labels = np.stack([findings.str.contains(f"|{c}|", regex=False).to_numpy() for c in classes], 1)
    labels = labels.astype(np.float32)
    pids = [f"{int(p):05d}" for p in df["Patient ID"]]
    if official_test is not None:
        trainval = split_groups(pids, seed=seed, fractions=holdout_fractions(val_fraction))
        parts = ["test" if n in official_test else t for n, t in zip(df["Image Index"], trainval)]
    else:
        parts = split_groups(pids, seed=seed)
    where, lines = label_file_name(entry, root), (df.index + 2).tolist()
    records = []
    for i, (name, view) in enumerate(zip(df["Image Index"], df["View Position"])):
        rec = Record(
            image=index.get(name) or images_dir / name,
            labels=labels[i],
            meta={"id": name[:-4], "patient_id": pids[i], "view": view, "split": parts[i]},
            origin=f"{where} row {lines[i]}",
        )
        if name in box_table:
            rec.boxes, rec.box_labels = box_table[name]
            rec.box_space = BOX_SPACE
        records.append(rec)
    if box_images_only:
        records = [r for r in records if r.boxes is not None]
    records = require_images(select_split(records, split), "nih_cxr14", missing=missing)
    tasks = [TaskSpec("findings", "multilabel", classes)]
    if box_table:
        tasks.append(TaskSpec("lesions", "detection", BOX_CLASSES))
    return XrayDataset(records, tasks, name="nih_cxr14", root=root, split=split)
