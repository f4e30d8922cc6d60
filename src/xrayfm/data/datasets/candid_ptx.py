"""CANDID-PTX (Feng et al., Radiology: AI 2021; Dunedin Hospital, New Zealand).

Reads the release as published (figshare, DOI 10.17608/k6.auckland.14173982, after its data use
agreement), as its users' loaders read it (e.g. the ptx_classification and RadFM-style CANDID
processors found on GitHub):

* ``Pneumothorax_reports.csv``: ``SOPInstanceUID``, ``EncodedPixels`` (``-1`` = no
  pneumothorax; one row per region, so an image may have several rows), with ``StudyInstanceUID``,
  ``Report`` and ``filename``, whose text before the first ``_`` (``P1234_...``) indexes the
  patient. Every image of the release has a row here.
* ``acute_rib_fracture.csv`` and ``chest_tube.csv`` (optional): ``anon_SOPUID``, ``mask_rle``
  (``SOPInstanceUID`` / ``EncodedPixels`` accepted too); an image with no mask row there is
  negative for that finding.
* The DICOMs, named by their SOPInstanceUID (with or without ``.dcm``), anywhere under the root
  (``dataset/`` as unzipped).

Masks are SIIM-ACR stage-1 run-length strings: column-major, each start an offset from the end of
the previous run, over the DICOM's pixel grid (1024x1024 in the release).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from xrayfm.data.base import Record, XrayDataset
from xrayfm.data.datasets.siim_acr import check_rle
from xrayfm.data.masks import NO_MASK_RLE, RleMask, mask_boxes, parse_rle
from xrayfm.data.registry import check_choice, register_dataset
from xrayfm.data.splits import holdout_fractions, split_groups
from xrayfm.data.tables import find_first, label_file_name, read_table, require_images
from xrayfm.errors import DatasetError
from xrayfm.io import probe_image
from xrayfm.tasks import TaskSpec

PNEUMOTHORAX = "Pneumothorax"
REPORTS_FILES = ("Pneumothorax_reports.csv", "Pneumothorax_reports.csv.gz")
#: Optional finding -> its published file names (first found is read).
EXTRA_FILES: dict[str, tuple[str, ...]] = {
    "Rib Fracture": ("acute_rib_fracture.csv", "Rib_fracture_mask_rle.csv"),
    "Chest Tube": ("chest_tube.csv",),
}
ID_COLUMNS = ("anon_SOPUID", "SOPInstanceUID")
RLE_COLUMNS = ("mask_rle", "EncodedPixels")
IMAGE_SUFFIXES = (".dcm", ".dicom", ".png", ".jpg", ".jpeg")
#: The release's image size, assumed for images that are absent (``missing="keep"``).
NOMINAL_SIZE = (1024, 1024)
UNKNOWN_MODES = ("error", "skip")

Runs = list[tuple[int, str]]  # (row number in the file, RLE string) of one image's regions


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) an image's header declares, read without decoding its pixels."""
    probe = probe_image(path)
    return probe.width, probe.height


@dataclass(frozen=True)
class SizedRleMask:
    """Union of run-length strings on the grid of one image, whose size may be read when needed.

    Attributes:
        rles: The image's RLE strings (empty: a mask of zeros).
        image: The image the runs belong to.
        size: (width, height) of the grid; None reads it from ``image``'s header when called.
    """

    rles: tuple[str, ...]
    image: Path
    size: tuple[int, int] | None = None

    @property
    def files(self) -> tuple[Path, ...]:
        """No file beyond the image itself (checked as the record's image)."""
        return ()

    def __call__(self) -> np.ndarray:
        width, height = self.size or image_size(self.image)
        return RleMask(self.rles, width, height)()


def _column(df_columns: Iterable[str], names: tuple[str, ...], path: Path) -> str:
    cols = list(df_columns)
    found = next((c for c in names if c in cols), None)
    if found is None:
        raise DatasetError(f"{path}: missing column {' or '.join(names)}; found {cols}")
    return found


def _read_runs(
    path: Path, id_names: tuple[str, ...], rle_names: tuple[str, ...]
) -> tuple[dict[str, Runs], pd.DataFrame]:
    """Image id -> its mask rows (empty = negative), and the table (for further columns).

    Raises:
        DatasetError: A blank id, a malformed RLE string, or an image with both a ``-1`` row and
            a mask; the message names the file and row.
    """
    df = read_table(path, dtype=str, keep_default_na=False)
    id_col, rle_col = _column(df.columns, id_names, path), _column(df.columns, rle_names, path)
    out: dict[str, Runs] = {}
    negative: set[str] = set()
    for i, (uid, rle) in enumerate(zip(df[id_col].str.strip().tolist(), df[rle_col].str.strip().tolist())):
        row = i + 2
        if not uid:
            raise DatasetError(f"{path}: row {row}: blank {id_col}")
        parse_rle_at(rle, path, row, uid)
        runs = out.setdefault(uid, [])
        if rle in NO_MASK_RLE:
            negative.add(uid)
        else:
            runs.append((row, rle))
        if runs and uid in negative:
            raise DatasetError(f"{path}: row {row}: {uid} has both a '-1' row and a mask")
    return out, df


def parse_rle_at(rle: str, path: Path, row: int, uid: str) -> None:
    """Check an RLE string's syntax (:func:`~xrayfm.data.masks.parse_rle`) and signs; errors name file and row."""
    try:
        starts, lengths = parse_rle(rle)
        if (starts < 0).any() or (lengths < 0).any():
            raise DatasetError(f"malformed RLE string (negative start or length): {rle[:60]!r}")
    except DatasetError as exc:
        raise DatasetError(f"{path}: row {row} ({uid}): {exc}") from None


def _patients(df: pd.DataFrame, path: Path, uids: Iterable[str]) -> dict[str, str | None]:
    """SOPInstanceUID -> patient index from ``filename`` (``P1234_...`` -> ``P1234``), else None."""
    if "filename" not in df.columns:
        return dict.fromkeys(uids)
    out: dict[str, str | None] = {}
    for i, (uid, name) in enumerate(zip(df["SOPInstanceUID"].str.strip(), df["filename"].str.strip())):
        patient = name.split("_", 1)[0] or None
        if out.setdefault(uid, patient) != patient:
            raise DatasetError(f"{path}: row {i + 2}: {uid} has two patients, {out[uid]!r} and {patient!r}")
    return out


def _index_images(root: Path, uids: set[str]) -> dict[str, Path]:
    """SOPInstanceUID -> file, over every file under ``root`` named ``<uid>`` or ``<uid>.dcm``/.png..."""
    index: dict[str, Path] = {}
    for p in sorted(root.rglob("*")):
        key = p.name if p.name in uids else p.stem if p.suffix.lower() in IMAGE_SUFFIXES else None
        if key in uids and p.is_file():
            index.setdefault(key, p)
    return index


def _boxes(runs: Runs, size: tuple[int, int], path: Path) -> np.ndarray:
    """Boxes of the union mask of ``runs`` on a ``size`` grid; runs leaving it name their row."""
    width, height = size
    for row, rle in runs:
        try:
            check_rle(rle, width, height)
        except DatasetError as exc:
            raise DatasetError(f"{path}: row {row}: {exc}") from None
    return mask_boxes(RleMask(tuple(r for _, r in runs), width, height)()[0])


@register_dataset(
    "candid_ptx",
    description="CANDID-PTX (Dunedin): pneumothorax masks, boxes and labels (+ rib fracture, chest tube)",
    layout="""
    ROOT/Pneumothorax_reports.csv     SOPInstanceUID, EncodedPixels ("-1" = none), filename (P<patient>_...)
    ROOT/acute_rib_fracture.csv       anon_SOPUID, mask_rle  (optional: adds the Rib Fracture label)
    ROOT/chest_tube.csv               anon_SOPUID, mask_rle  (optional: adds the Chest Tube label)
    ROOT/**/<SOPInstanceUID>[.dcm]    DICOMs (1024x1024); .png conversions must keep the size
    Masks: SIIM-style relative, column-major RLE. Boxes: connected components of the mask.
    """,
    tasks=("multilabel", "segmentation", "detection"),
)
def build_candid_ptx(
    root: Path,
    split: str,
    *,
    mask_size: tuple[int, int] | None = None,
    unknown_ids: str = "error",
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    missing: str = "error",
) -> XrayDataset:
    """Build CANDID-PTX.

    Labels: ``Pneumothorax`` (1 when the image has a mask row), then ``Rib Fracture`` and
    ``Chest Tube`` only when their files are present (a class whose file is absent is left out,
    not filled with unknowns). The segmentation target is one channel, the union of the image's
    pneumothorax rows. Detection boxes are derived from that mask, one per 8-connected component
    (as Foundation X derives its CANDID-PTX localization boxes from the masks, rather than one
    box per RLE row: overlapping rows give one box); a negative image has an empty box target.
    Boxes are computed when the dataset is built (a few ms per positive image).

    No official split is published: ``train`` / ``val`` / ``test`` hash the patient index of the
    ``filename`` column, so a patient's images stay together; without that column, the
    SOPInstanceUID (and images of one patient may then fall in different splits).

    Args:
        root: Dataset root (layout above).
        split: ``train``, ``val``, ``test`` or ``all``.
        mask_size: (width, height) the RLE strings were encoded on; default each image's own size,
            read from its header (1024x1024 assumed for absent images with ``missing="keep"``).
        unknown_ids: Rows of the rib-fracture / chest-tube files naming an image absent from
            ``Pneumothorax_reports.csv``: ``error`` or ``skip`` them.
        val_fraction: Share of patients held out as ``val``.
        test_fraction: Share of patients held out as ``test``.
        seed: Seed of the hashed split.
        missing: Absent images: ``error``, ``skip`` them, or ``keep`` (labels only, no check).

    Raises:
        DatasetError: A label file is missing or malformed (blank id, bad RLE, runs leaving the
            image, ``-1`` and a mask for one image, an unknown image id); the message names the
            file and row.
    """
    check_choice("unknown_ids", unknown_ids, UNKNOWN_MODES)
    fractions = holdout_fractions(val_fraction, test_fraction)  # validated before any file is read
    size = None if mask_size is None else (int(mask_size[0]), int(mask_size[1]))
    path = find_first(root, REPORTS_FILES, "CANDID-PTX Pneumothorax_reports.csv")
    ptx, reports = _read_runs(path, ("SOPInstanceUID",), ("EncodedPixels",))
    classes = [PNEUMOTHORAX]
    positives: list[set[str]] = []
    for finding, names in EXTRA_FILES.items():
        extra = next((root / n for n in names if (root / n).exists()), None)
        if extra is None:
            continue
        runs, table = _read_runs(extra, ID_COLUMNS, RLE_COLUMNS)
        id_col = _column(table.columns, ID_COLUMNS, extra)
        unknown = [(i + 2, u) for i, u in enumerate(table[id_col].str.strip()) if u not in ptx]
        if unknown and unknown_ids == "error":
            raise DatasetError(
                f"{extra}: row {unknown[0][0]}: {unknown[0][1]} is not in {path.name} ({len(unknown)} such rows); "
                "pass -o unknown_ids=skip (unknown_ids='skip' in Python) to ignore them"
            )
        classes.append(finding)
        positives.append({u for u, r in runs.items() if r and u in ptx})
    uids = list(ptx)
    patients = _patients(reports, path, uids)
    parts = split_groups([patients[u] or u for u in uids], seed=seed, fractions=fractions)
    index = _index_images(root, set(uids))
    where = label_file_name(path, root)
    records = []
    for uid, part in zip(uids, parts):
        if split != "all" and part != split:
            continue
        labels = [float(bool(ptx[uid]))] + [float(uid in pos) for pos in positives]
        image = index.get(uid, root / "dataset" / f"{uid}.dcm")
        records.append(
            Record(
                image=image,
                labels=np.asarray(labels, np.float32),
                mask=SizedRleMask(tuple(r for _, r in ptx[uid]), image, size),
                meta={"id": uid, "patient_id": patients[uid], "split": part, "regions": len(ptx[uid])},
                origin=f"{where} SOPInstanceUID {uid!r}",
            )
        )
    records = require_images(records, "candid_ptx", missing=missing)
    for rec in records:  # boxes need the grid: read the header of positive images only
        runs = ptx[rec.meta["id"]]
        rec.boxes = np.zeros((0, 4), np.float32)
        if runs:
            grid = size or (image_size(rec.image) if rec.image.is_file() else NOMINAL_SIZE)
            rec.mask = SizedRleMask(tuple(r for _, r in runs), rec.image, grid)
            rec.boxes = _boxes(runs, grid, path)
            rec.box_space = grid
        rec.box_labels = np.zeros(len(rec.boxes), np.int64)
    tasks = [
        TaskSpec("candid_findings", "multilabel", tuple(classes)),
        TaskSpec("pneumothorax_mask", "segmentation", (PNEUMOTHORAX,)),
        TaskSpec("pneumothorax_boxes", "detection", (PNEUMOTHORAX,)),
    ]
    return XrayDataset(records, tasks, name="candid_ptx", root=root, split=split)
