"""Summaries of one image or a dataset root: what is there and what is wrong with it.

``xrayfm inspect`` prints these; they are plain dicts so notebooks and CI scripts can assert on
them. Problems (unreadable files, masks of the wrong size, boxes outside the image) are
collected per file instead of stopping at the first one.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from xrayfm.data.base import XrayDataset
from xrayfm.data.registry import build_dataset, get_dataset_info
from xrayfm.errors import UnknownNameError, XrayfmError
from xrayfm.io import IMAGE_SUFFIXES
from xrayfm.io.sandbox import DecoderCrashed, DecodeSandbox, DecodeTimedOut, Reader, usable_cores
from xrayfm.progress import progress

T = TypeVar("T")

#: Marker files that identify a dataset layout, checked in order (first match wins).
LAYOUT_MARKERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("nih_cxr14", ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv", "Data_Entry_2017_v2020.csv.gz")),
    ("chexpert", ("CheXpert-v1.0-small/train.csv", "CheXpert-v1.0/train.csv", "valid.csv")),
    ("mimic_cxr", ("mimic-cxr-2.0.0-chexpert.csv.gz", "mimic-cxr-2.0.0-chexpert.csv")),
    ("vindr_cxr", ("annotations/annotations_train.csv",)),
    ("rsna_pneumonia", ("stage_2_train_labels.csv", "stage_2_train_labels.csv.zip")),
    ("siim_acr", ("train-rle.csv",)),
    ("tbx11k", ("TBX11K/lists/TBX11K_train.txt", "lists/TBX11K_train.txt")),
    ("node21", ("cxr_images/proccessed_data/metadata.csv", "proccessed_data/metadata.csv")),
    ("candid_ptx", ("Pneumothorax_reports.csv", "Pneumothorax_reports.csv.gz")),
    ("chestx_det", ("ChestX_Det_train.json",)),
    ("mura", ("MURA-v1.1/train_image_paths.csv", "train_image_paths.csv")),
    ("montgomery", ("ManualMask/leftMask",)),
    ("shenzhen", ("CXR_png",)),
    ("jsrt", ("All247images", "Train/Images")),
    ("covidx", ("train.txt",)),
    ("coco", ("annotations.json",)),
    ("csv", ("labels.csv",)),
)


def detect_layout(root: Path) -> str | None:
    """Guess the adapter name for a dataset root from its marker files, or None."""
    for name, markers in LAYOUT_MARKERS:
        if any((root / m).exists() for m in markers):
            if name == "csv" and _is_phantom(root):
                return "phantom"
            return name
    return None


def _is_phantom(root: Path) -> bool:
    with open(root / "labels.csv", encoding="utf-8", errors="replace") as fh:
        header = fh.readline()
    return "lungs_mask" in header and "lesions_mask" in header


def summarize_image(path: Path) -> dict[str, Any]:
    """Read one file and describe it (format, size, intensity statistics, safe metadata); a compressed DICOM
    file is decoded in a child process (:mod:`xrayfm.io.sandbox`), so a decoder crashing on it is a one-line
    error."""
    with DecodeSandbox(1) as sandbox:
        img = sandbox.read_file(path)
    px = img.pixels
    return {
        "path": str(path),
        "width": img.size[0],
        "height": img.size[1],
        "stats": {
            k: round(float(f(px)), 4) for k, f in (("min", np.min), ("mean", np.mean), ("max", np.max), ("std", np.std))
        },
        "meta": {k: v for k, v in img.meta.items() if k != "path"},
    }


def summarize_dataset(ds: XrayDataset, *, check: int = 200, workers: int | None = None) -> dict[str, Any]:
    """Counts, label prevalence, box/mask counts, image sizes and problems of a dataset.

    Args:
        ds: Dataset to summarise.
        check: Number of samples (evenly spread) fully loaded to measure sizes and find
            problems; 0 skips loading, -1 loads all.
        workers: Samples loaded at once (default :func:`check_workers`).
    """
    recs = ds.records
    out: dict[str, Any] = {
        "dataset": ds.name,
        "root": str(ds.root),
        "split": ds.split,
        "images": len(recs),
        "splits": dict(Counter(r.meta.get("split", ds.split) for r in recs)),
        "patients": len({r.meta["patient_id"] for r in recs if r.meta.get("patient_id")}) or None,
        "tasks": [t.to_dict() for t in ds.tasks],
    }
    label_task = ds.task_for("labels")
    if label_task is not None and recs:
        lab = np.stack([r.labels for r in recs if r.labels is not None])
        out["labels"] = {
            c: {
                "positive": int(np.nansum(lab[:, i] == 1)),
                "negative": int(np.nansum(lab[:, i] == 0)),
                "unknown": int(np.isnan(lab[:, i]).sum()),
                "prevalence": round(float(np.nanmean(lab[:, i])), 4) if (~np.isnan(lab[:, i])).any() else None,
            }
            for i, c in enumerate(label_task.classes)
        }
    box_task = ds.task_for("boxes")
    if box_task is not None:
        counts = Counter(int(k) for r in recs if r.box_labels is not None for k in r.box_labels)
        out["boxes"] = {
            "annotated_images": sum(r.boxes is not None for r in recs),
            "images_with_boxes": sum(r.boxes is not None and len(r.boxes) > 0 for r in recs),
            "per_class": {box_task.classes[k]: n for k, n in sorted(counts.items())},
        }
    if ds.task_for("mask") is not None:
        out["masks"] = {"images_with_masks": sum(r.mask is not None for r in recs)}
    out.update(_check_samples(ds, check, workers))
    split_problem = train_split_problem(ds) if ds.split == "all" else None
    if split_problem:
        out["problems"].insert(0, split_problem)
    elif not recs:
        out["problems"].insert(0, f"{ds.root}: no image is in split {ds.split!r}")
    return out


def train_split_problem(ds: XrayDataset) -> str | None:
    """Say so when a dataset's split assigns none of its images to ``train``.

    A set shipped as one split (every row ``split=test``) inspects cleanly but cannot be
    fine-tuned on; this names the split counts and the way out.

    Args:
        ds: The dataset, built with split ``all``.

    Returns:
        The problem as one line, or None when some image is in ``train`` (or there is none).
    """
    splits = Counter(str(r.meta.get("split", ds.split)) for r in ds.records)
    if not ds.records or splits.get("train"):
        return None
    given = ", ".join(f"{k} {n}" for k, n in sorted(splits.items()))
    try:
        has_split_column = "split_column" in get_dataset_info(ds.name).options()
    except UnknownNameError:  # a dataset built outside the registry
        has_split_column = False
    fix = (
        "to train on them, pass -o split_column= (split_column='' in Python) for a 70/10/20 split by hashed patient id"
        if has_split_column
        else f"see `xrayfm datasets {ds.name}` for how this adapter assigns splits"
    )
    source = "split column" if has_split_column else "splits"
    return f"{ds.root}: 0 of {len(ds)} images are in split 'train' ({source}: {given}); {fix}"


def _check_samples(ds: XrayDataset, check: int, workers: int | None = None) -> dict[str, Any]:
    n = len(ds)
    if check == 0 or n == 0:
        return {"checked": 0, "problems": []}
    idx = range(n) if check < 0 or check >= n else np.linspace(0, n - 1, check).round().astype(int)

    def size_of(i: int, read: Reader) -> str:
        s = ds.load(int(i), reader=read)
        return f"{s['image'].shape[2]}x{s['image'].shape[1]}"

    sizes, problems = check_files(list(idx), size_of, workers)
    return {"checked": len(idx), "image_sizes": dict(sizes.most_common(10)), "problems": problems}


def check_workers() -> int:
    """Reads at once when checking: the usable cores, at most 8 (each read in flight holds a whole image)."""
    return max(1, min(8, usable_cores()))


def check_files(
    items: Sequence[T], size_of: Callable[[T, Reader], str], workers: int | None = None
) -> tuple[Counter[str], list[str]]:
    """``size_of(item, read)`` of each item, ``workers`` at once (default :func:`check_workers`): the sizes seen
    and the problems (each error's message, in item order). ``read`` is :meth:`DecodeSandbox.read_file`:
    compressed DICOM files are decoded in child processes, so a decoder that crashes on one is a problem listed,
    not the end of the check. A child's death fails every read then in flight in its pool, not only the culprit's, so a
    read that failed so while others ran is tried once more alone: only a file that crashes its decoder on
    its own is reported.
    """
    workers = workers or check_workers()
    sizes: Counter[str] = Counter()
    problems: dict[int, str] = {}
    again: list[int] = []
    with DecodeSandbox(workers) as sandbox:
        outcomes = _in_order(lambda item: size_of(item, sandbox.read_file), items, workers)
        for k, (size, error) in enumerate(progress(outcomes, desc="checking images", total=len(items), unit="img")):
            if error is None:
                sizes[size] += 1
            elif workers > 1 and isinstance(error, (DecoderCrashed, DecodeTimedOut)):
                again.append(k)
            else:
                problems[k] = str(error)
    if again:
        with DecodeSandbox(1) as alone:
            for k in again:
                try:
                    sizes[size_of(items[k], alone.read_file)] += 1
                except XrayfmError as exc:
                    problems[k] = str(exc)
    return sizes, [problems[k] for k in sorted(problems)]


def _in_order(
    fn: Callable[[T], str], items: Sequence[T], workers: int
) -> Iterator[tuple[str | None, Exception | None]]:
    """``(fn(item), None)`` or ``(None, the XrayfmError it raised)`` for each item in order, computed on ``workers``
    threads with at most twice as many items in flight (their images are dropped as soon as measured)."""

    def outcome(item: T) -> tuple[str | None, Exception | None]:
        try:
            return fn(item), None
        except XrayfmError as exc:
            return None, exc

    if workers == 1:
        yield from map(outcome, items)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="xrayfm-check") as pool:
        pending: deque[Future] = deque()
        for item in items:
            pending.append(pool.submit(outcome, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def summarize_folder(root: Path, *, check: int = 200, workers: int | None = None) -> dict[str, Any]:
    """Describe a folder of loose images (no recognised layout); ``check`` and ``workers`` as in
    :func:`inspect_path`."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and (p.suffix.lower() in IMAGE_SUFFIXES))
    chosen = files if check < 0 else files[:: max(1, len(files) // check)] if check else []

    def size_of(path: Path, read: Reader) -> str:
        width, height = read(path).size
        return f"{width}x{height}"

    sizes, problems = check_files(chosen, size_of, workers)
    formats = Counter(p.suffix.lower() for p in files)
    return {
        "dataset": None,
        "root": str(root),
        "images": len(files),
        "formats": dict(formats),
        "checked": len(chosen),
        "image_sizes": dict(sizes.most_common(10)),
        "problems": problems,
    }


def inspect_path(
    path: Path,
    *,
    dataset: str | None = None,
    split: str = "all",
    check: int = 200,
    workers: int | None = None,
    **opts: Any,
) -> dict[str, Any]:
    """Summarise a file, a dataset root (layout detected or named), or a loose image folder.

    Args:
        path: An image file or a folder.
        dataset: Adapter name for a folder (default: detected from its label files).
        split: Split of the dataset to summarise.
        check: Images to load fully to find problems (0 none, -1 all).
        workers: Images loaded at once while checking (default :func:`check_workers`: the usable cores, at
            most 8); compressed DICOM files are decoded in as many child processes.
        **opts: Adapter options (see ``xrayfm datasets NAME``).

    Returns:
        What :func:`summarize_image`, :func:`summarize_dataset` or :func:`summarize_folder` returns.

    Raises:
        XrayfmError: The path is missing or not a regular file or folder, the file cannot be read,
            or the dataset does not match its adapter.
    """
    path = Path(path)
    if not path.is_dir():
        return summarize_image(path)  # read_xray names a missing file, a device or a FIFO
    name = dataset or detect_layout(path)
    if name is None:
        return summarize_folder(path, check=check, workers=workers)
    return summarize_dataset(build_dataset(name, path, split, **opts), check=check, workers=workers)
