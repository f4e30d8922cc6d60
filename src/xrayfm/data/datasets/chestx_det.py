"""ChestX-Det (Lian et al., "A Structure-Aware Relation Network for Thoracic Diseases Detection and
Segmentation", IEEE TMI 2021), as published by Deepwise-AILab/ChestX-Det-Dataset on GitHub.

The repository (checked at commit ``d82eb07``) holds ``ChestX_Det_train.json`` (3025 images) and
``ChestX_Det_test.json`` (553 images): each a list of ``{"file_name": "36200.png", "syms": [class
names], "boxes": [[x1, y1, x2, y2], ...], "polygons": [[[x, y], ...], ...]}`` where box ``i`` and
polygon ``i`` outline the finding ``syms[i]``; an image without findings has three empty lists.
Images (NIH ChestX-ray14 radiographs, renamed, 1024x1024 PNG) come from ``train_data.zip`` and
``test_data.zip``, unpacked as ``train/`` and ``test/``. Boxes and polygons are in those 1024-px
pixels. Thirteen classes: Atelectasis, Calcification, Cardiomegaly, Consolidation, Diffuse
Nodule, Effusion, Emphysema, Fibrosis, Fracture, Mass, Nodule, Pleural Thickening, Pneumothorax.

Foundation X uses it for classification, localization and segmentation. Its segmentation code
numbers classes in ``os.listdir`` order (machine-dependent); here every task uses the sorted
class order above.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from xrayfm.data.base import Record, XrayDataset
from xrayfm.data.registry import register_dataset
from xrayfm.data.splits import holdout_fractions, split_groups
from xrayfm.data.tables import label_file_name, require_images
from xrayfm.errors import DatasetError, ImageReadError
from xrayfm.io.limits import DEFAULT_LIMITS
from xrayfm.tasks import TaskSpec

CLASSES: tuple[str, ...] = (
    "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "Diffuse Nodule", "Effusion", "Emphysema",
    "Fibrosis", "Fracture", "Mass", "Nodule", "Pleural Thickening", "Pneumothorax",
)  # fmt: skip
SPACE = (1024, 1024)  # (width, height) of the published images, where boxes and polygons lie
LABEL_FILES = {"train": "ChestX_Det_train.json", "test": "ChestX_Det_test.json"}
TOL = 1.0  # pixels a box or polygon point may lie outside the image


@dataclass(frozen=True)
class PolygonMask:
    """One channel per class, the union of that class's polygons, drawn with PIL at the image's size.

    Polygons are given in ``space`` pixels and scaled to the stored image (its header is read
    for the size), so a downscaled conversion gets masks in its own pixels, like its boxes.

    Attributes:
        image: The image the mask belongs to.
        polygons: ``(class index, ((x, y), ...))`` per finding.
        num_classes: Number of channels.
        space: (width, height) the coordinates refer to.
    """

    image: Path
    polygons: tuple[tuple[int, tuple[tuple[float, float], ...]], ...]
    num_classes: int
    space: tuple[int, int] = SPACE

    @property
    def files(self) -> tuple[Path, ...]:
        """The file this source reads (only the image header, for its size)."""
        return (self.image,)

    def __call__(self) -> np.ndarray:
        DEFAULT_LIMITS.check_file(self.image)
        try:
            with Image.open(self.image) as im:
                w, h = im.size
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageReadError(f"{self.image}: unreadable image ({exc})") from None
        DEFAULT_LIMITS.check_dims(self.image, w, h)
        sx, sy = w / self.space[0], h / self.space[1]
        planes = [Image.new("1", (w, h), 0) for _ in range(self.num_classes)]
        for k, points in self.polygons:
            ImageDraw.Draw(planes[k]).polygon([(x * sx, y * sy) for x, y in points], fill=1, outline=1)
        return np.stack([np.asarray(p, dtype=np.uint8) for p in planes])


def _number_list(value: Any, n: int | None) -> list[float] | None:
    """``value`` as a list of finite numbers (of length ``n`` if given), else None."""
    if not isinstance(value, (list, tuple)) or (n is not None and len(value) != n):
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return None
    out = [float(v) for v in value]
    return out if np.isfinite(out).all() else None


def _inside(x: float, y: float) -> bool:
    return -TOL <= x <= SPACE[0] + TOL and -TOL <= y <= SPACE[1] + TOL


def _parse_entry(entry: Any, where: str) -> tuple[str, list[int], list[list[float]], list[list[tuple[float, float]]]]:
    """Validated ``file_name``, class indices, xyxy boxes and polygons of one json entry."""
    if not isinstance(entry, dict) or not isinstance(entry.get("file_name"), str) or not entry["file_name"]:
        raise DatasetError(f"{where}: not an object with a file_name")
    name = entry["file_name"]
    fields = {k: entry.get(k) for k in ("syms", "boxes", "polygons")}
    if not all(isinstance(v, list) for v in fields.values()):
        raise DatasetError(f"{where} ({name}): syms, boxes and polygons must be lists")
    syms, boxes, polygons = fields["syms"], fields["boxes"], fields["polygons"]
    if not len(syms) == len(boxes) == len(polygons):
        raise DatasetError(
            f"{where} ({name}): {len(syms)} syms, {len(boxes)} boxes and {len(polygons)} polygons; expected one each"
        )
    unknown = [s for s in syms if s not in CLASSES]
    if unknown:
        raise DatasetError(f"{where} ({name}): unknown class {unknown[0]!r}; expected one of {list(CLASSES)}")
    xyxy = []
    for j, box in enumerate(boxes):
        b = _number_list(box, 4)
        if b is None or b[2] <= b[0] or b[3] <= b[1]:
            raise DatasetError(f"{where} ({name}): box {j} {box!r} is not [x1, y1, x2, y2] with x1 < x2, y1 < y2")
        if not (_inside(b[0], b[1]) and _inside(b[2], b[3])):
            raise DatasetError(f"{where} ({name}): box {j} {box!r} lies outside the {SPACE[0]}x{SPACE[1]} image")
        xyxy.append(b)
    shapes = []
    for j, polygon in enumerate(polygons):
        points = [_number_list(p, 2) for p in polygon] if isinstance(polygon, list) else [None]
        if any(p is None for p in points) or len(points) < 3:
            raise DatasetError(f"{where} ({name}): polygon {j} is not a list of at least 3 [x, y] points")
        if not all(_inside(*p) for p in points):
            raise DatasetError(f"{where} ({name}): polygon {j} has a point outside the {SPACE[0]}x{SPACE[1]} image")
        shapes.append([(p[0], p[1]) for p in points])
    return name, [CLASSES.index(s) for s in syms], xyxy, shapes


def _read_part(root: Path, part: str, masks: bool) -> list[Record]:
    """Records of one official json (``train`` or ``test``), before any split is chosen."""
    path = root / LABEL_FILES[part]
    if not path.is_file():
        raise DatasetError(
            f"chestx_det: {path} not found; expected {' and '.join(LABEL_FILES.values())} (from "
            "github.com/Deepwise-AILab/ChestX-Det-Dataset) with the images in train/ and test/"
        )
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read json ({type(exc).__name__}: {exc})") from None
    if not isinstance(entries, list):
        raise DatasetError(f"{path}: expected a list of image entries, got {type(entries).__name__}")
    where = label_file_name(path, root)
    records: list[Record] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        name, classes, boxes, polygons = _parse_entry(entry, f"{path}: entry {i}")
        if name in seen:
            raise DatasetError(f"{path}: entry {i}: {name} appears twice")
        seen.add(name)
        image = root / part / name
        labels = np.zeros(len(CLASSES), np.float32)
        labels[classes] = 1.0
        shapes = tuple((k, tuple(p)) for k, p in zip(classes, polygons))
        records.append(
            Record(
                image=image,
                labels=labels,
                boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
                box_labels=np.asarray(classes, np.int64),
                box_space=SPACE,
                mask=PolygonMask(image, shapes, len(CLASSES)) if masks else None,
                meta={"id": Path(name).stem, "patient_id": Path(name).stem, "split": part},
                origin=f"{where} entry {i}",
            )
        )
    return records


@register_dataset(
    "chestx_det",
    description="ChestX-Det: 13 findings as labels, boxes and polygon masks; official train/test, hashed val",
    layout="""
    ROOT/ChestX_Det_train.json, ChestX_Det_test.json   [{file_name, syms, boxes (xyxy), polygons}]
    ROOT/train/<file_name>, ROOT/test/<file_name>       (1024x1024 PNG; boxes/polygons in that space)
    val = a hashed share of the train json (val_fraction).
    """,
    tasks=("multilabel", "detection", "segmentation"),
)
def build_chestx_det(
    root: Path,
    split: str,
    *,
    masks: bool = True,
    val_fraction: float = 0.1,
    seed: int = 0,
    missing: str = "error",
) -> XrayDataset:
    """Build ChestX-Det.

    Labels are the image's ``syms`` (all zero for an image without findings), boxes keep one
    entry per finding, and masks (13 channels, in :data:`CLASSES` order) are drawn from the
    polygons when a sample is loaded. Boxes and polygons are rescaled if the stored images
    were downscaled. ``test`` is the official test json; ``val`` is held out of the train json
    by hashed image id. File names are renamed NIH images with no patient id, so one patient's
    images may fall in both ``train`` and ``val``.

    Args:
        root: Dataset root (layout above).
        split: ``train``, ``val``, ``test`` or ``all``.
        masks: Attach the segmentation task (polygons rasterised lazily with PIL).
        val_fraction: Share of the train json held out as ``val``.
        seed: Seed of that hashed holdout.
        missing: Absent images: ``error``, ``skip`` them, or ``keep`` (labels only, no check).

    Raises:
        DatasetError: A json file missing or malformed; an entry with an unknown class, a box with
            no size or outside the 1024-px image, a polygon with fewer than 3 points, counts of
            syms / boxes / polygons that differ, a repeated file name; images missing.
    """
    if not isinstance(masks, bool):
        raise DatasetError(f"chestx_det: masks must be True or False, got {masks!r}")
    fractions = holdout_fractions(val_fraction)  # validated before any file is read
    records: list[Record] = []
    if split != "test":
        train = _read_part(root, "train", masks)
        parts = split_groups([r.meta["id"] for r in train], seed=seed, fractions=fractions)
        for rec, part in zip(train, parts):
            rec.meta["split"] = part
        records += [r for r in train if split in ("all", r.meta["split"])]
    if split in ("test", "all"):
        records += _read_part(root, "test", masks)
    tasks = [TaskSpec("findings", "multilabel", CLASSES), TaskSpec("lesions", "detection", CLASSES)]
    if masks:
        tasks.append(TaskSpec("lesion_masks", "segmentation", CLASSES))
    records = require_images(records, "chestx_det", missing=missing)
    return XrayDataset(records, tasks, name="chestx_det", root=root, split=split)
