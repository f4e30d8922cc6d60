"""Bootstrap confidence intervals of box mAP over images, re-accumulating pycocotools' matching.

The draws are those of :mod:`xrayfm.evaluate.bootstrap` (same seed, same resamples).
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from xrayfm.evaluate.bootstrap import Resamples, check_settings, index_chunks
from xrayfm.evaluate.box_metrics import check_box_inputs, map_metric


class _CocoResampler:
    """pycocotools' per-image box matching, run once; mAP of any resample of the images.

    COCOeval matches detections to reference boxes image by image and class by class, and
    ``accumulate`` only pools these per-image records. A resample reuses the records (a repeated
    image contributes its record twice) and is re-accumulated, which gives the mAP pycocotools
    (and torchmetrics, with the same thresholds) computes on the resampled image list.
    """

    def __init__(self, preds: Sequence[dict[str, Any]], targets: Sequence[dict[str, Any]], num_classes: int) -> None:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
        from torchvision.ops import box_convert

        pt, tt = check_box_inputs(preds, targets, num_classes)
        self.n, self.k = len(tt), num_classes

        def dataset(items: list[dict[str, Any]], with_scores: bool) -> COCO:
            anns = []
            for image_id, d in enumerate(items):
                xywh = box_convert(d["boxes"], "xyxy", "xywh").tolist()  # as torchmetrics converts them
                for j, (box, label) in enumerate(zip(xywh, d["labels"].tolist())):
                    ann = {"id": len(anns) + 1, "image_id": image_id, "bbox": box, "area": box[2] * box[3],
                           "category_id": label, "iscrowd": 0}  # fmt: skip
                    if with_scores:
                        ann["score"] = float(d["scores"][j])
                    anns.append(ann)
            coco = COCO()
            coco.dataset = {
                "images": [{"id": i} for i in range(len(items))],
                "annotations": anns,
                "categories": [{"id": k, "name": str(k)} for k in range(num_classes)],
            }
            coco.createIndex()
            return coco

        metric = map_metric(class_metrics=False)  # thresholds exactly as detection_metrics uses them
        with contextlib.redirect_stdout(io.StringIO()):
            ev = COCOeval(dataset(tt, False), dataset(pt, True), iouType="bbox")
            ev.params.iouThrs = np.array(metric.iou_thresholds, dtype=np.float64)
            ev.params.recThrs = np.array(metric.rec_thresholds, dtype=np.float64)
            ev.params.maxDets = [max(metric.max_detection_thresholds)]
            ev.params.areaRng, ev.params.areaRngLbl = [ev.params.areaRng[0]], ["all"]  # mAP uses 'all' only
            ev.evaluate()
        self.eval = ev
        self.iou_50 = int(np.argmin(np.abs(ev.params.iouThrs - 0.5)))
        self.iou_75 = int(np.argmin(np.abs(ev.params.iouThrs - 0.75)))

    def precision(self, idx: np.ndarray) -> np.ndarray:
        """pycocotools' (IoU, recall, class) precision of the images ``idx``; -1 where undefined."""
        ev, n = self.eval, self.n
        params = copy.copy(ev._paramsEval)
        params.imgIds = list(range(len(idx)))
        sub = copy.copy(ev)
        sub.params = sub._paramsEval = params
        sub.evalImgs = [ev.evalImgs[k * n + i] for k in range(self.k) for i in idx.tolist()]
        with contextlib.redirect_stdout(io.StringIO()):
            sub.accumulate()
        return sub.eval["precision"][:, :, :, 0, 0]

    def scores(self, idx: np.ndarray) -> dict[str, Any]:
        """``map``, ``map_50``, ``map_75`` and per-class ``ap`` (``nan`` where undefined)."""
        prec = self.precision(idx)

        def mean(x: np.ndarray) -> float:
            x = x[x > -1]
            return float(x.mean()) if x.size else np.nan

        return {
            "map": mean(prec),
            "map_50": mean(prec[self.iou_50]),
            "map_75": mean(prec[self.iou_75]),
            "ap": np.array([mean(prec[:, :, k]) for k in range(self.k)]),
        }


def detection_resamples(
    preds: Sequence[dict[str, Any]],
    targets: Sequence[dict[str, Any]],
    classes: Sequence[str],
    *,
    n_boot: int = 200,
    seed: int = 0,
) -> Resamples:
    """Box mAP, mAP@0.5, mAP@0.75 and per-class AP on all images and on each resample.

    Keys: ``map``, ``map_50``, ``map_75`` and ``per_class`` / name / ``ap``.

    Raises:
        XrayfmError: Inconsistent inputs (as :func:`detection_metrics`) or bootstrap settings.
    """
    resampler = _CocoResampler(preds, targets, len(classes))
    n = resampler.n
    check_settings(n, n_boot, 0.05)
    full = resampler.scores(np.arange(n))
    draws = [resampler.scores(idx) for chunk in index_chunks(n, n_boot, seed) for idx in chunk]
    out = Resamples()
    for key in ("map", "map_50", "map_75"):
        out.add((key,), None if np.isnan(full[key]) else float(full[key]), np.array([d[key] for d in draws]))
    ap = np.array([d["ap"] for d in draws]).reshape(len(draws), len(classes))
    for k, c in enumerate(classes):
        out.add(("per_class", c, "ap"), None if np.isnan(full["ap"][k]) else float(full["ap"][k]), ap[:, k])
    return out


def detection_cis(
    preds: Sequence[dict[str, Any]],
    targets: Sequence[dict[str, Any]],
    classes: Sequence[str],
    *,
    n_boot: int = 200,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Intervals of box mAP (IoU 0.5:0.95), mAP@0.5, mAP@0.75 and per-class AP, resampling images.

    pycocotools matches boxes once; each resample re-runs only its accumulation step (tens of
    milliseconds for a thousand images), so ``n_boot`` stays modest by default (200). Values
    equal :func:`detection_metrics` (torchmetrics) up to float32 rounding. A resample without
    any reference box of a class leaves that class out of the means, as pycocotools does; one
    without any reference box at all is skipped.

    Args:
        preds: Per image ``boxes`` (n, 4) xyxy, ``scores`` (n,), ``labels`` (n,).
        targets: Per image ``boxes`` (m, 4) and ``labels`` (m,).
        classes: Box class names.
        n_boot: Resamples of the images.
        seed: Seed of the resampling.
        alpha: 1 - coverage.

    Returns:
        Intervals under ``map``, ``map_50``, ``map_75`` and ``per_class`` -> name -> ``ap``.

    Raises:
        XrayfmError: Inconsistent inputs (as :func:`detection_metrics`) or bootstrap settings.
    """
    check_settings(1, n_boot, alpha)
    return detection_resamples(preds, targets, classes, n_boot=n_boot, seed=seed).intervals(alpha)
