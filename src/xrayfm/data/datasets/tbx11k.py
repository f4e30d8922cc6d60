"""TBX11K tuberculosis radiographs (Liu et al., "Rethinking Computer-Aided Tuberculosis Diagnosis", CVPR 2020).

Reads the archive as the authors distribute it (``TBX11K/``; layout checked against copies of the
release on GitHub, e.g. ``turjo410/TBX11K-Assignment-1`` at commit ``4420d9e``, and the authors'
``code/make_json_anno.py``):

- ``imgs/{health,sick,tb,test,extra}/*.png``: 512x512 images; ``health/h0001.png`` healthy,
  ``sick/s0001.png`` sick but not TB, ``tb/tb0001.png`` TB (active, latent or both).
- ``lists/TBX11K_{train,val}.txt``: the official split, one path per line relative to ``imgs/``
  (``tb/tb0005.png``); 6600 train and 1800 val images. ``all_*.txt`` add the ``extra/`` images
  (DA/DB, Montgomery, Shenzhen) and ``all_test.txt`` the 3302 test images, whose labels were
  never released.
- ``annotations/json/all_{train,val}.json`` (or ``TBX11K_{train,val}.json``): COCO files made by
  ``make_json_anno.py`` from ``annotations/xml/*.xml``; every listed image is an entry
  (``file_name`` as in the list, ``width = height = 512``), boxes are the Pascal-VOC boxes of the
  XML rescaled from the original radiograph size to 512 px, categories 1 ActiveTuberculosis,
  2 ObsoletePulmonaryTuberculosis (latent TB), 3 PulmonaryTuberculosis (uncertain TB, test only).
  The XML files themselves (original-size coordinates) are not read: the json holds the same
  boxes in the pixel space of the distributed images.

Foundation X (Islam et al., WACV 2025) trains TBX11K classification on ``TBX11K_train.txt``
(binary TB = a ``tb/`` image) and category-agnostic TB detection on the COCO json; the defaults
here follow it. ``tb/tb1199.png`` is a TB image without any box (as released).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xrayfm.data.base import Record, XrayDataset
from xrayfm.data.datasets.generic import coco_boxes, load_coco_json
from xrayfm.data.registry import check_choice, register_dataset
from xrayfm.data.splits import split_groups
from xrayfm.data.tables import label_file_name, require_images
from xrayfm.errors import DatasetError, MissingSplitError
from xrayfm.tasks import TaskSpec

FOLDERS: dict[str, str] = {"health": "Healthy", "sick": "Sick (non-TB)", "tb": "Tuberculosis"}
CATEGORIES: tuple[str, ...] = tuple(FOLDERS.values())
TB = "Tuberculosis"
BOX_TYPES: tuple[str, ...] = ("ActiveTuberculosis", "ObsoletePulmonaryTuberculosis", "PulmonaryTuberculosis")
LABEL_MODES = ("tb", "category", "none")
BOX_MODES = ("agnostic", "types", "none")
PARTS = ("train", "val")


def _find_root(root: Path) -> Path:
    """``root``, or ``root/TBX11K`` when the archive was unpacked into ``root``."""
    if not (root / "lists").is_dir() and (root / "TBX11K" / "lists").is_dir():
        return root / "TBX11K"
    return root


def _read_list(path: Path, root: Path) -> list[tuple[int, str]]:
    """``(line number, image path relative to imgs/)`` of one official list, checked line by line."""
    if not path.is_file():
        raise DatasetError(
            f"tbx11k: {path} not found; expected the published TBX11K layout: lists/TBX11K_train.txt, "
            "lists/TBX11K_val.txt, annotations/json/all_{train,val}.json and imgs/{health,sick,tb}/*.png "
            "(a CSV subset with labels.csv + boxes.csv is read by the `csv` adapter)"
        )
    where = label_file_name(path, root)
    names: list[tuple[int, str]] = []
    seen: set[str] = set()
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        folder = name.split("/", 1)[0]
        if folder not in FOLDERS or name.count("/") != 1:
            raise DatasetError(
                f"{where} line {i}: {name!r} is not <folder>/<image> with folder one of {', '.join(FOLDERS)}"
            )
        if name in seen:
            raise DatasetError(f"{where} line {i}: {name!r} is listed twice")
        seen.add(name)
        names.append((i, name))
    if not names:
        raise DatasetError(f"{where}: lists no image")
    return names


def _read_boxes(root: Path, part: str, names: list[str], types: bool) -> dict[str, tuple]:
    """``name -> (boxes, box_labels, (width, height))`` of a split's listed images, from the COCO json."""
    folder = root / "annotations" / "json"
    path = next((folder / f for f in (f"all_{part}.json", f"TBX11K_{part}.json") if (folder / f).is_file()), None)
    if path is None:
        raise DatasetError(
            f"tbx11k: no box annotations for {part}: neither {folder / f'all_{part}.json'} nor "
            f"TBX11K_{part}.json found (pass -o boxes=none for labels only)"
        )
    classes, images, boxes = coco_boxes(path, load_coco_json(path), include_crowd=True, tol=1.0)
    unknown = [c for c in classes if c not in BOX_TYPES]
    if unknown:
        raise DatasetError(f"{path}: unknown category name(s) {unknown}; expected {list(BOX_TYPES)}")
    to_label = [BOX_TYPES.index(c) if types else 0 for c in classes]
    by_name = {str(im["file_name"]): k for k, im in images.items()}
    out: dict[str, tuple] = {}
    for name in names:
        if name not in by_name:
            raise DatasetError(f"{path}: no entry for {name}, listed in lists/TBX11K_{part}.txt")
        k = by_name[name]
        found = boxes.get(k, [])
        if found and not name.startswith("tb/"):
            raise DatasetError(f"{path}: image {name} is not a TB image but has {len(found)} box(es)")
        xyxy = np.asarray([b for b, _ in found], np.float32).reshape(-1, 4)
        labels = np.asarray([to_label[c] for _, c in found], np.int64)
        out[name] = (xyxy, labels, (int(images[k]["width"]), int(images[k]["height"])))
    return out


@register_dataset(
    "tbx11k",
    description="TBX11K: TB classification (binary or healthy/sick/TB) + TB boxes; official train/val lists",
    layout="""
    ROOT/lists/TBX11K_train.txt, TBX11K_val.txt     tb/tb0005.png, health/h0001.png, sick/s0001.png per line
    ROOT/annotations/json/all_train.json, all_val.json   (or TBX11K_*.json) COCO boxes, 512-px space
    ROOT/imgs/{health,sick,tb}/*.png                (512x512)
    ROOT may also be the folder holding TBX11K/. Test labels were never released: split=test
    needs -o test_fraction=F (a hashed share of the train list).
    """,
    tasks=("multilabel", "multiclass", "detection"),
)
def build_tbx11k(
    root: Path,
    split: str,
    *,
    labels: str = "tb",
    boxes: str = "agnostic",
    test_fraction: float = 0.0,
    seed: int = 0,
    missing: str = "error",
) -> XrayDataset:
    """Build TBX11K on its official lists.

    Every listed image was box-annotated, so healthy and sick images carry an empty (0, 4) box
    target. ``train`` and ``val`` are ``TBX11K_train.txt`` and ``TBX11K_val.txt``. The test
    labels were never released, so ``test`` is refused unless ``test_fraction`` holds out a share
    of the train list, hashed by image id (TBX11K publishes no patient ids; ids are per image).
    Foundation X instead evaluates on the official val list (use ``split="val"``).

    Args:
        root: Dataset root (layout above).
        split: ``train``, ``val``, ``test`` or ``all``.
        labels: ``tb`` (multilabel, one class: Tuberculosis = a ``tb/`` image, as Foundation X),
            ``category`` (multiclass Healthy / Sick (non-TB) / Tuberculosis from the folder) or
            ``none``.
        boxes: ``agnostic`` (one class, Tuberculosis, as Foundation X), ``types`` (Active /
            ObsoletePulmonary (latent) / Pulmonary (uncertain) Tuberculosis) or ``none``.
        test_fraction: Share of the train list held out as ``test`` (0: no test split).
        seed: Seed of that hashed holdout.
        missing: Absent images: ``error``, ``skip`` them, or ``keep`` (labels only, no check).

    Raises:
        MissingSplitError: ``split="test"`` with ``test_fraction=0``.
        DatasetError: Files missing or not in the published layout; a list line outside
            health/sick/tb; a listed image absent from the json; a box on a non-TB image; an
            unknown category; a box with no size or outside its image.
    """
    check_choice("labels", labels, LABEL_MODES)
    check_choice("boxes", boxes, BOX_MODES)
    if labels == "none" and boxes == "none":
        raise DatasetError("tbx11k: labels=none and boxes=none leave no task")
    if not 0 <= test_fraction < 1:
        raise DatasetError(f"tbx11k: test_fraction must be in [0, 1), got {test_fraction}")
    if split == "test" and not test_fraction:
        raise MissingSplitError(
            "tbx11k: the TBX11K test labels were never released (lists/all_test.txt has none); pass "
            "-o test_fraction=0.1 (test_fraction=0.1 in Python) to hold out part of the train list, "
            "or evaluate on split=val as Foundation X does"
        )
    root = _find_root(root)
    records = []
    for part in {"train": ("train",), "val": ("val",), "test": ("train",), "all": PARTS}[split]:
        list_path = root / "lists" / f"TBX11K_{part}.txt"
        lines = _read_list(list_path, root)
        names = [name for _, name in lines]
        box_info = _read_boxes(root, part, names, boxes == "types") if boxes != "none" else {}
        ids = [Path(n).stem for n in names]
        parts = [part] * len(names)
        if part == "train" and test_fraction:
            parts = split_groups(ids, seed=seed, fractions={"train": 1 - test_fraction, "test": test_fraction})
        where = label_file_name(list_path, root)
        for (line, name), image_id, p in zip(lines, ids, parts):
            if split != "all" and p != split:
                continue
            folder = name.split("/", 1)[0]
            rec = Record(
                image=root / "imgs" / name,
                meta={"id": image_id, "patient_id": image_id, "split": p, "category": FOLDERS[folder]},
                origin=f"{where} line {line}",
            )
            if labels == "tb":
                rec.labels = np.asarray([float(folder == "tb")], np.float32)
            elif labels == "category":
                rec.labels = (np.asarray(CATEGORIES) == FOLDERS[folder]).astype(np.float32)
            if boxes != "none":
                rec.boxes, rec.box_labels, rec.box_space = box_info[name]
            records.append(rec)
    tasks = []
    if labels == "tb":
        tasks.append(TaskSpec("tuberculosis", "multilabel", (TB,)))
    elif labels == "category":
        tasks.append(TaskSpec("tuberculosis", "multiclass", CATEGORIES))
    if boxes != "none":
        tasks.append(TaskSpec("tb_lesions", "detection", BOX_TYPES if boxes == "types" else (TB,)))
    records = require_images(records, "tbx11k", missing=missing)
    return XrayDataset(records, tasks, name="tbx11k", root=root, split=split)
