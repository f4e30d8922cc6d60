"""MIMIC-CXR-JPG 2.x (Johnson et al., PhysioNet 2019).

Reads the release as published on PhysioNet: ``mimic-cxr-2.0.0-metadata.csv(.gz)`` (one row
per image: ``dicom_id``, ``subject_id``, ``study_id``, ``ViewPosition`` ...),
``mimic-cxr-2.0.0-split.csv(.gz)`` (the official train / validate / test split per image) and
one label file per study, ``mimic-cxr-2.0.0-chexpert.csv(.gz)`` or ``mimic-cxr-2.0.0-negbio.csv(.gz)``
(``subject_id``, ``study_id`` and the 14 CheXpert observations coded 1 / 0 / -1 / blank, parsed by
:func:`~xrayfm.data.datasets.chexpert.chexpert_label_matrix`). Labels are per study, so every
image of a study gets its study's labels.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from xrayfm.data.base import Record, XrayDataset
from xrayfm.data.datasets.chexpert import (
    LabelPolicies,
    check_label_options,
    chexpert_label_matrix,
    resolve_label_set,
)
from xrayfm.data.registry import check_choice, register_dataset
from xrayfm.data.tables import find_first, label_file_name, read_table, require_images
from xrayfm.errors import DatasetError
from xrayfm.tasks import TaskSpec

PREFIX = "mimic-cxr-2.0.0"
LABELERS = ("chexpert", "negbio")
SPLIT_NAMES = {"train": "train", "validate": "val", "test": "test"}
_IDS = {"dicom_id": str, "subject_id": str, "study_id": str}


def _table(root: Path, stem: str, required: list[str]) -> tuple[Path, pd.DataFrame]:
    path = find_first(root, [f"{PREFIX}-{stem}.csv", f"{PREFIX}-{stem}.csv.gz"], f"{PREFIX}-{stem}.csv(.gz)")
    df = read_table(path, required=required, dtype=_IDS)
    for col in ("subject_id", "study_id"):
        if col in df.columns:
            df[col] = df[col].str.strip()
            bad = ~df[col].str.fullmatch(r"\d+").fillna(False)
            if bad.any():
                row = int(bad.to_numpy().argmax())
                raise DatasetError(f"{path}: row {row + 2}: {col} {df[col].iloc[row]!r} is not a number")
    return path, df


def _views(views: str | tuple[str, ...]) -> tuple[str, ...] | None:
    if views == "all":
        return None
    if isinstance(views, str):
        views = (views,)
    return tuple(str(v).upper() for v in views)


@register_dataset(
    "mimic_cxr",
    description="MIMIC-CXR-JPG 2.x: 14 CheXpert/NegBio observations per study, official split",
    layout="""
    ROOT/mimic-cxr-2.0.0-metadata.csv(.gz)   dicom_id, subject_id, study_id, ViewPosition, ...
    ROOT/mimic-cxr-2.0.0-split.csv(.gz)      dicom_id, study_id, subject_id, split (train/validate/test)
    ROOT/mimic-cxr-2.0.0-chexpert.csv(.gz)   subject_id, study_id, 14 observations (1/0/-1/blank)
    ROOT/mimic-cxr-2.0.0-negbio.csv(.gz)     same columns (labeler="negbio")
    ROOT/files/p10/p10000032/s50414267/<dicom_id>.jpg   (pXX = first two digits of subject_id)
    """,
    tasks=("multilabel",),
)
def build_mimic_cxr(
    root: Path,
    split: str,
    *,
    labeler: str = "chexpert",
    policy: str = "ones",
    blank: str = "zero",
    label_policies: LabelPolicies = (),
    views: str | tuple[str, ...] = ("PA", "AP"),
    label_set: str = "all14",
    image_ext: str = ".jpg",
    missing: str = "error",
) -> XrayDataset:
    """Build MIMIC-CXR-JPG.

    Splits are the official ``mimic-cxr-2.0.0-split.csv`` (``validate`` becomes ``val``); they
    are patient-disjoint by construction. Images whose study has no row in the label file (the
    labelers skipped a few hundred reports) are left out, as they carry no targets.

    Args:
        root: Dataset root (layout above).
        split: ``train``, ``val``, ``test`` or ``all``.
        labeler: ``chexpert`` or ``negbio`` label file.
        policy: Uncertain (-1) labels: ``ones``, ``zeros``, ``ignore`` or ``paper`` (see
            :func:`~xrayfm.data.datasets.chexpert.class_policies`).
        blank: Unmentioned labels: ``zero`` (negative) or ``nan`` (unknown).
        label_policies: Per-class overrides, ``{"Edema": "zeros"}`` or ``("Edema=zeros",)``.
        views: ``ViewPosition`` values to keep (default PA and AP), or ``all`` (also keeps
            images without a ViewPosition).
        label_set: ``all14`` or ``competition``.
        image_ext: Image file extension (``.jpg`` for MIMIC-CXR-JPG, ``.dcm`` for MIMIC-CXR).
        missing: Absent images: ``error``, ``skip`` them, or ``keep`` (labels only, no check).

    Samples carry meta ``patient_id`` (subject_id), ``study`` (study_id) and ``view``.
    """
    check_choice("labeler", labeler, LABELERS)
    classes = resolve_label_set(label_set)
    check_label_options(policy, blank, label_policies, classes)
    keep_views = _views(views)
    meta_path, meta = _table(root, "metadata", ["dicom_id", "subject_id", "study_id", "ViewPosition"])
    split_path, parts = _table(root, "split", ["dicom_id", "split"])
    label_path, labels = _table(root, labeler, ["subject_id", "study_id", *classes])
    parts["split"] = parts["split"].astype(str).str.strip().str.lower()
    bad = ~parts["split"].isin(list(SPLIT_NAMES))
    if bad.any():
        row = int(bad.to_numpy().argmax())
        value = parts["split"].iloc[row]
        raise DatasetError(f"{split_path}: row {row + 2}: split {value!r} is not train/validate/test")
    if parts["dicom_id"].duplicated().any():
        dup = parts["dicom_id"][parts["dicom_id"].duplicated()].iloc[0]
        raise DatasetError(f"{split_path}: dicom_id {dup} is listed twice")
    if labels.duplicated(["subject_id", "study_id"]).any():
        row = int(labels.duplicated(["subject_id", "study_id"]).to_numpy().argmax())
        raise DatasetError(f"{label_path}: row {row + 2}: study {labels['study_id'].iloc[row]} is listed twice")
    target = chexpert_label_matrix(
        labels, label_path, classes, policy=policy, blank=blank, label_policies=label_policies
    )
    label_row = {key: i for i, key in enumerate(zip(labels["subject_id"], labels["study_id"]))}
    df = meta.merge(parts[["dicom_id", "split"]], on="dicom_id", how="left")
    if df["split"].isna().any():
        missing_id = df["dicom_id"][df["split"].isna()].iloc[0]
        raise DatasetError(f"{split_path}: image {missing_id} of {meta_path.name} has no split")
    df["part"] = df["split"].map(SPLIT_NAMES)
    if split != "all":
        df = df[df["part"] == split]
    view = df["ViewPosition"].fillna("").astype(str).str.strip()
    if keep_views is not None:
        df = df[view.str.upper().isin(keep_views)]
    where = label_file_name(meta_path, root)
    records = []
    for dicom, subject, study, pos, part, line in zip(
        df["dicom_id"].tolist(), df["subject_id"].tolist(), df["study_id"].tolist(),
        view.loc[df.index].tolist(), df["part"].tolist(), (df.index + 2).tolist(),
    ):  # fmt: skip
        row = label_row.get((subject, study))
        if row is None:  # a study the labeler did not label: no targets to train on
            continue
        image = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}{image_ext}"
        meta_row = {"id": dicom, "patient_id": subject, "study": study, "view": pos or None, "split": part}
        records.append(Record(image=image, labels=target[row], meta=meta_row, origin=f"{where} row {line}"))
    records = require_images(records, "mimic_cxr", missing=missing)
    return XrayDataset(records, [TaskSpec("findings", "multilabel", classes)], name="mimic_cxr", root=root, split=split)
