"""Shenzhen and Montgomery County tuberculosis sets (NLM; Jaeger et al., QIMS 2014).

Both releases name each radiograph ``<PREFIX>_<NNNN>_<L>.png`` where the last digit ``L`` is the
TB label (0 normal, 1 tuberculosis manifestation) and put a clinical reading per image in
``ClinicalReadings/<stem>.txt`` (sex, age, finding). Montgomery ships manual lung masks, one
file per lung (``ManualMask/leftMask`` and ``rightMask``); Shenzhen ships none, and the lung
masks in common use are those of the Kaggle "Chest X-ray Masks and Labels" set
(``mask/<stem>_mask.png``, 0/255, for about 566 of the 662 images).

Each set has exactly one radiograph per patient, so the 70/10/20 split hashes the image id,
which is patient-disjoint by construction.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from xrayfm.data.base import Record, XrayDataset
from xrayfm.data.masks import FileMasks, UnionMask
from xrayfm.data.registry import check_choice, register_dataset
from xrayfm.data.splits import split_groups
from xrayfm.data.tables import select_split
from xrayfm.errors import DatasetError
from xrayfm.tasks import TaskSpec

LABEL_TASK = TaskSpec("tuberculosis", "multilabel", ("tuberculosis",))
SHENZHEN_MASK_MODES = ("optional", "require", "none")
MONTGOMERY_LUNG_MODES = ("merged", "separate", "none")
MASK_DIRS = ("mask", "masks")

_SEX_AGE_LINE = re.compile(
    r"^\s*(male|female|m|f)(?![a-z])[\s,:]*(\d+)?\s*(yrs?|years?|y|months?|mos?)?", re.IGNORECASE
)
_SEX_TAG = re.compile(r"patient'?s\s+sex\s*:\s*([A-Za-z])", re.IGNORECASE)
_AGE_TAG = re.compile(r"patient'?s\s+age\s*:\s*0*(\d+)\s*([YMD])?", re.IGNORECASE)


def parse_clinical_reading(text: str) -> dict[str, Any]:
    """Parse one ``ClinicalReadings/*.txt`` file into ``sex``, ``age`` and ``finding``.

    Shenzhen files read ``male 45yrs`` then the finding; Montgomery files read
    ``Patient's Sex: M`` / ``Patient's Age: 045Y`` then the finding. Values that cannot be
    read are left None (these are free-text files; the label comes from the file name).
    """
    sex: str | None = None
    age: int | None = None
    finding: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if m := _SEX_TAG.search(line):
            sex = m.group(1).upper()
        elif m := _AGE_TAG.search(line):
            age = int(m.group(1)) if (m.group(2) or "Y").upper() == "Y" else 0
        elif sex is None and (m := _SEX_AGE_LINE.match(line)):
            sex = m.group(1)[0].upper()
            if m.group(2):
                unit = (m.group(3) or "y").lower()
                age = int(m.group(2)) if unit.startswith("y") else 0
        else:
            finding.append(line.strip())
    return {"sex": sex, "age": age, "finding": " ".join(finding) or None}


def _tb_label(path: Path) -> float:
    digit = path.stem.rsplit("_", 1)[-1]
    if digit not in ("0", "1"):
        raise DatasetError(f"{path}: file name must end in _0 (normal) or _1 (tuberculosis), got {digit!r}")
    return float(digit)


def _list_images(root: Path, prefix: str, name: str) -> list[Path]:
    folder = root / "CXR_png"
    if not folder.is_dir():
        raise DatasetError(f"{name}: {folder} not found (expected ROOT/CXR_png/{prefix}_NNNN_L.png)")
    images = sorted(p for p in folder.iterdir() if p.name.startswith(prefix) and p.suffix.lower() == ".png")
    if not images:
        raise DatasetError(f"{name}: no {prefix}_*.png image in {folder}")
    return images


def _records(root: Path, images: list[Path], seed: int) -> list[Record]:
    parts = split_groups([p.stem for p in images], seed=seed)
    readings = root / "ClinicalReadings"
    records = []
    for path, part in zip(images, parts):
        meta: dict[str, Any] = {"id": path.stem, "patient_id": path.stem, "view": "PA", "split": part}
        txt = readings / f"{path.stem}.txt"
        if txt.is_file():
            meta.update(parse_clinical_reading(txt.read_text(encoding="utf-8", errors="replace")))
        records.append(Record(image=path, labels=np.asarray([_tb_label(path)], np.float32), meta=meta))
    return records


@register_dataset(
    "shenzhen",
    description="Shenzhen TB set (NLM): tuberculosis label from the file name, optional Kaggle lung masks",
    layout="""
    ROOT/CXR_png/CHNCXR_0001_0.png            (last digit: 0 normal, 1 tuberculosis)
    ROOT/ClinicalReadings/CHNCXR_0001_0.txt   (optional: sex, age, finding -> meta)
    ROOT/mask/CHNCXR_0001_0_mask.png          (optional lung masks, 0/255, ~566 of 662 images;
                                               ROOT/masks/ is accepted too)
    One image per patient: the 70/10/20 split hashes the image id.
    """,
    tasks=("multilabel", "segmentation"),
)
def build_shenzhen(
    root: Path,
    split: str,
    *,
    masks: str = "optional",
    seed: int = 0,
) -> XrayDataset:
    """Build the Shenzhen chest X-ray set.

    Args:
        root: Dataset root (layout above).
        split: ``train``, ``val``, ``test`` or ``all`` (hashed image id, 70/10/20).
        masks: ``optional`` attaches a lung mask where one exists (others carry no mask
            target); ``require`` keeps only images with a mask; ``none`` ignores masks.
        seed: Seed of the hashed split.
    """
    check_choice("masks mode", masks, SHENZHEN_MASK_MODES)
    records = _records(root, _list_images(root, "CHNCXR", "shenzhen"), seed)
    tasks = [LABEL_TASK]
    if masks != "none":
        mask_dir = next((root / d for d in MASK_DIRS if (root / d).is_dir()), None)
        found = {} if mask_dir is None else {p.name: p for p in mask_dir.iterdir() if p.suffix.lower() == ".png"}
        for rec in records:
            path = found.get(f"{rec.image.stem}_mask.png") or found.get(rec.image.name)
            if path is not None:
                rec.mask = FileMasks((path,))
        if masks == "require":
            if mask_dir is None:
                raise DatasetError(f"shenzhen: masks='require' but there is no mask/ or masks/ folder in {root}")
            records = [r for r in records if r.mask is not None]
            if not records:
                raise DatasetError(f"shenzhen: no image has a <stem>_mask.png in {mask_dir}")
        if any(r.mask is not None for r in records):
            tasks.append(TaskSpec("lungs", "segmentation", ("lungs",)))
    records = select_split(records, split)
    return XrayDataset(records, tasks, name="shenzhen", root=root, split=split)


def _montgomery_masks(root: Path, stem: str, lungs: str) -> UnionMask | FileMasks:
    left = root / "ManualMask" / "leftMask" / f"{stem}.png"
    right = root / "ManualMask" / "rightMask" / f"{stem}.png"
    if left.is_file() and right.is_file():
        if lungs == "separate":
            return UnionMask(((left,), (right,)))
        return UnionMask(((left, right),))
    merged = next((root / d / f"{stem}.png" for d in MASK_DIRS if (root / d / f"{stem}.png").is_file()), None)
    if merged is not None and lungs == "merged":
        return FileMasks((merged,))
    absent = right if left.is_file() else left
    raise DatasetError(f"montgomery: lung mask {absent} not found (lungs={lungs!r} needs both ManualMask files)")


@register_dataset(
    "montgomery",
    description="Montgomery County TB set (NLM): tuberculosis label, manual left/right lung masks",
    layout="""
    ROOT/CXR_png/MCUCXR_0001_0.png                (last digit: 0 normal, 1 tuberculosis)
    ROOT/ManualMask/leftMask/MCUCXR_0001_0.png    (0/255 or 0/1)
    ROOT/ManualMask/rightMask/MCUCXR_0001_0.png
    ROOT/ClinicalReadings/MCUCXR_0001_0.txt       (optional: Patient's Sex / Age, finding)
    (ROOT/masks/MCUCXR_0001_0.png, merged lungs, is used when ManualMask is absent)
    One image per patient: the 70/10/20 split hashes the image id.
    """,
    tasks=("multilabel", "segmentation"),
)
def build_montgomery(
    root: Path,
    split: str,
    *,
    lungs: str = "merged",
    seed: int = 0,
) -> XrayDataset:
    """Build the Montgomery County chest X-ray set.

    Args:
        root: Dataset root (layout above).
        split: ``train``, ``val``, ``test`` or ``all`` (hashed image id, 70/10/20).
        lungs: ``merged`` (one ``lungs`` channel, the union of both files), ``separate`` (two
            channels ``left_lung``, ``right_lung``, the patient's left and right as the mask
            folders name them) or ``none`` (labels only).
        seed: Seed of the hashed split.

    Raises:
        DatasetError: A mask file is missing (the release has both masks for every image).
    """
    check_choice("lungs mode", lungs, MONTGOMERY_LUNG_MODES)
    records = select_split(_records(root, _list_images(root, "MCUCXR", "montgomery"), seed), split)
    tasks = [LABEL_TASK]
    if lungs != "none":
        for rec in records:
            rec.mask = _montgomery_masks(root, rec.image.stem, lungs)
        classes = ("lungs",) if lungs == "merged" else ("left_lung", "right_lung")
        tasks.append(TaskSpec("lungs", "segmentation", classes))
    return XrayDataset(records, tasks, name="montgomery", root=root, split=split)
