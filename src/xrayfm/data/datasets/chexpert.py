"""CheXpert (Irvin et al., AAAI 2019) and the CheXpert-style label parsing MIMIC-CXR shares.

Reads the release as published by the Stanford ML Group: ``train.csv`` and ``valid.csv`` in
``CheXpert-v1.0-small/`` (or the full-size ``CheXpert-v1.0/``). Each row is one image; its
``Path`` starts with the release folder name (``CheXpert-v1.0-small/train/patient00001/...``),
and its 14 observation columns hold 1.0 (positive), 0.0 (negative), -1.0 (uncertain) or blank
(not mentioned), as written by the CheXpert report labeler.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xrayfm.data.base import Record, XrayDataset
from xrayfm.data.registry import check_choice, register_dataset
from xrayfm.data.splits import split_groups
from xrayfm.data.tables import label_file_name, read_table, require_images
from xrayfm.data.uncertainty import apply_uncertainty_policy, resolve_policy
from xrayfm.errors import DatasetError, MissingSplitError, UnknownNameError
from xrayfm.tasks import TaskSpec

#: The 14 observations, in the column order of CheXpert's train.csv (MIMIC-CXR uses the same names).
CHEXPERT_LABELS: tuple[str, ...] = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
)  # fmt: skip
#: The five observations of the CheXpert competition (its test-set evaluation).
COMPETITION_LABELS: tuple[str, ...] = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
LABEL_SETS: dict[str, tuple[str, ...]] = {"all14": CHEXPERT_LABELS, "competition": COMPETITION_LABELS}
#: ``policy="paper"``: the binary reading of Irvin et al.'s best per-observation choices.
PAPER_POLICIES: dict[str, str] = {
    "Atelectasis": "ones", "Edema": "ones",
    "Cardiomegaly": "zeros", "Consolidation": "zeros", "Pleural Effusion": "zeros",
}  # fmt: skip
VIEWS = ("frontal", "lateral", "all")
RELEASE_DIRS = ("CheXpert-v1.0-small", "CheXpert-v1.0")
_PATIENT = re.compile(r"(patient\d+)/(study\d+)/")

LabelPolicies = Mapping[str, str] | Sequence[str]


def resolve_label_set(label_set: str) -> tuple[str, ...]:
    """Class names of a label set: ``all14`` or ``competition``.

    Raises:
        UnknownNameError: Unknown label set.
    """
    check_choice("label_set", label_set, LABEL_SETS)
    return LABEL_SETS[label_set]


def class_policies(policy: str, label_policies: LabelPolicies, classes: Sequence[str]) -> dict[str, str]:
    """Uncertainty policy of each class.

    Args:
        policy: ``ones`` | ``zeros`` | ``ignore`` for every class, or ``paper``: U-Ones for
            Atelectasis and Edema, U-Zeros for Cardiomegaly, Consolidation and Pleural Effusion
            (the usual binary reading of Irvin et al.'s best setting), U-Ones for the others.
        label_policies: Per-class overrides, either a mapping ``{"Edema": "zeros"}`` or strings
            ``("Edema=zeros",)``; applied after ``policy``.
        classes: Classes in use (overrides must name one of them).

    Raises:
        UnknownNameError: Unknown policy or class name, or a malformed ``Label=policy`` string.
    """
    if policy == "paper":
        out = {c: PAPER_POLICIES.get(c, "ones") for c in classes}
    else:
        out = dict.fromkeys(classes, resolve_policy(policy))
    if isinstance(label_policies, Mapping):
        pairs = list(label_policies.items())
    else:
        if isinstance(label_policies, str):
            label_policies = (label_policies,)
        pairs = []
        for item in label_policies:
            name, sep, pol = str(item).partition("=")
            if not sep:
                raise UnknownNameError(f"label policy {item!r} must read 'Label=policy', e.g. 'Edema=zeros'")
            pairs.append((name.strip(), pol.strip()))
    for name, pol in pairs:
        if name not in out:
            raise UnknownNameError(f"label policy for {name!r}: not one of the classes {list(classes)}")
        out[name] = resolve_policy(pol)
    return out


def check_label_options(policy: str, blank: str, label_policies: LabelPolicies, classes: Sequence[str]) -> None:
    """Fail early (before any file is read) on a bad policy, blank option or override.

    Raises:
        UnknownNameError: Unknown policy, blank option or class name.
    """
    class_policies(policy, label_policies, classes)
    if blank not in ("zero", "nan"):
        raise UnknownNameError(f"unknown blank policy {blank!r}; choose 'zero' or 'nan'")


def chexpert_label_matrix(
    df: pd.DataFrame,
    path: Path,
    classes: Sequence[str],
    *,
    policy: str = "ones",
    blank: str = "zero",
    label_policies: LabelPolicies = (),
) -> np.ndarray:
    """Turn CheXpert-labeler columns (1, 0, -1, blank) into float32 (N, K) targets.

    Args:
        df: Table with one column per class (row index = position in the file).
        path: Label file, for error messages.
        classes: Columns to read, in target order.
        policy: Uncertainty policy (see :func:`class_policies`).
        blank: ``zero`` (not mentioned = negative) or ``nan`` (unknown).
        label_policies: Per-class overrides of ``policy``.

    Raises:
        DatasetError: A cell holds something other than 1, 0, -1 or blank (names the row).
        UnknownNameError: Unknown policy, class or blank option.
    """
    check_label_options(policy, blank, label_policies, classes)
    policies = class_policies(policy, label_policies, classes)
    raw = np.empty((len(df), len(classes)), np.float32)
    bad = np.zeros(raw.shape, bool)
    for k, name in enumerate(classes):
        col = df[name]
        if pd.api.types.is_numeric_dtype(col):
            raw[:, k] = col.to_numpy(np.float32)
        else:  # text in a label column: only blanks may fail to parse
            raw[:, k] = pd.to_numeric(col, errors="coerce").to_numpy(np.float32)
            blank_cell = col.isna().to_numpy() | (col.astype(str).str.strip() == "").to_numpy()
            bad[:, k] = np.isnan(raw[:, k]) & ~blank_cell
    bad |= ~np.isnan(raw) & ~np.isin(raw, (1.0, 0.0, -1.0))
    if bad.any():
        r, c = np.argwhere(bad)[0]
        value = df[classes[c]].iloc[r]
        shown = repr(value) if isinstance(value, str) else str(value)
        raise DatasetError(
            f"{path}: row {df.index[r] + 2}, column {classes[c]!r}: value {shown} is not 1, 0, -1 or blank"
        )
    out = np.empty_like(raw)
    for k, name in enumerate(classes):
        out[:, k] = apply_uncertainty_policy(raw[:, k], policies[name], blank)  # type: ignore[arg-type]
    return out


def _release_dir(root: Path) -> Path:
    """The folder holding train.csv / valid.csv: a release folder under ``root``, or ``root``."""
    for cand in (*(root / d for d in RELEASE_DIRS), root):
        if any((cand / f).is_file() for f in ("train.csv", "valid.csv", "train.csv.gz", "valid.csv.gz")):
            return cand
    raise DatasetError(
        f"{root}: no CheXpert label file found; looked for train.csv / valid.csv in "
        f"{', '.join(RELEASE_DIRS)} and in the root itself"
    )


def _label_file(folder: Path, stem: str, split: str) -> Path:
    for name in (f"{stem}.csv", f"{stem}.csv.gz"):
        if (folder / name).is_file():
            return folder / name
    raise MissingSplitError(f"chexpert: no {split} split: label file {folder / (stem + '.csv')} not found")


def _image_path(folder: str, rel: str) -> Path:
    """Resolve a ``Path`` cell: its first part names the release folder, whatever it is called here."""
    head, sep, rest = rel.partition("/")
    return Path(f"{folder}/{rest if sep and head.startswith('CheXpert-v1.0') else rel}")


def _records(path: Path, root: Path, part: str | None, classes: tuple[str, ...], opts: dict[str, Any]) -> list[Record]:
    """Records of one CSV (in the release folder under ``root``); ``part`` None = train.csv
    (hashed train/val), else a fixed split."""
    df = read_table(path, required=["Path", "Frontal/Lateral", *classes], dtype={"Path": str})
    fl = df["Frontal/Lateral"].astype(str).str.strip().str.lower()
    if opts["views"] != "all":
        df = df[fl == opts["views"]]
    ids = df["Path"].str.extract(_PATIENT)
    if ids[0].isna().any():
        row = int(ids[0].isna().to_numpy().argmax())
        raise DatasetError(f"{path}: row {df.index[row] + 2}: no patientNNNNN/studyN in Path {df['Path'].iloc[row]!r}")
    labels = chexpert_label_matrix(
        df, path, classes, policy=opts["policy"], blank=opts["blank"], label_policies=opts["label_policies"]
    )
    if part is None:
        vf = opts["val_fraction"]
        parts = split_groups(ids[0], seed=opts["seed"], fractions={"train": 1 - vf, "val": vf})
    else:
        parts = [part] * len(df)
    want, n = opts["split"], len(df)
    view = df["AP/PA"].astype(object) if "AP/PA" in df.columns else pd.Series([None] * n, index=df.index)
    view = view.where(view.notna() & (view.astype(str).str.strip() != ""), df["Frontal/Lateral"]).astype(str)
    sex = df["Sex"].astype(object).where(df["Sex"].notna(), None).tolist() if "Sex" in df.columns else [None] * n
    ages = pd.to_numeric(df["Age"], errors="coerce").tolist() if "Age" in df.columns else [float("nan")] * n
    base, where = str(path.parent), label_file_name(path, root)
    records = []
    lines = (df.index + 2).tolist()
    columns = (df["Path"].tolist(), ids[0].tolist(), ids[1].tolist(), view.tolist(), sex, ages, parts)
    for i, (rel, pid, study, v, sx, age, p) in enumerate(zip(*columns)):
        if want != "all" and p != want:
            continue
        meta = {
            "id": f"{pid}_{study}_{rel.rsplit('/', 1)[-1].rsplit('.', 1)[0]}",
            "patient_id": pid,
            "study": f"{pid}/{study}",
            "view": v,
            "sex": sx,
            "age": int(age) if age == age else None,
            "split": p,
        }
        records.append(
            Record(image=_image_path(base, rel), labels=labels[i], meta=meta, origin=f"{where} row {lines[i]}")
        )
    return records


@register_dataset(
    "chexpert",
    description="CheXpert: 14 observations (multi-label) with uncertainty policies; valid.csv as test",
    layout="""
    ROOT/CheXpert-v1.0-small/train.csv, valid.csv   (or CheXpert-v1.0/, or ROOT is that folder)
    ROOT/CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg ...
    ROOT/CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg ...
    Path cells start with the release folder name, resolved against the folder holding train.csv.
    """,
    tasks=("multilabel",),
)
def build_chexpert(
    root: Path,
    split: str,
    *,
    policy: str = "ones",
    blank: str = "zero",
    label_policies: LabelPolicies = (),
    views: str = "frontal",
    label_set: str = "all14",
    val_fraction: float = 0.1,
    seed: int = 0,
    missing: str = "error",
) -> XrayDataset:
    """Build CheXpert.

    CheXpert's own test set (500 studies) is hidden by its authors, so the official
    ``valid.csv`` (200 studies, radiologist consensus labels) serves as ``test``; ``train`` and
    ``val`` are a patient-disjoint split of ``train.csv`` by hashed patient id.

    Args:
        root: Dataset root (layout above).
        split: ``train`` / ``val`` (from train.csv), ``test`` (valid.csv) or ``all``.
        policy: Uncertain (-1) labels: ``ones`` (U-Ones), ``zeros`` (U-Zeros), ``ignore``
            (``nan``, left out of the loss) or ``paper`` (U-Ones for Atelectasis and Edema,
            U-Zeros for Cardiomegaly, Consolidation and Pleural Effusion, U-Ones elsewhere).
        blank: Unmentioned (blank) labels: ``zero`` (negative, the convention) or ``nan``.
        label_policies: Per-class overrides, ``{"Edema": "zeros"}`` or ``("Edema=zeros",)``.
        views: ``frontal`` (default), ``lateral`` or ``all`` (``Frontal/Lateral`` column).
        label_set: ``all14`` or ``competition`` (Atelectasis, Cardiomegaly, Consolidation,
            Edema, Pleural Effusion).
        val_fraction: Share of train.csv patients held out as ``val``.
        seed: Seed of the patient-level train/val split.
        missing: Absent images: ``error``, ``skip`` them, or ``keep`` (labels only, no check).

    Samples carry meta ``patient_id`` (``patient00001``), ``study`` (``patient00001/study1``),
    ``view`` (AP / PA / LL / RL, or Lateral), ``sex`` and ``age``.
    """
    classes = resolve_label_set(label_set)
    check_label_options(policy, blank, label_policies, classes)
    check_choice("views", views, VIEWS)
    if not 0 <= val_fraction < 1:
        raise DatasetError(f"val_fraction must be in [0, 1), got {val_fraction}")
    folder = _release_dir(root)
    opts = dict(
        policy=policy, blank=blank, label_policies=label_policies, views=views,
        val_fraction=val_fraction, seed=seed, split=split,
    )  # fmt: skip
    records: list[Record] = []
    if split in ("train", "val") or (split == "all" and any(folder.glob("train.csv*"))):
        records += _records(_label_file(folder, "train", split), root, None, classes, opts)
    if split == "test" or (split == "all" and any(folder.glob("valid.csv*"))):
        records += _records(_label_file(folder, "valid", "test"), root, "test", classes, opts)
    records = require_images(records, "chexpert", missing=missing)
    return XrayDataset(records, [TaskSpec("findings", "multilabel", classes)], name="chexpert", root=root, split=split)
