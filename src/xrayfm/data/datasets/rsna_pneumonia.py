"""RSNA Pneumonia Detection Challenge (Kaggle 2018, Shih et al., Radiology: AI 2019).

Reads the stage-2 release as published on Kaggle: ``stage_2_train_labels.csv`` (``patientId,
x, y, width, height, Target``; one row per box, a ``Target`` 0 row with blank coordinates for
an image without opacity) and, optionally, ``stage_2_detailed_class_info.csv`` (``patientId,
class`` in Lung Opacity / Normal / No Lung Opacity / Not Normal, repeated once per box row).
Despite its name, ``patientId`` identifies one image (one per patient). Images are the
1024x1024 DICOMs of ``stage_2_train_images/``; boxes are in that pixel space.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from xrayfm.data.base import Record, XrayDataset
from xrayfm.data.registry import check_choice, register_dataset
from xrayfm.data.splits import holdout_fractions, split_groups
from xrayfm.data.tables import find_first, label_file_name, read_table, require_images
from xrayfm.errors import DatasetError
from xrayfm.tasks import TaskSpec

OPACITY = "Lung Opacity"
DETAILED_CLASSES: tuple[str, ...] = ("Normal", "No Lung Opacity / Not Normal", OPACITY)
LABEL_MODES = ("opacity", "detailed", "none")
BOX_SPACE = (1024, 1024)
LABEL_FILES = (
    "stage_2_train_labels.csv", "stage_2_train_labels.csv.zip", "kaggle_stage_2_train_labels.csv.zip",
    "stage_2_train_labels.csv.gz",
)  # fmt: skip
CLASS_FILES = tuple(f"stage_2_detailed_class_info.csv{ext}" for ext in ("", ".zip", ".gz"))
IMAGE_DIRS = ("stage_2_train_images", "stage_1_train_images", "train")
IMAGE_SUFFIXES = (".dcm", ".dicom", ".png", ".jpg", ".jpeg")


def _read_boxes(path: Path) -> tuple[list[str], dict[str, list[np.ndarray]]]:
    """Image ids in file order and the xyxy boxes of each (empty list = no opacity)."""
    df = read_table(path, required=["patientId", "x", "y", "width", "height", "Target"], dtype={"patientId": str})
    target = pd.to_numeric(df["Target"], errors="coerce")
    if not target.isin([0, 1]).all():
        row = int((~target.isin([0, 1])).to_numpy().argmax())
        raise DatasetError(f"{path}: row {row + 2}: Target {df['Target'].iloc[row]!r} is not 0 or 1")
    xywh = df[["x", "y", "width", "height"]].apply(pd.to_numeric, errors="coerce").to_numpy(np.float32)
    pos = (target == 1).to_numpy()
    bad = pos & ~(np.isfinite(xywh).all(1) & (xywh[:, 2] > 0) & (xywh[:, 3] > 0))
    bad |= ~pos & np.isfinite(xywh).any(1)
    if bad.any():
        row = int(bad.argmax())
        raise DatasetError(
            f"{path}: row {row + 2}: Target {int(target.iloc[row])} with coordinates {xywh[row].tolist()} "
            "(Target 1 needs a box with positive size, Target 0 blank coordinates)"
        )
    boxes: dict[str, list[np.ndarray]] = {}
    negatives: set[str] = set()
    for pid, is_pos, (x, y, w, h) in zip(df["patientId"].str.strip().tolist(), pos, xywh):
        entry = boxes.setdefault(pid, [])
        if is_pos:
            entry.append(np.asarray([x, y, x + w, y + h], np.float32))
        else:
            negatives.add(pid)
        if entry and pid in negatives:
            raise DatasetError(f"{path}: {pid} has both a Target 0 row and boxes")
    return list(boxes), boxes


def _read_classes(path: Path, boxes: dict[str, list[np.ndarray]]) -> dict[str, str]:
    df = read_table(path, required=["patientId", "class"], dtype={"patientId": str, "class": str})
    out: dict[str, str] = {}
    for i, (pid, cls) in enumerate(zip(df["patientId"].str.strip().tolist(), df["class"].str.strip().tolist())):
        if cls not in DETAILED_CLASSES:
            raise DatasetError(f"{path}: row {i + 2}: unknown class {cls!r}; expected one of {list(DETAILED_CLASSES)}")
        if out.setdefault(pid, cls) != cls:
            raise DatasetError(f"{path}: {pid} has two classes, {out[pid]!r} and {cls!r}")
        if pid in boxes and (cls == OPACITY) != bool(boxes[pid]):
            raise DatasetError(f"{path}: {pid} is {cls!r} but has {len(boxes[pid])} boxes in the label file")
    absent = [pid for pid in boxes if pid not in out]
    if absent:
        raise DatasetError(f"{path}: no class for {absent[0]} (and {len(absent) - 1} more)")
    return out


def _index_images(root: Path) -> tuple[Path, dict[str, Path]]:
    folder = next((root / d for d in IMAGE_DIRS if (root / d).is_dir()), root / IMAGE_DIRS[0])
    index: dict[str, Path] = {}
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            if p.suffix.lower() in IMAGE_SUFFIXES:
                index.setdefault(p.stem, p)
    return folder, index


@register_dataset(
    "rsna_pneumonia",
    description="RSNA Pneumonia Detection: lung-opacity boxes, binary or 3-class labels, hashed split",
    layout="""
    ROOT/stage_2_train_labels.csv (or .csv.zip as shipped)   patientId,x,y,width,height,Target
    ROOT/stage_2_detailed_class_info.csv (.zip)              patientId,class  (labels="detailed")
    ROOT/stage_2_train_images/<patientId>.dcm                (1024x1024; .png conversions allowed)
    """,
    tasks=("multilabel", "multiclass", "detection"),
)
def build_rsna_pneumonia(
    root: Path,
    split: str,
    *,
    labels: str = "opacity",
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    missing: str = "error",
) -> XrayDataset:
    """Build the RSNA Pneumonia Detection set.

    Every image was box-annotated, so an image without opacity gets an empty (0, 4) box
    target. Boxes (x, y, width, height in the 1024-px DICOMs) become xyxy with class
    ``Lung Opacity`` and are rescaled if the stored images were downscaled. The challenge's
    test labels were not released: ``train`` / ``val`` / ``test`` are a split of the labelled
    images by hashed ``patientId`` (one image per patient, so the split is patient-disjoint).

    Args:
        root: Dataset root (layout above).
        split: ``train``, ``val``, ``test`` or ``all``.
        labels: ``opacity`` (multilabel, one class: Lung Opacity, from ``Target``),
            ``detailed`` (multiclass one-hot over Normal / No Lung Opacity / Not Normal /
            Lung Opacity, from the detailed class file) or ``none`` (boxes only).
        val_fraction: Share of images held out as ``val``.
        test_fraction: Share of images held out as ``test``.
        seed: Seed of the hashed split.
        missing: Absent images: ``error``, ``skip`` them, or ``keep`` (labels only, no check).
    """
    check_choice("labels", labels, LABEL_MODES)
    fractions = holdout_fractions(val_fraction, test_fraction)  # validated before any file is read
    path = find_first(root, LABEL_FILES, "RSNA box label file")
    ids, boxes = _read_boxes(path)
    classes = None
    if labels == "detailed":
        classes = _read_classes(find_first(root, CLASS_FILES, "RSNA detailed class file"), boxes)
    parts = split_groups(ids, seed=seed, fractions=fractions)
    folder, index = _index_images(root)
    where = label_file_name(path, root)
    records = []
    for pid, part in zip(ids, parts):
        if split != "all" and part != split:
            continue
        rec = Record(
            image=index.get(pid, folder / f"{pid}.dcm"),
            boxes=np.asarray(boxes[pid], np.float32).reshape(-1, 4),
            box_labels=np.zeros(len(boxes[pid]), np.int64),
            box_space=BOX_SPACE,
            meta={"id": pid, "patient_id": pid, "split": part},
            origin=f"{where} patientId {pid!r}",
        )
        if labels == "opacity":
            rec.labels = np.asarray([float(bool(boxes[pid]))], np.float32)
        elif classes is not None:
            rec.labels = (np.asarray(DETAILED_CLASSES) == classes[pid]).astype(np.float32)
            rec.meta["class"] = classes[pid]
        records.append(rec)
    tasks = [TaskSpec("lesions", "detection", (OPACITY,))]
    if labels == "opacity":
        tasks.insert(0, TaskSpec("pneumonia", "multilabel", (OPACITY,)))
    elif labels == "detailed":
        tasks.insert(0, TaskSpec("pneumonia", "multiclass", DETAILED_CLASSES))
    records = require_images(records, "rsna_pneumonia", missing=missing)
    return XrayDataset(records, tasks, name="rsna_pneumonia", root=root, split=split)
