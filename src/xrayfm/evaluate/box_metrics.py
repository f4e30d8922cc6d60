"""Box localization metrics: COCO mAP@[.50:.95], mAP@.50, mAP@.75 and per-class AP.

Point values come from torchmetrics' ``MeanAveragePrecision`` with its pycocotools backend;
:func:`check_box_inputs` and :func:`map_metric` are public so the bootstrap in
:mod:`xrayfm.evaluate.box_bootstrap` scores exactly what :func:`detection_metrics` scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from xrayfm.errors import XrayfmError
from xrayfm.evaluate.metrics import as_numpy


def _box_field(d: Any, key: str, where: str) -> np.ndarray:
    if not isinstance(d, dict) or key not in d:
        raise XrayfmError(f"{where}: no {key!r}")
    return as_numpy(d[key])


def check_box_inputs(
    preds: Sequence[dict[str, Any]], targets: Sequence[dict[str, Any]], num_classes: int
) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]]]:
    """Checked torch versions (boxes float32 (n, 4), scores float32, labels int64) of box inputs.

    Args:
        preds: Per image ``boxes`` (n, 4) xyxy, ``scores`` (n,), ``labels`` (n,) (numpy, torch or lists).
        targets: Per image ``boxes`` (m, 4) and ``labels`` (m,).
        num_classes: Number of box classes (labels are 0-based indices).

    Returns:
        The predictions and the targets as lists of dicts of tensors, in the input order.

    Raises:
        XrayfmError: Counts disagree, a field is missing or mis-shaped, a box is not a finite
            xyxy box, a score is not finite, or a label is outside ``0 .. num_classes - 1``.
    """
    if len(preds) != len(targets):
        raise XrayfmError(f"{len(preds)} predictions for {len(targets)} annotated images")
    if not len(targets):
        raise XrayfmError("nothing to evaluate: no box-annotated image")

    def convert(d: Any, where: str, with_scores: bool) -> dict[str, torch.Tensor]:
        boxes = _box_field(d, "boxes", where).astype(np.float32)
        if boxes.size == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise XrayfmError(f"{where}: boxes must be (n, 4) xyxy, got shape {boxes.shape}")
        labels = _box_field(d, "labels", where).reshape(-1)
        fields = {"boxes": boxes, "labels": labels}
        if with_scores:
            fields["scores"] = _box_field(d, "scores", where).astype(np.float32).reshape(-1)
        if any(len(v) != len(boxes) for v in fields.values()):
            raise XrayfmError(f"{where}: {', '.join(f'{len(v)} {k}' for k, v in fields.items())} differ in count")
        if not np.isfinite(boxes).all() or (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any():
            raise XrayfmError(f"{where}: boxes must be finite xyxy pixel boxes with x2 >= x1 and y2 >= y1")
        if with_scores and not np.isfinite(fields["scores"]).all():
            raise XrayfmError(f"{where}: scores must be finite")
        if len(labels) and ((labels != np.round(labels)).any() or labels.min() < 0 or labels.max() >= num_classes):
            raise XrayfmError(f"{where}: box labels must be class indices 0..{num_classes - 1}, got {labels.tolist()}")
        out = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in fields.items()}
        out["labels"] = out["labels"].long()
        return out

    return (
        [convert(d, f"prediction {i}", True) for i, d in enumerate(preds)],
        [convert(d, f"target {i}", False) for i, d in enumerate(targets)],
    )


def map_metric(class_metrics: bool = True) -> Any:
    """The box mAP metric :func:`detection_metrics` uses (its IoU, recall and detection thresholds).

    Args:
        class_metrics: Also compute per-class AP and AR.

    Returns:
        A torchmetrics ``MeanAveragePrecision`` (xyxy boxes, pycocotools backend).
    """
    from torchmetrics.detection import MeanAveragePrecision

    return MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=class_metrics, backend="pycocotools")


def detection_metrics(
    preds: Sequence[dict[str, Any]], targets: Sequence[dict[str, Any]], classes: Sequence[str]
) -> dict[str, Any]:
    """COCO box metrics (torchmetrics ``MeanAveragePrecision``, pycocotools backend).

    Args:
        preds: Per image ``boxes`` (n, 4) xyxy pixels, ``scores`` (n,), ``labels`` (n,) 0-based
            class indices (numpy, torch or lists).
        targets: Per image ``boxes`` (m, 4) and ``labels`` (m,); an image may have no box.
        classes: Box class names (label ``i`` is ``classes[i]``).

    Returns:
        ``n`` images, ``boxes`` (reference count), ``map`` (mean AP over IoU 0.5:0.95), ``map_50``,
        ``map_75``, ``mar_100`` (mean recall, 100 detections per image), ``per_class`` (name ->
        ``ap``, ``ar_100``, ``boxes``) and ``notes``. Values undefined for pycocotools (torchmetrics'
        -1, e.g. a class without reference boxes) are None.

    Raises:
        XrayfmError: Inputs are inconsistent (see the checks on counts, boxes, scores and labels).
    """
    pt, tt = check_box_inputs(preds, targets, len(classes))
    metric = map_metric()
    metric.update(pt, tt)
    res = metric.compute()

    def value(x: torch.Tensor) -> float | None:
        v = float(x)
        return None if v < 0 else v  # torchmetrics reports -1 where undefined

    counts = np.bincount(torch.cat([t["labels"] for t in tt]).numpy(), minlength=len(classes))
    per_class: dict[str, dict[str, Any]] = {
        c: {"ap": None, "ar_100": None, "boxes": int(counts[k])} for k, c in enumerate(classes)
    }
    for i, k in enumerate(res["classes"].reshape(-1).tolist()):
        per_class[classes[k]]["ap"] = value(res["map_per_class"].reshape(-1)[i])
        per_class[classes[k]]["ar_100"] = value(res["mar_100_per_class"].reshape(-1)[i])
    notes = [f"{c}: no reference box, AP undefined" for c, m in per_class.items() if not m["boxes"]]
    return {
        "n": len(tt),
        "boxes": int(counts.sum()),
        "map": value(res["map"]),
        "map_50": value(res["map_50"]),
        "map_75": value(res["map_75"]),
        "mar_100": value(res["mar_100"]),
        "per_class": per_class,
        "notes": notes,
    }
