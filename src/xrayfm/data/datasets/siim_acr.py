"""SIIM-ACR Pneumothorax Segmentation (Kaggle 2019).

Reads the release as published: ``train-rle.csv`` (header ``ImageId, EncodedPixels`` with a
space before the second name; ``-1`` = no pneumothorax; one row per region, so an image may
have several rows) and the DICOMs in ``dicom-images-train/<study>/<series>/<ImageId>.dcm``.
Masks are run-length strings over the 1024x1024 DICOM, column-major, each start relative to
the end of the previous run (stage 1; the stage-2 file ``stage_2_train.csv`` uses absolute,
1-based starts: ``rle="absolute"``). No boxes are published; ``boxes=True`` derives them from
the masks, as Foundation X does for its SIIM-ACR localization task.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xrayfm.data.base import Record, XrayDataset
from xrayfm.data.masks import NO_MASK_RLE, RleMask, mask_boxes, parse_rle
from xrayfm.data.registry import check_choice, register_dataset
from xrayfm.data.splits import holdout_fractions, split_groups
from xrayfm.data.tables import find_first, label_file_name, read_table, require_images
from xrayfm.errors import DatasetError
from xrayfm.tasks import TaskSpec

CLASSES: tuple[str, ...] = ("Pneumothorax",)
LABEL_FILES = ("train-rle.csv", "train-rle.csv.gz", "siim-pneumothorax-train-rle.csv.gz")
RLE_MODES = ("relative", "absolute")
IMAGE_SUFFIXES = (".dcm", ".dicom", ".png")


def check_rle(text: str, width: int, height: int, *, relative: bool = True) -> int:
    """Validate a run-length string without decoding it.

    Args:
        text: Space-separated ``start length`` pairs (see :func:`~xrayfm.data.masks.parse_rle`).
        width: Image width.
        height: Image height.
        relative: Starts are offsets from the end of the previous run (stage 1); False for
            absolute, 1-based starts (stage 2).

    Returns:
        The sum of the run lengths (0 for no mask).

    Raises:
        DatasetError: Non-integer tokens, an odd count, negative values or runs leaving the
            ``width`` x ``height`` image (the message names the fault, not the file).
    """
    starts, lengths = parse_rle(text)
    if (lengths < 0).any() or (starts < (0 if relative else 1)).any():
        raise DatasetError(f"malformed RLE string (negative start or length): {str(text).strip()[:60]!r}")
    ends = np.cumsum(starts + lengths) if relative else starts - 1 + lengths
    if ends.size and ends.max() > width * height:
        raise DatasetError(f"RLE runs end at pixel {int(ends.max())}, beyond a {width}x{height} image")
    return int(lengths.sum())


def _index_images(root: Path) -> dict[str, Path]:
    """ImageId -> file over ``dicom-images-train/**`` (globbed once) and a flat ``train/``."""
    index: dict[str, Path] = {}
    nested = root / "dicom-images-train"
    if nested.is_dir():
        for p in sorted(nested.rglob("*.dcm")):
            index.setdefault(p.stem, p)
    flat = root / "train"
    if flat.is_dir():
        for p in sorted(flat.iterdir()):
            if p.suffix.lower() in IMAGE_SUFFIXES:
                index.setdefault(p.stem, p)
    return index


def _read_rles(path: Path, width: int, height: int, relative: bool) -> dict[str, tuple[str, ...]]:
    """ImageId -> its RLE strings (empty tuple = no pneumothorax), in file order."""
    df = read_table(path, required=["ImageId", "EncodedPixels"], dtype=str, keep_default_na=False)
    out: dict[str, list[str]] = {}
    negative: set[str] = set()
    for i, (image_id, rle) in enumerate(zip(df["ImageId"].str.strip().tolist(), df["EncodedPixels"].tolist())):
        rle = str(rle).strip()
        try:
            check_rle(rle, width, height, relative=relative)
        except DatasetError as exc:
            raise DatasetError(f"{path}: row {i + 2} ({image_id}): {exc}") from None
        runs = out.setdefault(image_id, [])
        if rle in NO_MASK_RLE:
            negative.add(image_id)
        else:
            runs.append(rle)
        if runs and image_id in negative:
            raise DatasetError(f"{path}: row {i + 2}: {image_id} has both a '-1' row and a mask")
    return {k: tuple(v) for k, v in out.items()}


@register_dataset(
    "siim_acr",
    description="SIIM-ACR Pneumothorax: RLE masks (1024 px) and a pneumothorax label, hashed split",
    layout="""
    ROOT/train-rle.csv                         ImageId, EncodedPixels  ("-1" = no pneumothorax)
    ROOT/dicom-images-train/<study>/<series>/<ImageId>.dcm
    or ROOT/train/<ImageId>.dcm | .png         (flat copies; PNGs must keep the 1024x1024 size)
    """,
    tasks=("multilabel", "segmentation", "detection"),
)
def build_siim_acr(
    root: Path,
    split: str,
    *,
    labels_file: str | None = None,
    rle: str = "relative",
    mask_size: tuple[int, int] = (1024, 1024),
    boxes: bool = False,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    missing: str = "error",
) -> XrayDataset:
    """Build SIIM-ACR Pneumothorax.

    Rows of one ImageId are merged into one mask channel (their union; regions may overlap).
    The label ``Pneumothorax`` is 1 when the image has a mask, else 0. The split hashes the
    ImageId: the label file names no patient, and reading every DICOM's PatientID to group
    images was judged too costly, so images of one patient may fall in different splits.

    Args:
        root: Dataset root (layout above).
        split: ``train``, ``val``, ``test`` or ``all``.
        labels_file: RLE CSV under ``root`` (default: ``train-rle.csv`` or its .gz).
        rle: ``relative`` (stage-1 ``train-rle.csv``) or ``absolute`` (stage-2 file).
        mask_size: (width, height) the RLE strings were encoded on; the stored image must have
            that size.
        boxes: Add a ``pneumothorax_boxes`` detection task: one box per 8-connected component of
            the image's union mask (overlapping regions give one box), in ``mask_size`` pixels; a
            negative image has no boxes. The masks of positive images are decoded when the
            dataset is built (about 5 ms each: some 15 s for the whole release on two cores).
        val_fraction: Share of images held out as ``val``.
        test_fraction: Share of images held out as ``test``.
        seed: Seed of the hashed split.
        missing: Absent images: ``error``, ``skip`` them, or ``keep`` (labels only, no check).
    """
    check_choice("rle", rle, RLE_MODES)
    fractions = holdout_fractions(val_fraction, test_fraction)  # validated before any file is read
    width, height = (int(v) for v in mask_size)
    path = root / labels_file if labels_file else find_first(root, LABEL_FILES, "SIIM-ACR RLE label file")
    rles = _read_rles(path, width, height, rle == "relative")
    ids = list(rles)
    parts = split_groups(ids, seed=seed, fractions=fractions)
    index = _index_images(root)
    where = label_file_name(path, root)
    records = []
    for image_id, part in zip(ids, parts):
        if split != "all" and part != split:
            continue
        runs = rles[image_id]
        records.append(
            Record(
                image=index.get(image_id, root / "dicom-images-train" / f"{image_id}.dcm"),
                labels=np.asarray([float(bool(runs))], np.float32),
                mask=RleMask(runs, width, height, relative=rle == "relative"),
                meta={"id": image_id, "regions": len(runs), "split": part},
                origin=f"{where} ImageId {image_id!r}",
            )
        )
    tasks = [TaskSpec("pneumothorax", "multilabel", CLASSES), TaskSpec("pneumothorax_mask", "segmentation", CLASSES)]
    records = require_images(records, "siim_acr", missing=missing)
    if boxes:
        tasks.append(TaskSpec("pneumothorax_boxes", "detection", CLASSES))
        for rec in records:
            rec.boxes = mask_boxes(rec.mask()[0]) if rec.meta["regions"] else np.zeros((0, 4), np.float32)
            rec.box_labels = np.zeros(len(rec.boxes), np.int64)
            rec.box_space = (width, height)
    return XrayDataset(records, tasks, name="siim_acr", root=root, split=split)
