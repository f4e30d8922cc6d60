"""Generic layouts for one's own data: class folders, COCO detection json, image + mask folders.

* ``image_folder``: ``ROOT/<class>/**/<image>`` (torchvision ImageFolder style), optionally
  under ``ROOT/{train,val,test}/``.
* ``coco``: a COCO detection file (``images``, ``annotations`` with ``bbox = [x, y, w, h]``,
  ``categories``), validated when the dataset is built.
* ``mask_folder``: ``ROOT/images/<stem>.<ext>`` with ``ROOT/masks/<stem><suffix>.png``, binary
  or label-map masks.

Without split folders, images are split 70/10/20 by a hash of their group: the file path, or
a patient id taken from the file name with ``group_regex``.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from xrayfm.data.base import Record, XrayDataset
from xrayfm.data.masks import FileMasks, LabelMapMask
from xrayfm.data.registry import register_dataset
from xrayfm.data.splits import split_groups
from xrayfm.data.tables import label_file_name, require_images, select_split
from xrayfm.errors import DatasetError
from xrayfm.tasks import TaskSpec

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".tif", ".tiff", ".bmp")
SPLIT_DIRS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
COCO_FILES = ("annotations.json", "annotations/instances_default.json", "_annotations.coco.json")


def _visible(path: Path, base: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(base).parts)


def _images_under(folder: Path, extensions: tuple[str, ...]) -> list[Path]:
    exts = {e.lower() for e in extensions}
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in exts and p.is_file() and _visible(p, folder))


def _split_dirs(root: Path) -> dict[str, Path]:
    """``{split: folder}`` for the train/val/test folders present directly under ``root``."""
    found: dict[str, Path] = {}
    for name, split in SPLIT_DIRS.items():
        if (root / name).is_dir():
            if split in found:
                raise DatasetError(f"{root}: both {found[split].name}/ and {name}/ hold the {split} split")
            found[split] = root / name
    return found if "train" in found or "test" in found else {}


def _hashed(ids: list[str], group_regex: str | None, seed: int) -> list[str]:
    if group_regex is None:
        return split_groups(ids, seed=seed)
    pattern = re.compile(group_regex)
    groups = []
    for i in ids:
        m = pattern.search(Path(i).name)
        groups.append(m.group(1) if m and m.groups() else m.group(0) if m else i)
    return split_groups(groups, seed=seed)


def _folder_or_hashed_split(
    records: list[Record], split: str, split_dirs: dict[str, Path], group_regex: str | None, seed: int
) -> list[Record]:
    """The records of ``split``: split folders decide when there are any, else a hash of each
    record's ``path_rel`` (or of the patient id ``group_regex`` takes from it)."""
    if not split_dirs:
        for rec, s in zip(records, _hashed([r.meta["path_rel"] for r in records], group_regex, seed)):
            rec.meta["split"] = s
    return select_split(records, split)


@register_dataset(
    "image_folder",
    description="Generic: one folder per class (multiclass), optional train/val/test folders",
    layout="""
    ROOT/<class>/**/*.png|jpg|dcm...               classes = sorted folder names
    or ROOT/{train,val,test}/<class>/**/*.png...   (val/ may be named valid/ or validation/)
    Without split folders: 70/10/20 split hashed by file path (or by group_regex on the name).
    """,
    tasks=("multiclass",),
)
def build_image_folder(
    root: Path,
    split: str,
    *,
    classes: tuple[str, ...] | None = None,
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
    group_regex: str | None = None,
    seed: int = 0,
) -> XrayDataset:
    """Build a class-folder dataset.

    Args:
        root: Dataset root (layout above).
        split: ``train``, ``val``, ``test`` or ``all``.
        classes: Class order (default: sorted folder names); a folder not listed is an error.
        extensions: Image file extensions to collect (case-insensitive).
        group_regex: Regex applied to file names whose first group (or whole match) is the
            patient id, so one patient's images share a split (e.g. ``r"^(person\\d+)_"``).
        seed: Seed of the hashed split.
    """
    classes = (classes,) if isinstance(classes, str) else classes
    extensions = (extensions,) if isinstance(extensions, str) else tuple(extensions)
    split_dirs = _split_dirs(root)
    bases = split_dirs or {"": root}
    class_dirs = {
        (s, d.name): d
        for s, base in bases.items()
        for d in sorted(base.iterdir())
        if d.is_dir() and not d.name.startswith(".")
    }
    names = sorted({c for _, c in class_dirs})
    if classes is not None:
        extra = sorted(set(names) - set(classes))
        if extra:
            raise DatasetError(f"image_folder: folders {extra} under {root} are not among classes {list(classes)}")
        names = list(classes)
    if not names:
        raise DatasetError(f"image_folder: no class folder under {root}")
    records = []
    for (s, cls), folder in class_dirs.items():
        label = (np.asarray(names) == cls).astype(np.float32)
        for img in _images_under(folder, extensions):
            rel = img.relative_to(root).as_posix()
            meta = {"id": img.stem, "class": cls, "split": s, "path_rel": rel}
            records.append(Record(image=img, labels=label, meta=meta))
    if not records:
        raise DatasetError(f"image_folder: no image with extension {list(extensions)} under {root}")
    records = _folder_or_hashed_split(records, split, split_dirs, group_regex, seed)
    task = TaskSpec("classes", "multiclass", tuple(names))
    return XrayDataset(records, [task], name="image_folder", root=root, split=split)


def load_coco_json(path: Path) -> dict[str, Any]:
    """A COCO detection file's content, checked to hold the ``images`` / ``annotations`` / ``categories`` lists."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read COCO json ({type(exc).__name__}: {exc})") from None
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)]
    if missing:
        raise DatasetError(f"{path}: not a COCO detection file (no list {missing})")
    return data


def coco_boxes(
    path: Path, data: dict[str, Any], include_crowd: bool, tol: float
) -> tuple[tuple[str, ...], dict[Any, dict[str, Any]], dict[Any, list[tuple[np.ndarray, int]]]]:
    """Validated categories (id order), images by id and xyxy boxes with class index by image id."""
    try:
        cats = sorted((c["id"], str(c["name"])) for c in data["categories"])
        images = {im["id"]: im for im in data["images"] if str(im["file_name"])}
        sizes = {k: (float(im["width"]), float(im["height"])) for k, im in images.items()}
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetError(f"{path}: malformed images/categories entry ({type(exc).__name__}: {exc})") from None
    index = {cid: i for i, (cid, _) in enumerate(cats)}
    boxes: dict[Any, list[tuple[np.ndarray, int]]] = defaultdict(list)
    for ann in data["annotations"]:
        aid = ann.get("id", "?")
        if ann.get("image_id") not in images:
            raise DatasetError(f"{path}: annotation {aid}: unknown image_id {ann.get('image_id')!r}")
        if ann.get("category_id") not in index:
            raise DatasetError(f"{path}: annotation {aid}: unknown category_id {ann.get('category_id')!r}")
        if ann.get("iscrowd", 0) and not include_crowd:
            continue
        try:
            x, y, w, h = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError):
            raise DatasetError(f"{path}: annotation {aid}: bbox must be [x, y, width, height]") from None
        width, height = sizes[ann["image_id"]]
        if not (np.isfinite([x, y, w, h]).all() and w > 0 and h > 0):
            raise DatasetError(f"{path}: annotation {aid}: bbox {[x, y, w, h]} has no positive size")
        if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
            raise DatasetError(
                f"{path}: annotation {aid}: bbox {[x, y, w, h]} lies outside its {width:g}x{height:g} image "
                f"{images[ann['image_id']]['file_name']}"
            )
        boxes[ann["image_id"]].append((np.asarray([x, y, x + w, y + h], np.float32), index[ann["category_id"]]))
    return tuple(n for _, n in cats), images, boxes


@register_dataset(
    "coco",
    description="Generic: COCO detection json (categories in id order), images without boxes kept",
    layout="""
    ROOT/annotations.json   (or annotations/instances_default.json, _annotations.coco.json, or annotations=)
        images[{id, file_name, width, height}], annotations[{id, image_id, category_id,
        bbox: [x, y, w, h], iscrowd}], categories[{id, name}]
    ROOT/images/<file_name>  (or ROOT/<file_name>)
    70/10/20 split hashed by file name (or by group_regex on it).
    """,
    tasks=("detection",),
)
def build_coco(
    root: Path,
    split: str,
    *,
    annotations: str | None = None,
    image_dir: str | None = None,
    include_crowd: bool = False,
    group_regex: str | None = None,
    seed: int = 0,
    missing: str = "error",
) -> XrayDataset:
    """Build a COCO-format detection dataset.

    Boxes are in the pixel space of each image's declared ``width`` x ``height``, and are
    rescaled if the stored image has another size. Images with no annotation carry an
    empty box target (COCO lists every annotated image).

    Args:
        root: Dataset root.
        split: ``train``, ``val``, ``test`` or ``all``.
        annotations: Json file, relative to ``root`` or absolute (default: see layout).
        image_dir: Folder of ``file_name`` relative to ``root`` (default ``images`` if it exists,
            else ``root``); one outside ``root`` needs ``allow_outside_root=True``.
        include_crowd: Keep ``iscrowd`` annotations as boxes (skipped by default, as COCO does).
        group_regex: Regex on the file name giving a patient id for the split (see image_folder).
        seed: Seed of the hashed split.
        missing: Absent images: ``error``, ``skip`` them, or ``keep`` (labels only, no check).

    Raises:
        DatasetError: Unknown image or category id, or a bbox outside its image (by > 1 px).
    """
    if annotations:
        path = Path(annotations) if Path(annotations).is_absolute() else root / annotations
        if not path.is_file():
            raise DatasetError(f"coco: annotation file {path} not found")
    else:
        path = next((root / f for f in COCO_FILES if (root / f).is_file()), None)  # type: ignore[assignment]
        if path is None:
            raise DatasetError(f"coco: no annotation file in {root}; looked for {', '.join(COCO_FILES)}")
    classes, images, boxes = coco_boxes(path, load_coco_json(path), include_crowd, tol=1.0)
    if not classes:
        raise DatasetError(f"{path}: no categories")
    base = root / image_dir if image_dir else (root / "images" if (root / "images").is_dir() else root)
    ids = list(images)
    names = [str(images[k]["file_name"]) for k in ids]
    parts = _hashed(names, group_regex, seed)
    where = label_file_name(path, root)
    records = []
    for k, name, part in zip(ids, names, parts):
        im = images[k]
        found = boxes.get(k, [])
        records.append(
            Record(
                image=base / name,
                boxes=np.asarray([b for b, _ in found], np.float32).reshape(-1, 4),
                box_labels=np.asarray([c for _, c in found], np.int64),
                box_space=(int(im["width"]), int(im["height"])),
                meta={"id": Path(name).stem, "coco_id": k, "split": part},
                origin=f"{where} image id {k!r}",
            )
        )
    records = require_images(select_split(records, split), "coco", missing=missing)
    return XrayDataset(records, [TaskSpec("objects", "detection", classes)], name="coco", root=root, split=split)


@register_dataset(
    "mask_folder",
    description="Generic: images/ + masks/ folders (binary or label-map masks), segmentation",
    layout="""
    ROOT/images/<stem>.png|jpg|dcm...   ROOT/masks/<stem><mask_suffix>.png
    or ROOT/{train,val,test}/images/... and .../masks/...
    Binary masks: non-zero = class; label maps: one channel per value in `values`.
    Without split folders: 70/10/20 split hashed by stem (or by group_regex on it).
    """,
    tasks=("segmentation",),
)
def build_mask_folder(
    root: Path,
    split: str,
    *,
    images_dir: str = "images",
    masks_dir: str = "masks",
    mask_suffix: str = "",
    classes: tuple[str, ...] | None = None,
    values: tuple[int, ...] | None = None,
    ignore_value: int | None = None,
    missing_masks: str = "error",
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
    group_regex: str | None = None,
    seed: int = 0,
) -> XrayDataset:
    """Build an image + mask folder dataset.

    Args:
        root: Dataset root (layout above).
        split: ``train``, ``val``, ``test`` or ``all``.
        images_dir: Image folder name.
        masks_dir: Mask folder name.
        mask_suffix: Appended to the image stem to name its mask (e.g. ``_mask``).
        classes: Channel names. None with ``values`` None: one ``foreground`` channel, any
            non-zero value. With several classes (or ``values``) the mask is a label map.
        values: Label-map value of each class (default 1, 2, ... K).
        ignore_value: Mask value meaning "ignore", mapped to 255 in every channel.
        missing_masks: ``error`` or ``skip`` for images without a mask file.
        extensions: Image file extensions to collect.
        group_regex: Regex on the file name giving a patient id for the hashed split.
        seed: Seed of the hashed split.
    """
    if missing_masks not in ("error", "skip"):
        raise DatasetError(f"missing_masks must be 'error' or 'skip', got {missing_masks!r}")
    classes = (classes,) if isinstance(classes, str) else classes
    values = (values,) if isinstance(values, int) else values
    extensions = (extensions,) if isinstance(extensions, str) else tuple(extensions)
    label_map = values is not None or (classes is not None and len(classes) > 1)
    names = tuple(classes) if classes else ("foreground",)
    if label_map:
        values = tuple(int(v) for v in values) if values is not None else tuple(range(1, len(names) + 1))
        if len(values) != len(names):
            raise DatasetError(f"mask_folder: {len(values)} values {list(values)} for classes {list(names)}")
    split_dirs = {s: d for s, d in _split_dirs(root).items() if (d / images_dir).is_dir()}
    bases = split_dirs or {"": root}
    records = []
    for s, base in bases.items():
        if not (base / images_dir).is_dir():
            raise DatasetError(f"mask_folder: {base / images_dir} not found")
        for img in _images_under(base / images_dir, extensions):
            rel = img.relative_to(base / images_dir).with_suffix("")
            mask = base / masks_dir / f"{rel.as_posix()}{mask_suffix}.png"
            if not mask.is_file():
                if missing_masks == "skip":
                    continue
                raise DatasetError(f"mask_folder: no mask {mask} for image {img} (missing_masks='skip' to drop it)")
            source = LabelMapMask(mask, values, ignore_value) if values else FileMasks((mask,), ignore_value)
            meta = {"id": img.stem, "split": s, "path_rel": rel.as_posix()}
            records.append(Record(image=img, mask=source, meta=meta))
    if not records:
        raise DatasetError(f"mask_folder: no image with a mask under {root}")
    records = _folder_or_hashed_split(records, split, split_dirs, group_regex, seed)
    return XrayDataset(records, [TaskSpec("masks", "segmentation", names)], name="mask_folder", root=root, split=split)
