"""VinDr-CXR (Nguyen et al., Scientific Data 2022), in both of its published layouts.

- PhysioNet VinDr-CXR 1.0: ``annotations/annotations_{train,test}.csv`` (one box per row and
  radiologist: ``image_id, rad_id, class_name, x_min, y_min, x_max, y_max``) and
  ``annotations/image_labels_{train,test}.csv`` (one row per image and radiologist, one 0/1
  column per finding), images ``train/<image_id>.dicom`` and ``test/<image_id>.dicom``. Training
  images were read by three radiologists each; test labels are a five-reader consensus.
- Kaggle VinBigData 2020: ``train.csv`` (``image_id, class_name, class_id, rad_id, x_min, ...``),
  three radiologists per image, ``No finding`` rows with blank coordinates; the competition's
  test labels were never released.

The labels are the 14 local lesion classes of the Kaggle competition (and ``No finding``), or,
PhysioNet layout only, the release's 6 global labels (``COPD``, ``Lung tumor``, ``Pneumonia``,
``Tuberculosis``, ``Other diseases`` and ``No finding``; the test file spells the fifth ``Other
disease``), which Foundation X classifies, or both. The 8 rarer local lesions are ignored. Boxes
are those of the 14 lesions, in the pixels of the original DICOM.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from xrayfm.data.base import Record, XrayDataset
from xrayfm.data.registry import check_choice, register_dataset
from xrayfm.data.splits import holdout_fractions, split_groups
from xrayfm.data.tables import label_file_name, read_table, require_images
from xrayfm.errors import DatasetError, MissingSplitError
from xrayfm.tasks import TaskSpec

LESIONS: tuple[str, ...] = (
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "ILD",
    "Infiltration", "Lung Opacity", "Nodule/Mass", "Other lesion", "Pleural effusion",
    "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis",
)  # fmt: skip
NO_FINDING = "No finding"
#: The PhysioNet release's global labels (diagnoses), ``No finding`` aside; not in the Kaggle file.
DIAGNOSES: tuple[str, ...] = ("COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases")
#: Other spellings of diagnosis columns: ``image_labels_test.csv`` has ``Other disease``.
DIAGNOSIS_ALIASES = {"Other disease": "Other diseases"}
CONSENSUS = ("all", "majority")
#: ``labels`` option -> the label columns it classifies, ``No finding`` aside.
LABEL_SETS: dict[str, tuple[str, ...]] = {"lesions": LESIONS, "global": DIAGNOSES, "both": LESIONS + DIAGNOSES}
COORDS = ["x_min", "y_min", "x_max", "y_max"]
DICOM_SUFFIXES = (".dicom", ".dcm")
IMAGE_SUFFIXES = (*DICOM_SUFFIXES, ".png", ".jpg", ".jpeg")


@dataclass
class _Reads:
    """What the radiologists said about one image."""

    readers: dict[str, set[str]] = field(default_factory=dict)  # rad id -> classes reported
    boxes: list[tuple[str, int, np.ndarray]] = field(default_factory=list)  # (rad, class, xyxy)


def _csv(folder: Path, stem: str) -> Path:
    """``stem.csv``, or ``stem.csv.gz`` when only that exists."""
    gz = folder / f"{stem}.csv.gz"
    return gz if gz.is_file() and not (folder / f"{stem}.csv").is_file() else folder / f"{stem}.csv"


def _rad_column(df: pd.DataFrame) -> str | None:
    return next((c for c in df.columns if c.lower() == "rad_id"), None)


def _box_rows(df: pd.DataFrame, path: Path, reads: dict[str, _Reads], *, strict: bool) -> None:
    """Add the lesion boxes of an annotation table (``strict``: unknown classes are errors)."""
    names = df["class_name"].astype(str).str.strip()
    known = names.isin([*LESIONS, NO_FINDING])
    if strict and not known.all():
        row = int((~known).to_numpy().argmax())
        raise DatasetError(f"{path}: row {row + 2}: unknown class {names.iloc[row]!r}")
    if strict and "class_id" in df.columns:
        expected = names.map({n: i for i, n in enumerate((*LESIONS, NO_FINDING))})
        wrong = pd.to_numeric(df["class_id"], errors="coerce") != expected
        if wrong.any():
            row = int(wrong.to_numpy().argmax())
            value = df["class_id"].iloc[row]
            raise DatasetError(f"{path}: row {row + 2}: class_id {value} does not match {names.iloc[row]!r}")
    coords = df[COORDS].apply(pd.to_numeric, errors="coerce").to_numpy(np.float32)
    lesion = names.isin(LESIONS).to_numpy()
    bad = lesion & ~np.isfinite(coords).all(1)
    if bad.any():
        row = int(bad.argmax())
        raise DatasetError(f"{path}: row {row + 2}: {names.iloc[row]} box has a missing or non-numeric coordinate")
    rad = _rad_column(df)
    rads = df[rad].astype(str).str.strip().tolist() if rad else ["consensus"] * len(df)
    for img, r, name, box, is_lesion in zip(df["image_id"].tolist(), rads, names.tolist(), coords, lesion):
        entry = reads.setdefault(img, _Reads())
        if is_lesion:
            entry.boxes.append((r, LESIONS.index(name), box))


def _read_kaggle(root: Path) -> dict[str, _Reads]:
    path = _csv(root, "train")
    df = read_table(path, required=["image_id", "class_name", "rad_id", *COORDS], dtype={"image_id": str})
    reads: dict[str, _Reads] = {}
    _box_rows(df, path, reads, strict=True)
    for img, rad, name in zip(df["image_id"].tolist(), df["rad_id"].astype(str).tolist(), df["class_name"].tolist()):
        reads[img].readers.setdefault(rad.strip(), set()).add(str(name).strip())
    return reads


def _read_physionet(root: Path, part: str, diagnoses: bool) -> dict[str, _Reads]:
    """Reads of one PhysioNet part: the lesion columns, and the global ones when ``diagnoses``."""
    labels_path = _csv(root / "annotations", f"image_labels_{part}")
    if not labels_path.is_file():
        raise MissingSplitError(f"vindr_cxr: no {part} split: {labels_path} not found")
    columns = (*LESIONS, *(DIAGNOSES if diagnoses else ()), NO_FINDING)
    df = read_table(labels_path, dtype={"image_id": str})
    df = df.rename(columns={a: n for a, n in DIAGNOSIS_ALIASES.items() if n not in df.columns})
    missing = [c for c in ("image_id", *columns) if c not in df.columns]
    if missing:
        raise DatasetError(f"{labels_path}: missing column(s) {missing}; found {list(df.columns)}")
    values = df[list(columns)].apply(pd.to_numeric, errors="coerce").to_numpy(np.float32)
    bad = ~np.isin(values, (0.0, 1.0))
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DatasetError(f"{labels_path}: row {r + 2}, column {columns[c]!r}: label is not 0 or 1")
    rad = _rad_column(df)
    rads = df[rad].astype(str).str.strip().tolist() if rad else ["consensus"] * len(df)
    reads: dict[str, _Reads] = {}
    for img, r, row in zip(df["image_id"].tolist(), rads, values):
        reported = {n for n, v in zip(columns, row) if v == 1}
        reads.setdefault(img, _Reads()).readers.setdefault(r, set()).update(reported)
    box_path = _csv(root / "annotations", f"annotations_{part}")
    boxes = read_table(box_path, required=["image_id", "class_name", *COORDS], dtype={"image_id": str})
    unlabelled = sorted(set(boxes["image_id"]) - set(reads))
    if unlabelled:
        raise DatasetError(f"{box_path}: image {unlabelled[0]} has boxes but no row in {labels_path.name}")
    _box_rows(boxes, box_path, reads, strict=False)
    return reads


def _consensus(
    reads: _Reads, rule: str, classes: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Labels over ``classes``, boxes, box labels and box readers of one image under a consensus rule."""
    n = len(reads.readers)
    need = 1 if rule == "all" else n // 2 + 1

    def positive(c: str) -> bool:
        votes = sum(c in said for said in reads.readers.values())
        return votes >= (n if c == NO_FINDING and rule == "all" else need)

    labels = [float(positive(c)) for c in classes]
    kept = [(r, k, b) for r, k, b in reads.boxes if rule == "all" or positive(LESIONS[k])]
    boxes = np.asarray([b for _, _, b in kept], np.float32).reshape(-1, 4)
    box_labels = np.asarray([k for _, k, _ in kept], np.int64)
    return np.asarray(labels, np.float32), boxes, box_labels, [r for r, _, _ in kept]


def _index_images(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    index: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in IMAGE_SUFFIXES:
            index.setdefault(p.stem, p)
    return index


def _read_sizes(root: Path, name: str) -> dict[str, tuple[int, int]]:
    """image_id -> original (width, height) from ``width, height`` or ``dim0`` (rows), ``dim1`` columns."""
    path = root / name
    df = read_table(path, required=["image_id"], dtype={"image_id": str})
    cols = ("width", "height") if {"width", "height"} <= set(df.columns) else ("dim1", "dim0")
    if not set(cols) <= set(df.columns):
        raise DatasetError(
            f"{path}: needs columns width, height (or dim0 = rows, dim1 = columns); found {list(df.columns)}"
        )
    wh = df[list(cols)].apply(pd.to_numeric, errors="coerce").to_numpy()
    if not (np.isfinite(wh).all() and (wh > 0).all()):
        row = int((~(np.isfinite(wh) & (wh > 0)).all(1)).argmax())
        raise DatasetError(f"{path}: row {row + 2}: size is not a positive number")
    return {i: (int(w), int(h)) for i, (w, h) in zip(df["image_id"], wh)}


@register_dataset(
    "vindr_cxr",
    description="VinDr-CXR: 14 lesions (+ No finding) with per-reader boxes, or 6 global labels; PhysioNet or Kaggle",
    layout="""
    PhysioNet 1.0:  ROOT/annotations/annotations_train.csv, annotations_test.csv
                    ROOT/annotations/image_labels_train.csv, image_labels_test.csv
                    ROOT/train/<image_id>.dicom, ROOT/test/<image_id>.dicom
    Kaggle:         ROOT/train.csv, ROOT/train/<image_id>.dicom (or .dcm / .png)
    Optional ROOT/<size_file>: image_id, width, height of the original DICOMs (PNG conversions).
    """,
    tasks=("multilabel", "detection"),
)
def build_vindr_cxr(
    root: Path,
    split: str,
    *,
    box_consensus: str = "all",
    labels: str = "lesions",
    include_no_finding: bool = True,
    size_file: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    missing: str = "error",
) -> XrayDataset:
    """Build VinDr-CXR.

    Each training image was read independently by three radiologists (``rad_id`` R1..R17).
    ``box_consensus`` chooses how their reads become one target:

    - ``all``: a label is positive when any radiologist reported the class (``No finding``
      when all of them reported nothing); every radiologist's box is kept, so one lesion often
      has two or three overlapping boxes. Sample meta ``box_readers`` gives each box's rad id.
    - ``majority``: a label is positive when more than half of the image's readers (2 of 3)
      reported the class (``No finding`` likewise); the boxes kept are those of the readers who
      marked a class that reached the majority. No box fusion is done.

    The same rule applies to every label of ``labels``:

    - ``lesions``: the 14 lesion classes (task ``findings``).
    - ``global``: the PhysioNet release's global labels ``COPD``, ``Lung tumor``, ``Pneumonia``,
      ``Tuberculosis``, ``Other diseases`` (task ``diagnoses``), as Foundation X classifies
      VinDr-CXR. The Kaggle file has no global labels.
    - ``both``: the 14 lesions, then the 5 global labels (task ``findings``).

    ``No finding`` comes last in each when ``include_no_finding``. The lesion boxes (task
    ``lesions``) are the same whichever labels are chosen.

    The PhysioNet test set carries one consensus read per image, so both rules agree there.

    Splits: PhysioNet ``test`` is the official test set, its train set is split into
    ``train``/``val`` by hashed image id. The Kaggle file (train images only) is split
    train/val/test by hashed image id. VinDr's ids are per image (patient ids were removed),
    so images of one patient may fall in different splits.

    Box coordinates refer to the original DICOM pixels: DICOM images are used as they are. For
    PNG/JPEG conversions give ``size_file`` (the original width/height per image, as the popular
    downscaled conversions ship in their meta CSV) so boxes are rescaled to the stored image;
    without it, conversions must keep the original size (a box outside the image is an error).

    Args:
        root: Dataset root (either layout above).
        split: ``train``, ``val``, ``test`` or ``all``.
        box_consensus: ``all`` or ``majority`` (see above).
        labels: ``lesions``, ``global`` (PhysioNet layout only) or ``both`` (see above).
        include_no_finding: Add ``No finding`` as the last label.
        size_file: CSV under ``root``: ``image_id, width, height`` (or ``dim0`` = rows,
            ``dim1`` = columns) of the original images, for PNG/JPEG conversions.
        val_fraction: Share of training images held out as ``val``.
        test_fraction: Share held out as ``test`` (Kaggle layout only).
        seed: Seed of the hashed splits.
        missing: Absent images: ``error``, ``skip`` them, or ``keep`` (labels only, no check).
    """
    check_choice("box_consensus", box_consensus, CONSENSUS)
    check_choice("labels", labels, LABEL_SETS)
    classes = LABEL_SETS[labels] + ((NO_FINDING,) if include_no_finding else ())
    fractions = holdout_fractions(val_fraction, test_fraction)  # validated before any file is read
    reads_by_part: dict[str, dict[str, _Reads]] = {}
    if (root / "annotations").is_dir():
        layout = "physionet"
        if split != "test":
            reads_by_part["train"] = _read_physionet(root, "train", labels != "lesions")
        if split in ("test", "all"):
            reads_by_part["test"] = _read_physionet(root, "test", labels != "lesions")
    elif _csv(root, "train").is_file():
        layout = "kaggle"
        if labels != "lesions":
            raise DatasetError(
                f"vindr_cxr: labels={labels!r} needs the PhysioNet layout (annotations/image_labels_*.csv); "
                f"{root} has the Kaggle VinBigData layout (train.csv), which has no global labels: use labels='lesions'"
            )
        reads_by_part["train"] = _read_kaggle(root)
    else:
        raise DatasetError(
            f"{root}: neither annotations/ (PhysioNet VinDr-CXR) nor train.csv (Kaggle VinBigData) found"
        )
    sizes = _read_sizes(root, size_file) if size_file else None
    records = []
    for folder, reads in reads_by_part.items():
        ids = sorted(reads)
        if folder == "test":
            parts = ["test"] * len(ids)
        elif layout == "kaggle":
            parts = split_groups(ids, seed=seed, fractions=fractions)
        else:
            parts = split_groups(ids, seed=seed, fractions=holdout_fractions(val_fraction))
        index = _index_images(root / folder)
        labels_file = (
            _csv(root, "train") if layout == "kaggle" else _csv(root / "annotations", f"image_labels_{folder}")
        )
        where = label_file_name(labels_file, root)
        for image_id, part in zip(ids, parts):
            if split != "all" and part != split:
                continue
            targets, boxes, box_labels, box_readers = _consensus(reads[image_id], box_consensus, classes)
            image = index.get(image_id, root / folder / f"{image_id}.dicom")
            space = None
            if sizes is not None and image.suffix.lower() not in DICOM_SUFFIXES and image.is_file():
                if image_id not in sizes:
                    raise DatasetError(f"{root / str(size_file)}: no original size for {image_id}")
                space = sizes[image_id]
            meta = {
                "id": image_id,
                "split": part,
                "readers": sorted(reads[image_id].readers),
                "box_readers": box_readers,
            }
            records.append(
                Record(
                    image=image,
                    labels=targets,
                    boxes=boxes,
                    box_labels=box_labels,
                    box_space=space,
                    meta=meta,
                    origin=f"{where} image_id {image_id!r}",
                )
            )
    tasks = [
        TaskSpec("diagnoses" if labels == "global" else "findings", "multilabel", classes),
        TaskSpec("lesions", "detection", LESIONS),
    ]
    records = require_images(records, "vindr_cxr", missing=missing)
    return XrayDataset(records, tasks, name="vindr_cxr", root=root, split=split)
