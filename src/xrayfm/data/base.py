"""The dataset class every adapter returns.

An adapter parses a dataset's own label files into :class:`Record` objects (paths and targets,
no pixels); :class:`XrayDataset` reads pixels lazily and checks each sample against its task
specs, naming the file when something does not fit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from xrayfm.data.sample import Sample
from xrayfm.errors import DatasetError, XrayfmError
from xrayfm.io import XrayImage, read_xray
from xrayfm.tasks import TaskSpec

Transform = Callable[[Sample], Sample]
MaskSource = Callable[[], np.ndarray]


@dataclass
class Record:
    """Everything known about one image before its pixels are read.

    Attributes:
        image: Path of the image file.
        labels: float32 (K,) targets for the label task, ``nan`` = unknown.
        boxes: float32 (N, 4) xyxy, in the pixel space given by ``box_space``.
        box_labels: int64 (N,) indices into the detection task's classes.
        box_space: (width, height) the box coordinates refer to, when it can differ from the
            stored image (NIH boxes are in 1024-px space); None = the stored image's pixels.
        mask: Callable returning uint8 (M, H, W) (see :mod:`xrayfm.data.masks`).
        meta: ``id``, ``patient_id``, ``view``, ... (JSON-serialisable values).
        origin: Where the paths were read: the label file and its row, line or entry
            (``labels.csv row 5``), named when a path is refused; empty for files found by
            listing folders.
    """

    image: Path
    labels: np.ndarray | None = None
    boxes: np.ndarray | None = None
    box_labels: np.ndarray | None = None
    box_space: tuple[int, int] | None = None
    mask: MaskSource | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    origin: str = ""


class XrayDataset(Dataset):
    """A list of :class:`Record` read lazily into Samples.

    Args:
        records: Parsed records.
        tasks: Task specs the records carry (at most one per Sample key).
        name: Adapter name (``nih_cxr14``...).
        root: Dataset root directory.
        split: Split these records belong to.
        transform: Optional callable applied to each Sample.
        read_options: Keyword arguments for :func:`xrayfm.io.read_xray`.
        extra_roots: Folders outside ``root`` that the user named for this dataset (JSRT's
            ``cache_dir``), trusted like ``root`` when paths are checked to stay inside it.
    """

    def __init__(
        self,
        records: Sequence[Record],
        tasks: Sequence[TaskSpec],
        *,
        name: str,
        root: Path,
        split: str,
        transform: Transform | None = None,
        read_options: dict[str, Any] | None = None,
        extra_roots: Sequence[Path] = (),
    ) -> None:
        self.records = list(records)
        self.tasks = list(tasks)
        self.name = name
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.read_options = dict(read_options or {})
        self.extra_roots = tuple(Path(p) for p in extra_roots)
        keys = [t.sample_key for t in self.tasks]
        if len(keys) != len(set(keys)):
            raise DatasetError(f"{name}: more than one task targets the same sample key: {keys}")
        self._check_records()

    def _check_records(self) -> None:
        label_task = self.task_for("labels")
        box_task = self.task_for("boxes")
        for rec in self.records:
            if rec.labels is not None:
                if label_task is None:
                    raise DatasetError(f"{rec.image}: has labels but {self.name} declares no label task")
                if rec.labels.shape != (label_task.num_classes,):
                    raise DatasetError(
                        f"{rec.image}: {rec.labels.shape[0]} labels for task {label_task.name!r} "
                        f"with {label_task.num_classes} classes"
                    )
            if rec.boxes is not None:
                n = len(rec.boxes)
                if rec.boxes.shape != (n, 4) or rec.box_labels is None or rec.box_labels.shape != (n,):
                    raise DatasetError(f"{rec.image}: boxes must be (N, 4) with N box labels")
                if box_task is None:
                    raise DatasetError(f"{rec.image}: has boxes but {self.name} declares no detection task")
                if n and (rec.box_labels.min() < 0 or rec.box_labels.max() >= box_task.num_classes):
                    raise DatasetError(f"{rec.image}: box label outside 0..{box_task.num_classes - 1}")

    def task_for(self, key: str) -> TaskSpec | None:
        """The task whose targets live under Sample ``key`` (labels / mask / boxes), if any."""
        return next((t for t in self.tasks if t.sample_key == key), None)

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        tasks = ", ".join(f"{t.name}:{t.kind}[{t.num_classes}]" for t in self.tasks)
        return f"XrayDataset({self.name!r}, split={self.split!r}, n={len(self)}, tasks=[{tasks}])"

    def load(self, index: int, reader: Callable[..., XrayImage] = read_xray) -> Sample:
        """Read record ``index`` into a Sample without applying the transform; ``reader`` (with
        :func:`~xrayfm.io.read_xray`'s signature) reads its image: ``xrayfm inspect`` passes a decode sandbox's."""
        rec = self.records[index]
        img = reader(rec.image, **self.read_options)
        h, w = img.pixels.shape
        meta = {**rec.meta, "path": str(rec.image), "size": [w, h]}
        meta.setdefault("id", rec.image.stem)
        meta.setdefault("source", self.name)
        for k in ("transfer_syntax", "voi", "inverted", "bit_depth", "ViewPosition", "PixelSpacing"):
            if k in img.meta:
                meta.setdefault(f"image_{k}", img.meta[k])
        sample: Sample = {"image": torch.from_numpy(np.ascontiguousarray(img.pixels))[None], "meta": meta}
        if rec.labels is not None:
            sample["labels"] = torch.tensor(rec.labels, dtype=torch.float32)
        if rec.boxes is not None:
            boxes = np.asarray(rec.boxes, dtype=np.float32).copy()
            if rec.box_space is not None and tuple(rec.box_space) != (w, h):
                sx, sy = w / rec.box_space[0], h / rec.box_space[1]
                boxes *= np.asarray([sx, sy, sx, sy], dtype=np.float32)
            _check_boxes(rec.image, boxes, w, h)
            sample["boxes"] = torch.from_numpy(boxes)
            sample["box_labels"] = torch.as_tensor(rec.box_labels, dtype=torch.int64)
        if rec.mask is not None:
            try:
                mask = np.asarray(rec.mask())
            except XrayfmError as exc:
                raise DatasetError(f"{rec.image}: its mask cannot be read: {exc}") from None
            if mask.ndim != 3 or mask.shape[1:] != (h, w):
                raise DatasetError(f"{rec.image}: mask shape {mask.shape} does not match image {h}x{w}")
            mask_task = self.task_for("mask")
            if mask_task is not None and mask.shape[0] != mask_task.num_classes:
                raise DatasetError(
                    f"{rec.image}: mask has {mask.shape[0]} channels, task {mask_task.name!r} "
                    f"has {mask_task.num_classes} classes"
                )
            sample["mask"] = torch.from_numpy(mask.astype(np.uint8))
        return sample

    def __getitem__(self, index: int) -> Sample:
        sample = self.load(index)
        return self.transform(sample) if self.transform is not None else sample

    def subset(self, indices: Sequence[int], split: str | None = None) -> XrayDataset:
        """A dataset over the chosen records (same tasks, transform and options)."""
        return XrayDataset(
            [self.records[i] for i in indices],
            self.tasks,
            name=self.name,
            root=self.root,
            split=split or self.split,
            transform=self.transform,
            read_options=self.read_options,
            extra_roots=self.extra_roots,
        )


def _check_boxes(path: Path, boxes: np.ndarray, w: int, h: int, tol: float = 1.0) -> None:
    """Refuse degenerate boxes and boxes that leave the image by more than ``tol`` pixels."""
    if not len(boxes):
        return
    if not np.isfinite(boxes).all():
        raise DatasetError(f"{path}: box coordinates are not finite")
    bad = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if bad.any():
        raise DatasetError(f"{path}: box {boxes[bad][0].tolist()} has zero or negative size")
    out = (boxes[:, :2] < -tol).any(1) | (boxes[:, 2] > w + tol) | (boxes[:, 3] > h + tol)
    if out.any():
        raise DatasetError(f"{path}: box {boxes[out][0].tolist()} lies outside the {w}x{h} image")
    np.clip(boxes[:, 0::2], 0, w, out=boxes[:, 0::2])
    np.clip(boxes[:, 1::2], 0, h, out=boxes[:, 1::2])
