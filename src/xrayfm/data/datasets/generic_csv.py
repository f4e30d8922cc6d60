"""Generic CSV layout: one row per image, label columns, mask-file columns, optional boxes.csv.

This is the layout of the project's phantom sets and of the real samples in
``shared/datasets``, and the easiest way to bring one's own data::

    ROOT/labels.csv   image,[split],[patient_id],<label columns...>,[mask columns...]
    ROOT/boxes.csv    image,label,x_min,y_min,x_max,y_max   (pixels of the stored image)
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from xrayfm.data.base import Record, XrayDataset
from xrayfm.data.masks import FileMasks
from xrayfm.data.registry import register_dataset
from xrayfm.data.splits import split_groups
from xrayfm.data.tables import label_file_name, read_table, require_images, select_split
from xrayfm.errors import DatasetError
from xrayfm.tasks import CLASSIFICATION_KINDS, TaskSpec

SPLIT_COLUMNS = ("split", "official_split")
PATIENT_COLUMNS = ("patient_id", "patientid", "Patient ID", "subject_id")
SPLIT_ALIASES = {"validation": "val", "valid": "val", "validate": "val", "dev": "val"}


def _auto_label_columns(df: pd.DataFrame, exclude: set[str]) -> tuple[str, ...]:
    """Columns whose non-blank values are all 0/1 (numeric), in file order."""
    cols = []
    for c in df.columns:
        if c in exclude:
            continue
        vals = pd.to_numeric(df[c], errors="coerce")
        if vals.notna().any() and vals.isna().sum() == df[c].isna().sum() and vals.dropna().isin([0, 1]).all():
            cols.append(c)
    return tuple(cols)


def _read_box_file(path: Path, classes: tuple[str, ...] | None) -> tuple[dict[str, list], tuple[str, ...]]:
    df = read_table(path, required=["image", "label", "x_min", "y_min", "x_max", "y_max"])
    names = classes or tuple(sorted(df["label"].astype(str).unique()))
    unknown = set(df["label"].astype(str)) - set(names)
    if unknown:
        raise DatasetError(f"{path}: box labels {sorted(unknown)} are not among classes {list(names)}")
    coords = df[["x_min", "y_min", "x_max", "y_max"]].apply(pd.to_numeric, errors="coerce").to_numpy()
    if np.isnan(coords).any():
        row = int(np.isnan(coords).any(1).argmax())
        raise DatasetError(f"{path}: row {row + 2} has a missing or non-numeric coordinate")
    by_image: dict[str, list] = defaultdict(list)
    for img, lab, box in zip(df["image"].astype(str), df["label"].astype(str), coords):
        by_image[img].append((box, names.index(lab)))
    return by_image, names


def _resolve_split(df: pd.DataFrame, split_column: str | None, patient_column: str | None, seed: int) -> list[str]:
    if split_column:
        values = [SPLIT_ALIASES.get(str(v).lower(), str(v).lower()) for v in df[split_column]]
        bad = sorted(set(values) - {"train", "val", "test"})
        if bad:
            raise DatasetError(f"split column {split_column!r} has values {bad}; expected train/val/test")
        return values
    if patient_column:
        groups = [
            str(p) if pd.notna(p) and str(p) != "" else f"image:{i}" for i, p in zip(df["image"], df[patient_column])
        ]
    else:
        groups = [f"image:{i}" for i in df["image"]]
    return split_groups(groups, seed=seed)


@register_dataset(
    "csv",
    description="Generic: labels.csv (image + 0/1 label columns + mask-file columns) and optional boxes.csv",
    layout="""
    ROOT/labels.csv   columns: image (path relative to ROOT), optional split / official_split,
                      optional patient_id, 0/1 label columns (blank = unknown), mask-file columns
    ROOT/boxes.csv    optional: image,label,x_min,y_min,x_max,y_max in pixels of the stored image
    Without a split column, images are split 70/10/20 by hashed patient id (or image path).
    """,
    tasks=("multilabel", "multiclass", "segmentation", "detection"),
)
def build_csv(
    root: Path,
    split: str,
    *,
    labels_file: str = "labels.csv",
    label_columns: tuple[str, ...] | None = None,
    label_kind: str = "multilabel",
    mask_columns: tuple[str, ...] = (),
    mask_classes: tuple[str, ...] | None = None,
    mask_ignore_value: int | None = None,
    boxes_file: str | None = "boxes.csv",
    box_classes: tuple[str, ...] | None = None,
    boxes_complete: bool = False,
    split_column: str | None = None,
    patient_column: str | None = None,
    seed: int = 0,
    missing: str = "error",
    name: str = "csv",
) -> XrayDataset:
    """Build a dataset from a labels CSV.

    Args:
        root: Folder holding the CSV; image and mask paths are relative to it.
        split: train / val / test / all.
        labels_file: CSV file name under ``root``.
        label_columns: Label columns; None = every column whose values are all 0/1 (``()``
            for none, e.g. a segmentation-only set).
        label_kind: ``multilabel`` or ``multiclass`` (one-hot columns).
        mask_columns: Columns holding mask file paths, one channel each (non-zero = class).
        mask_classes: Names of the mask channels (default: the column names).
        mask_ignore_value: Mask value meaning "ignore" (e.g. 255), mapped to 255 in every channel.
        boxes_file: Box CSV under ``root``, used when it exists; None to ignore boxes.
        box_classes: Ordered box classes (default: sorted labels found in the file).
        boxes_complete: Every image was box-annotated, so one without rows has no lesion (an
            empty box target) rather than no annotation (the default: no box target).
        split_column: Column with train/val/test (default: ``split`` or ``official_split``
            when present, else a patient-hash split); ``""`` forces the patient-hash split
            (e.g. for a set shipped as a single split).
        patient_column: Patient id column for the hash split (default: auto-detected).
        seed: Seed of the hash split.
        missing: Absent images: ``error``, ``skip`` them, or ``keep`` (labels only, no check).
        name: Dataset name used in messages and ``meta["source"]`` (adapters built on this one
            pass their own).
    """
    path = root / labels_file
    df = read_table(path, required=["image", *mask_columns], dtype={"image": str})
    if split_column is None:
        split_column = next((c for c in SPLIT_COLUMNS if c in df.columns), None)
    elif split_column == "":
        split_column = None  # asked for the patient-hash split
    elif split_column not in df.columns:
        raise DatasetError(f"{path}: split column {split_column!r} not found")
    if patient_column is None:
        patient_column = next((c for c in PATIENT_COLUMNS if c in df.columns), None)
    reserved = {"image", *mask_columns, *(c for c in (split_column, patient_column) if c)}
    if label_columns is None:
        label_columns = _auto_label_columns(df, reserved)
    missing_cols = [c for c in label_columns if c not in df.columns]
    if missing_cols:
        raise DatasetError(f"{path}: label column(s) {missing_cols} not found; columns: {list(df.columns)}")
    if label_kind not in CLASSIFICATION_KINDS:
        raise DatasetError(f"label_kind must be 'multilabel' or 'multiclass', got {label_kind!r}")
    labels = df[list(label_columns)].apply(pd.to_numeric, errors="coerce").to_numpy(np.float32)
    bad = ~np.isnan(labels) & ~np.isin(labels, (0.0, 1.0))
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DatasetError(
            f"{path}: row {r + 2}, column {label_columns[c]!r}: label {labels[r, c]} is not 0, 1 or blank"
        )
    box_rows: dict[str, list] | None = None
    tasks = []
    if label_columns:
        tasks.append(TaskSpec("labels", label_kind, tuple(label_columns)))  # type: ignore[arg-type]
    if mask_columns:
        tasks.append(TaskSpec("masks", "segmentation", tuple(mask_classes or mask_columns)))
        if len(tasks[-1].classes) != len(mask_columns):
            raise DatasetError(f"{len(mask_columns)} mask columns but mask_classes {mask_classes}")
    if boxes_file and (root / boxes_file).is_file():
        box_rows, names = _read_box_file(root / boxes_file, box_classes)
        tasks.append(TaskSpec("boxes", "detection", names))
    splits = _resolve_split(df, split_column, patient_column, seed)
    where = label_file_name(path, root)
    records = []
    for i, rel in enumerate(df["image"]):
        meta = {"id": Path(rel).stem, "split": splits[i]}
        if patient_column:
            meta["patient_id"] = None if pd.isna(df[patient_column].iloc[i]) else str(df[patient_column].iloc[i])
        rec = Record(
            image=root / rel, labels=labels[i] if label_columns else None, meta=meta, origin=f"{where} row {i + 2}"
        )
        if mask_columns:
            rec.mask = FileMasks(tuple(root / str(df[c].iloc[i]) for c in mask_columns), mask_ignore_value)
        if box_rows is not None and rel in box_rows:
            rec.boxes = np.asarray([b for b, _ in box_rows[rel]], np.float32)
            rec.box_labels = np.asarray([k for _, k in box_rows[rel]], np.int64)
        elif boxes_complete and box_rows is not None:
            rec.boxes, rec.box_labels = np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
        records.append(rec)
    records = require_images(select_split(records, split), name, missing=missing)
    return XrayDataset(records, tasks, name=name, root=root, split=split)
