"""Weak localization: how well a classifier's heatmaps find the boxes it was never trained on.

The EVA-X protocol on ChestX-ray14's box list: for every image with a reference box of a class
the classifier knows (matched by name), the heatmap of that class is thresholded at a share of
its maximum, connected regions become boxes (scored by their mean heat), and they are compared
with the reference boxes. The threshold is searched over a grid and reported with the
localization accuracy (an image counts when one of its predicted boxes reaches the IoU level)
at several IoU levels and the COCO-style AP@0.5 of the scored boxes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torchvision.ops import box_iou

from xrayfm.errors import XrayfmError
from xrayfm.evaluate.box_metrics import detection_metrics

THRESHOLDS = tuple(round(t, 2) for t in np.linspace(0.1, 0.9, 9))
IOU_LEVELS = (0.1, 0.25, 0.5)


def heatmap_boxes(heat: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (n, 4) xyxy around the connected regions where ``heat >= threshold * max``, and
    their scores (mean heat inside)."""
    peak = float(heat.max())
    if peak <= 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
    regions, n = ndimage.label(heat >= threshold * peak)
    boxes, scores = [], []
    for k, sl in enumerate(ndimage.find_objects(regions), start=1):
        if sl is None:
            continue
        ys, xs = sl
        boxes.append([xs.start, ys.start, xs.stop, ys.stop])
        scores.append(float(heat[sl][regions[sl] == k].mean()))
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32)


def localization_scores(
    heats: Sequence[np.ndarray],
    references: Sequence[np.ndarray],
    *,
    thresholds: Sequence[float] = THRESHOLDS,
    iou_levels: Sequence[float] = IOU_LEVELS,
) -> dict[str, Any]:
    """Threshold search for heatmap -> box localization against reference boxes.

    Args:
        heats: One heatmap (H, W) per (image, class) case.
        references: The reference boxes (m, 4) of that class in that image, in heatmap pixels.
        thresholds: Shares of each map's maximum to try.
        iou_levels: IoU levels of the accuracy.

    Returns:
        ``best_threshold`` (highest accuracy at the largest IoU level, then AP), and per
        threshold ``accuracy`` per IoU level and ``ap_50``; ``cases``.
    """
    if len(heats) != len(references):
        raise XrayfmError(f"{len(heats)} heatmaps for {len(references)} reference box sets")
    if not heats:
        raise XrayfmError("no image with a reference box of a class the model predicts")
    per_threshold: dict[str, Any] = {}
    for t in thresholds:
        hits = np.zeros(len(iou_levels))
        preds, targets = [], []
        for heat, ref in zip(heats, references):
            boxes, scores = heatmap_boxes(heat, t)
            ref = np.asarray(ref, np.float32).reshape(-1, 4)
            if len(boxes) and len(ref):
                best = float(box_iou(torch.from_numpy(boxes), torch.from_numpy(ref)).max())
                hits += np.asarray([best >= level for level in iou_levels])
            preds.append({"boxes": boxes, "scores": scores, "labels": np.zeros(len(boxes), np.int64)})
            targets.append({"boxes": ref, "labels": np.zeros(len(ref), np.int64)})
        ap = detection_metrics(preds, targets, ["finding"])["map_50"]
        per_threshold[f"{t:g}"] = {
            "accuracy": {f"iou_{level:g}": float(h / len(heats)) for level, h in zip(iou_levels, hits)},
            "ap_50": ap,
        }
    top = f"iou_{iou_levels[-1]:g}"
    best = max(per_threshold, key=lambda k: (per_threshold[k]["accuracy"][top], per_threshold[k]["ap_50"] or 0.0))
    return {"cases": len(heats), "best_threshold": float(best), "best": per_threshold[best],
            "per_threshold": per_threshold}  # fmt: skip


def weak_localization(
    explain: Callable[[torch.Tensor, int], np.ndarray],
    dataset: Any,
    label_classes: Sequence[str],
    box_classes: Sequence[str],
    **kwargs: Any,
) -> dict[str, Any]:
    """Run :func:`localization_scores` over a dataset's box-annotated images.

    Args:
        explain: ``(image (1, 1, H, W), class_index) -> heatmap (H, W)``.
        dataset: Yields Samples (resized to the model's input) with ``boxes`` / ``box_labels``.
        label_classes: The classifier's classes.
        box_classes: The dataset's box classes; those with a same-named classifier class are used.
        **kwargs: Passed to :func:`localization_scores`.
    """
    index = {c.lower(): i for i, c in enumerate(label_classes)}
    shared = {k: index[c.lower()] for k, c in enumerate(box_classes) if c.lower() in index}
    if not shared:
        raise XrayfmError(f"no box class {list(box_classes)} matches a classifier class {list(label_classes)}")
    heats, refs, names = [], [], []
    for i in range(len(dataset)):
        sample = dataset[i]
        if "boxes" not in sample:
            continue
        labels = sample["box_labels"].numpy()
        for k in sorted(set(labels.tolist()) & set(shared)):
            heats.append(explain(sample["image"][None], shared[k]))
            refs.append(sample["boxes"].numpy()[labels == k])
            names.append(box_classes[k])
    result = localization_scores(heats, refs, **kwargs)
    result["classes"] = {c: names.count(c) for c in sorted(set(names))}
    return result
