"""MURA v1.1: musculoskeletal radiographs, normal / abnormal per study (Rajpurkar et al., 2017).

The release lists its images in ``train_image_paths.csv`` / ``valid_image_paths.csv`` (no
header; one path per line such as ``MURA-v1.1/train/XR_ELBOW/patient00011/study1_negative/
image1.png``) and labels whole studies in ``train_labeled_studies.csv`` /
``valid_labeled_studies.csv`` (no header: study folder, 0/1). Each image takes its study's
label; the study folder name (``study1_positive``) repeats it and must agree.

The official validation set (its test set is hidden) becomes ``test``; the training set is
split into ``train`` / ``val`` by hashed patient id (the two official sets share no patient).
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from xrayfm.data.base import Record, XrayDataset
from xrayfm.data.registry import register_dataset
from xrayfm.data.splits import holdout_fractions, split_groups
from xrayfm.data.tables import read_table, require_images
from xrayfm.errors import DatasetError, MissingSplitError, UnknownNameError
from xrayfm.tasks import TaskSpec

BODY_PARTS: tuple[str, ...] = ("ELBOW", "FINGER", "FOREARM", "HAND", "HUMERUS", "SHOULDER", "WRIST")
LABEL_TASK = TaskSpec("abnormality", "multilabel", ("abnormal",))
RELEASE_DIR = "MURA-v1.1"
_STUDY = re.compile(r"^(study\d+)_(positive|negative)$")


def _mura_dir(root: Path) -> Path:
    for cand in (root / RELEASE_DIR, root):
        if (cand / "train_image_paths.csv").is_file() or (cand / "valid_image_paths.csv").is_file():
            return cand
    raise DatasetError(f"mura: no train_image_paths.csv / valid_image_paths.csv in {root} or {root / RELEASE_DIR}")


def _relative(text: str) -> str:
    """Path below the release folder: drop the leading ``MURA-v1.1/`` and any trailing slash."""
    parts = PurePosixPath(str(text).strip().replace("\\", "/")).parts
    if parts and parts[0].upper().startswith("MURA"):
        parts = parts[1:]
    return "/".join(parts)


def _read_studies(path: Path) -> dict[str, float]:
    df = read_table(path, header=None, names=["study", "label"], dtype=str)
    labels = pd.to_numeric(df["label"], errors="coerce")
    bad = ~labels.isin([0, 1])
    if bad.any():
        row = int(bad.to_numpy().argmax())
        raise DatasetError(f"{path}: line {row + 1}: label {df['label'].iloc[row]!r} is not 0 or 1")
    return {_relative(s): float(v) for s, v in zip(df["study"], labels)}


def _read_part(mura: Path, official: str, seed: int, val_fraction: float) -> list[Record]:
    paths_file = mura / f"{official}_image_paths.csv"
    studies_file = mura / f"{official}_labeled_studies.csv"
    if not paths_file.is_file():
        splits = "test" if official == "valid" else "train/val"
        raise MissingSplitError(f"mura: no {splits} split: {paths_file} not found")
    studies = _read_studies(studies_file)
    df = read_table(paths_file, header=None, names=["image"], dtype=str)
    records = []
    for row, text in enumerate(df["image"]):
        rel = _relative(text)
        parts = rel.split("/")
        if len(parts) != 5 or not parts[1].upper().startswith("XR_"):
            raise DatasetError(
                f"{paths_file}: line {row + 1}: {text!r} is not <split>/XR_<PART>/<patient>/<study>/<image>"
            )
        _, part, patient, study, _ = parts
        study_key = "/".join(parts[:4])
        if study_key not in studies:
            raise DatasetError(f"{paths_file}: line {row + 1}: study {study_key} is not in {studies_file.name}")
        label = studies[study_key]
        m = _STUDY.match(study)
        if m and float(m.group(2) == "positive") != label:
            raise DatasetError(
                f"{paths_file}: line {row + 1}: folder {study!r} contradicts label {int(label)} in {studies_file.name}"
            )
        short = m.group(1) if m else study
        meta = {
            "id": f"{patient}_{short}_{Path(parts[4]).stem}",
            "patient_id": patient,
            "body_part": part.upper()[3:],
            "study": short,
            "study_id": study_key,
            "official_split": official,
        }
        origin = f"{paths_file.name} line {row + 1}"
        records.append(Record(image=mura / rel, labels=np.asarray([label], np.float32), meta=meta, origin=origin))
    if official == "valid":
        for rec in records:
            rec.meta["split"] = "test"
    else:
        fractions = holdout_fractions(val_fraction)
        parts = split_groups([r.meta["patient_id"] for r in records], seed=seed, fractions=fractions)
        for rec, s in zip(records, parts):
            rec.meta["split"] = s
    return records


@register_dataset(
    "mura",
    description="MURA v1.1: musculoskeletal radiographs, abnormal per study, 7 body parts",
    layout="""
    ROOT/MURA-v1.1/train_image_paths.csv, valid_image_paths.csv        (no header: image path)
    ROOT/MURA-v1.1/train_labeled_studies.csv, valid_labeled_studies.csv  (no header: study folder, 0/1)
    ROOT/MURA-v1.1/{train,valid}/XR_<PART>/patientNNNNN/studyN_{positive,negative}/imageN.png
    (ROOT may also be the MURA-v1.1 folder itself.) Official valid = test; train is split into
    train/val by hashed patient id.
    """,
    tasks=("multilabel",),
)
def build_mura(
    root: Path,
    split: str,
    *,
    body_parts: tuple[str, ...] | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    missing: str = "error",
) -> XrayDataset:
    """Build MURA.

    Args:
        root: The folder holding ``MURA-v1.1/``, or ``MURA-v1.1`` itself.
        split: ``train`` / ``val`` (from the official train set, by patient), ``test`` (the
            official valid set) or ``all``.
        body_parts: Keep these parts only (``ELBOW``, ``FINGER``, ``FOREARM``, ``HAND``,
            ``HUMERUS``, ``SHOULDER``, ``WRIST``; ``XR_`` prefix and case are ignored).
        val_fraction: Share of training patients held out as ``val``.
        seed: Seed of the patient split.
        missing: Absent images: ``error``, ``skip`` them, or ``keep`` (labels only, no check).
    """
    keep: set[str] | None = None
    if body_parts is not None:
        body_parts = (body_parts,) if isinstance(body_parts, str) else body_parts
        keep = {str(b).upper().removeprefix("XR_") for b in body_parts}
        unknown = sorted(keep - set(BODY_PARTS))
        if unknown:
            raise UnknownNameError(f"unknown body part(s) {unknown}; choose among {', '.join(BODY_PARTS)}")
    if not 0 <= val_fraction < 1:
        raise DatasetError(f"val_fraction must be in [0, 1), got {val_fraction}")
    mura = _mura_dir(root)
    officials = {"train": ["train"], "val": ["train"], "test": ["valid"], "all": ["train", "valid"]}[split]
    records: list[Record] = []
    for official in officials:
        records += _read_part(mura, official, seed, val_fraction)
    if split != "all":
        records = [r for r in records if r.meta["split"] == split]
    if keep is not None:
        records = [r for r in records if r.meta["body_part"] in keep]
    records = require_images(records, "mura", missing=missing)
    return XrayDataset(records, [LABEL_TASK], name="mura", root=root, split=split)
