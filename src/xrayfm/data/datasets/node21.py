"""NODE21 nodule detection training set (Sogancioglu et al., 2021; node21.grand-challenge.org).

Reads the public training set (Zenodo) as its challenge code reads it (DIAGNijmegen/node21 and
node21challenge/node21_detection_baseline, ``training_utils/dataset.py``):
``cxr_images/proccessed_data/metadata.csv`` (the folder's misspelling is the release's) with
``img_name, x, y, width, height, label``, one row per nodule box (``label`` 1) and one row with
a zero (or blank) box per nodule-free image (``label`` 0); ``img_name`` is the file name in
``cxr_images/proccessed_data/images/`` (``n0001.mha``). The 4,882 preprocessed images (1,134
with 1,476 nodules) are 1024x1024 MetaImage files (lung-cropped, energy-normalised, padded);
the boxes are in that pixel space.

MetaImage cannot go through :func:`xrayfm.io.read_xray`: PNG or JPEG conversions of the same
names next to the ``.mha`` files are used as they are; otherwise each ``.mha`` is converted once
with SimpleITK (the optional ``node21`` extra) into a 16-bit PNG cache, min-max scaled per
image, as the challenge baseline scales each image by its own maximum.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pandas as pd

from xrayfm.data.base import Record, XrayDataset
from xrayfm.data.registry import register_dataset
from xrayfm.data.splits import holdout_fractions, split_groups
from xrayfm.data.tables import (
    RootCheck,
    find_first,
    label_file_name,
    needs_conversion,
    read_table,
    require_images,
    write_converted_png,
)  # fmt: skip
from xrayfm.errors import DatasetError
from xrayfm.io import scale_to_unit
from xrayfm.tasks import TaskSpec

NODULE = "nodule"
BOX_SPACE = (1024, 1024)
LABEL_FILES = ("cxr_images/proccessed_data/metadata.csv", "proccessed_data/metadata.csv", "metadata.csv")
CONVERTED_SUFFIXES = (".png", ".jpg", ".jpeg")
MHA_SUFFIXES = (".mha", ".mhd")
INSTALL_HINT = (
    "reading NODE21 .mha images needs SimpleITK: pip install 'xrayfm[node21]' (or pip install SimpleITK), "
    "or put PNG conversions of the same names next to the .mha files"
)


def _read_boxes(path: Path) -> tuple[list[str], dict[str, str], dict[str, list[np.ndarray]]]:
    """Image ids in file order, id -> file name, and id -> xyxy boxes (empty = no nodule).

    Raises:
        DatasetError: A label other than 0/1, a label-1 row without a positive finite box, a
            label-0 row with a box, or an image with both; the message names the file and row.
    """
    df = read_table(path, required=["img_name", "x", "y", "width", "height", "label"], dtype={"img_name": str})
    names = df["img_name"].fillna("").str.strip()
    label = pd.to_numeric(df["label"], errors="coerce")
    xywh = df[["x", "y", "width", "height"]].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    pos = (label == 1).to_numpy()
    bad_label = ~label.isin([0, 1]).to_numpy() | (names == "").to_numpy()
    bad_pos = pos & ~(np.isfinite(xywh).all(1) & (xywh[:, 2] > 0) & (xywh[:, 3] > 0) & (xywh[:, :2] >= 0).all(1))
    bad_neg = ~pos & np.nan_to_num(xywh).any(1)
    for bad, why in (
        (bad_label, "needs an img_name and a label of 0 or 1"),
        (bad_pos, "label 1 needs a box with x, y >= 0 and positive width and height"),
        (bad_neg, "label 0 (no nodule) needs a zero or blank box"),
    ):
        if bad.any():
            row = int(bad.argmax())
            raise DatasetError(
                f"{path}: row {row + 2} ({names.iloc[row] or 'no img_name'}): label {df['label'].iloc[row]}, "
                f"box {xywh[row].tolist()}: {why}"
            )
    files: dict[str, str] = {}
    boxes: dict[str, list[np.ndarray]] = {}
    negatives: set[str] = set()
    for i, (name, is_pos, (x, y, w, h)) in enumerate(zip(names.tolist(), pos, xywh)):
        image_id = Path(name).stem
        if files.setdefault(image_id, name) != name:
            raise DatasetError(f"{path}: row {i + 2}: {name!r} and {files[image_id]!r} name the same image id")
        entry = boxes.setdefault(image_id, [])
        if is_pos:
            entry.append(np.asarray([x, y, x + w, y + h], np.float32))
        else:
            negatives.add(image_id)
        if entry and image_id in negatives:
            raise DatasetError(f"{path}: row {i + 2}: {name} has both a label-0 row and nodule boxes")
    return list(boxes), files, boxes


def read_mha(path: Path) -> np.ndarray:
    """Read a 2-D MetaImage (.mha/.mhd) as float32 [0, 1], min-max scaled.

    Raises:
        DatasetError: SimpleITK is not installed (the message says how to install it), or the
            file is unreadable or not a single 2-D image.
    """
    try:
        sitk = importlib.import_module("SimpleITK")
    except ImportError:
        raise DatasetError(f"{path}: {INSTALL_HINT}") from None
    try:
        arr = np.asarray(sitk.GetArrayFromImage(sitk.ReadImage(str(path))))
    except RuntimeError as exc:  # SimpleITK reports unreadable files this way
        raise DatasetError(f"{path}: unreadable MetaImage ({str(exc).strip().splitlines()[-1]})") from None
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise DatasetError(f"{path}: expected one 2-D radiograph, got an array of shape {arr.shape}")
    return scale_to_unit(arr, 0, "minmax")


def convert_mha(src: Path, dst: Path) -> Path:
    """Convert one MetaImage into a 16-bit PNG, written atomically (safe for parallel workers).

    Raises:
        DatasetError: ``src`` cannot be read (see :func:`read_mha`) or ``dst`` cannot be written.
    """
    return write_converted_png(read_mha(src), dst, "node21")


def _image_for(folder: Path, image_id: str, name: str, cache: Path) -> tuple[Path, Path | None]:
    """The file to read for one image and the MetaImage to convert into it (None: use as is)."""
    for suffix in CONVERTED_SUFFIXES:
        for candidate in (folder / f"{image_id}{suffix}", folder / f"{image_id}{suffix.upper()}"):
            if candidate.is_file():
                return candidate, None
    source = folder / name
    if source.suffix.lower() in MHA_SUFFIXES:
        return cache / f"{image_id}.png", source
    return source, None


@register_dataset(
    "node21",
    description="NODE21 (4,882 CXRs, 1,476 nodules): nodule boxes and a nodule label, hashed split",
    layout="""
    ROOT/cxr_images/proccessed_data/metadata.csv    img_name,x,y,width,height,label (1 = box row, 0 = none)
    ROOT/cxr_images/proccessed_data/images/n0001.mha (1024x1024; n0001.png conversions used when present)
    .mha files are converted once to 16-bit PNGs under cache_dir (default ROOT/png16); needs SimpleITK:
    pip install 'xrayfm[node21]'. ROOT may also be the proccessed_data folder itself.
    """,
    tasks=("multilabel", "detection"),
)
def build_node21(
    root: Path,
    split: str,
    *,
    cache_dir: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    missing: str = "error",
) -> XrayDataset:
    """Build the NODE21 training set.

    Every image was reviewed for nodules, so a nodule-free image gets an empty (0, 4) box
    target and label 0. Boxes (x, y, width, height in the 1024-px images) become xyxy with class
    ``nodule`` and are rescaled if the stored images were downscaled. NODE21 publishes no split
    and no patient ids (its images come from JSRT, PadChest, ChestX-ray14 and Open-I):
    ``train`` / ``val`` / ``test`` hash the image id, so two images of one source patient may
    fall in different splits; ``meta["patient_id"]`` is None.

    Args:
        root: Dataset root (layout above).
        split: ``train``, ``val``, ``test`` or ``all``.
        cache_dir: Folder for the PNGs converted from ``.mha`` (default ``ROOT/png16``, which
            must not be a symlink leading out of the root); a folder named here is trusted like
            the root. Conversion happens when the dataset is built, for the chosen split.
        val_fraction: Share of images held out as ``val``.
        test_fraction: Share of images held out as ``test``.
        seed: Seed of the hashed split.
        missing: Absent images: ``error``, ``skip`` them, or ``keep`` (labels only: no check and
            no conversion).

    Raises:
        DatasetError: Malformed ``metadata.csv`` (the message names the row), an image that is
            missing, or ``.mha`` images without SimpleITK installed.
    """
    fractions = holdout_fractions(val_fraction, test_fraction)  # validated before any file is read
    path = find_first(root, LABEL_FILES, "NODE21 metadata.csv")
    ids, files, boxes = _read_boxes(path)
    cache = Path(cache_dir) if cache_dir else root / "png16"
    inside = RootCheck((root,))
    if not cache_dir and not inside.contains(inside.resolve(cache)):
        raise DatasetError(
            f"node21: {cache} leads outside the dataset root {root}; pass -o cache_dir=DIR (cache_dir= in Python) "
            "to convert the .mha images into a folder of your choice"
        )
    folder = path.parent / "images"
    parts = split_groups(ids, seed=seed, fractions=fractions)
    where = label_file_name(path, root)
    records, sources = [], []
    for image_id, part in zip(ids, parts):
        if split != "all" and part != split:
            continue
        image, source = _image_for(folder, image_id, files[image_id], cache)
        records.append(
            Record(
                image=image,
                labels=np.asarray([float(bool(boxes[image_id]))], np.float32),
                boxes=np.asarray(boxes[image_id], np.float32).reshape(-1, 4),
                box_labels=np.zeros(len(boxes[image_id]), np.int64),
                box_space=BOX_SPACE,
                meta={"id": image_id, "patient_id": None, "split": part, "file": files[image_id]},
                origin=f"{where} img_name {files[image_id]!r}",
            )
        )
        sources.append(source)
    if missing != "keep":
        for rec, source in zip(records, sources):
            if source is not None and source.is_file() and needs_conversion(rec.image, source):
                convert_mha(source, rec.image)
    records = require_images(records, "node21", missing=missing)
    tasks = [TaskSpec("nodule", "multilabel", (NODULE,)), TaskSpec("nodules", "detection", (NODULE,))]
    extra = (Path(cache_dir),) if cache_dir else ()
    return XrayDataset(records, tasks, name="node21", root=root, split=split, extra_roots=extra)
