"""The field's metrics: AUROC, accuracy, sensitivity / specificity, calibration, Dice, Jaccard.

Point values of AUROC, ROC curves and calibration error come from torchmetrics. Unknown labels
(``nan``) are left out class by class, never counted as negatives; a class without positives
or negatives in the evaluated rows has no AUROC (``None``) and a note says so. Segmentation
pixels marked 255 are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_calibration_error,
    binary_roc,
    multiclass_calibration_error,
)

from xrayfm.data.sample import MASK_IGNORE
from xrayfm.errors import XrayfmError

ECE_BINS = 15


def _array(x: Any, name: str) -> np.ndarray:
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise XrayfmError(f"{name} must be (N, K), got shape {arr.shape}")
    return arr


def _check(probs: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> None:
    if probs.shape != labels.shape:
        raise XrayfmError(f"probabilities {probs.shape} and labels {labels.shape} differ in shape")
    if probs.shape[1] != len(classes):
        raise XrayfmError(f"{probs.shape[1]} columns but {len(classes)} class names")
    if len(probs) == 0:
        raise XrayfmError("nothing to evaluate: no samples")


def _rate(num: float, den: float) -> float | None:
    return float(num / den) if den > 0 else None


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _binary_class(p: np.ndarray, t: np.ndarray, threshold: float) -> dict[str, Any]:
    pos, neg = int((t == 1).sum()), int((t == 0).sum())
    decided = p >= threshold
    tp, tn = int((decided & (t == 1)).sum()), int((~decided & (t == 0)).sum())
    pt, tt = torch.from_numpy(p.astype(np.float32)), torch.from_numpy(t.astype(np.int64))
    return {
        "positives": pos,
        "negatives": neg,
        "auroc": float(binary_auroc(pt, tt)) if pos and neg else None,
        "accuracy": _rate(tp + tn, pos + neg),
        "sensitivity": _rate(tp, pos),
        "specificity": _rate(tn, neg),
        "ece": float(binary_calibration_error(pt, tt, n_bins=ECE_BINS)) if pos + neg else None,
    }


def classification_metrics(
    probs: Any,
    labels: Any,
    classes: Sequence[str],
    *,
    kind: str = "multilabel",
    threshold: float | Sequence[float] = 0.5,
) -> dict[str, Any]:
    """Per-class and mean metrics of classification probabilities.

    Args:
        probs: (N, K) probabilities (sigmoid for multi-label, softmax for multi-class).
        labels: (N, K) 0/1 targets (one-hot for multi-class); ``nan`` = unknown.
        classes: K class names.
        kind: ``multilabel`` (binary = one class) or ``multiclass``.
        threshold: Decision threshold for accuracy / sensitivity / specificity (multi-label),
            one value or one per class. Multi-class decisions are the arg-max.

    Returns:
        ``kind``, ``n``, ``threshold``, ``per_class`` (``auroc``, ``accuracy``, ``sensitivity``,
        ``specificity``, ``ece``, ``positives``, ``negatives``), ``mean`` (over classes where
        defined; multi-class adds top-1 ``accuracy`` and ``ece`` over all rows) and ``notes``.

    Raises:
        XrayfmError: Shapes disagree, no samples, or an unknown kind.
    """
    p, y = _array(probs, "probabilities"), _array(labels, "labels")
    _check(p, y, classes)
    notes: list[str] = []
    per_class: dict[str, dict[str, Any]] = {}
    if kind == "multilabel":
        thresholds = np.broadcast_to(np.asarray(threshold, dtype=float), (len(classes),))
        for k, name in enumerate(classes):
            known = ~np.isnan(y[:, k])
            per_class[name] = _binary_class(p[known, k], y[known, k], float(thresholds[k]))
        mean = {key: _mean([m[key] for m in per_class.values()]) for key in ("auroc", "accuracy", "sensitivity",
                                                                              "specificity", "ece")}  # fmt: skip
    elif kind == "multiclass":
        rows = ~np.isnan(y).any(1)
        p, y = p[rows], y[rows]
        if not len(y):
            raise XrayfmError("nothing to evaluate: no sample has a known class")
        target, decided = y.argmax(1), p.argmax(1)
        for k, name in enumerate(classes):
            m = _binary_class(p[:, k], (target == k).astype(float), 0.5)
            m["sensitivity"] = _rate(((decided == k) & (target == k)).sum(), (target == k).sum())
            m["specificity"] = _rate(((decided != k) & (target != k)).sum(), (target != k).sum())
            m["accuracy"] = float(((decided == k) == (target == k)).mean())
            per_class[name] = m
        mean = {key: _mean([m[key] for m in per_class.values()]) for key in ("auroc", "sensitivity", "specificity")}
        mean["accuracy"] = float((decided == target).mean())
        pt = torch.from_numpy(p.astype(np.float32))
        mean["ece"] = float(multiclass_calibration_error(pt, torch.from_numpy(target), len(classes), n_bins=ECE_BINS))
        threshold = "argmax"  # type: ignore[assignment]
    else:
        raise XrayfmError(f"classification_metrics: unknown kind {kind!r}")
    for name, m in per_class.items():
        if m["auroc"] is None:
            notes.append(f"{name}: AUROC undefined ({m['positives']} positives, {m['negatives']} negatives)")
    thr = threshold if isinstance(threshold, (str, float, int)) else [float(t) for t in threshold]
    return {"kind": kind, "n": int(len(p)), "threshold": thr, "per_class": per_class, "mean": mean, "notes": notes}


def roc_curves(probs: Any, labels: Any, classes: Sequence[str]) -> dict[str, dict[str, Any]]:
    """ROC curve (``fpr``, ``tpr`` lists) and AUROC per class over known labels (one-vs-rest)."""
    p, y = _array(probs, "probabilities"), _array(labels, "labels")
    _check(p, y, classes)
    out: dict[str, dict[str, Any]] = {}
    for k, name in enumerate(classes):
        known = ~np.isnan(y[:, k])
        pk, tk = torch.from_numpy(p[known, k].astype(np.float32)), torch.from_numpy(y[known, k].astype(np.int64))
        if tk.numel() == 0 or tk.min() == tk.max():
            out[name] = {"fpr": [], "tpr": [], "auroc": None}
            continue
        fpr, tpr, _ = binary_roc(pk, tk)
        out[name] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auroc": float(binary_auroc(pk, tk))}
    return out


def overlap_per_image(pred: Any, target: Any) -> tuple[np.ndarray, np.ndarray]:
    """Dice and Jaccard per image and class, (N, M) each, ignoring target pixels marked 255.

    A class absent from both the prediction and the reference of an image scores 1 (a correct
    "nothing here").
    """
    pr = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
    tg = target.detach().cpu().numpy() if isinstance(target, torch.Tensor) else np.asarray(target)
    if pr.shape != tg.shape or pr.ndim != 4:
        raise XrayfmError(f"predicted masks {pr.shape} and reference masks {tg.shape} must both be (N, M, H, W)")
    keep = tg != MASK_IGNORE
    p, t = pr.astype(bool) & keep, (tg == 1) & keep
    inter = (p & t).sum((2, 3)).astype(np.float64)
    sp, st = p.sum((2, 3)).astype(np.float64), t.sum((2, 3)).astype(np.float64)
    union = sp + st - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(sp + st > 0, 2 * inter / (sp + st), 1.0)
        jaccard = np.where(union > 0, inter / union, 1.0)
    return dice, jaccard


def segmentation_metrics(
    pred: Any, target: Any, classes: Sequence[str], *, return_per_image: bool = False
) -> dict[str, Any]:
    """Mean Dice and Jaccard per class (over images) and over classes.

    Args:
        pred: (N, M, H, W) binary predicted masks.
        target: (N, M, H, W) uint8 reference (1 = class, 0 = not, 255 = ignore).
        classes: M class names.
        return_per_image: Also return the (N, M) arrays (``per_image``) for resampling.
    """
    dice, jaccard = overlap_per_image(pred, target)
    if dice.shape[1] != len(classes):
        raise XrayfmError(f"{dice.shape[1]} mask channels but {len(classes)} class names")
    per_class = {c: {"dice": float(dice[:, k].mean()), "jaccard": float(jaccard[:, k].mean())}
                 for k, c in enumerate(classes)}  # fmt: skip
    out: dict[str, Any] = {
        "n": int(len(dice)),
        "per_class": per_class,
        "mean": {"dice": float(dice.mean()), "jaccard": float(jaccard.mean())},
    }
    if return_per_image:
        out["per_image"] = {"dice": dice.tolist(), "jaccard": jaccard.tolist()}
    return out


def detection_metrics(
    preds: Sequence[dict[str, Any]], targets: Sequence[dict[str, Any]], classes: Sequence[str]
) -> dict[str, Any]:
    """COCO-style box metrics (torchmetrics ``MeanAveragePrecision``, pycocotools backend).

    Args:
        preds: Per image ``boxes`` (n, 4) xyxy, ``scores`` (n,), ``labels`` (n,) 0-based.
        targets: Per image ``boxes`` and ``labels``.
        classes: Box class names.

    Returns:
        ``map`` (IoU 0.5:0.95), ``map_50``, ``map_75``, ``mar_100`` and per-class ``ap`` / ``ar_100``
        (None where a class has no reference box), plus ``n`` images and ``boxes`` (reference count).
    """
    from torchmetrics.detection import MeanAveragePrecision

    if len(preds) != len(targets):
        raise XrayfmError(f"{len(preds)} predictions for {len(targets)} annotated images")
    if not len(targets):
        raise XrayfmError("nothing to evaluate: no box-annotated image")
    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=True, backend="pycocotools")

    def tensors(d: dict[str, Any], keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
        out = {k: torch.as_tensor(np.asarray(d[k])) for k in keys}
        out["boxes"] = out["boxes"].float().reshape(-1, 4)
        out["labels"] = out["labels"].long().reshape(-1)
        return out

    metric.update([tensors(p, ("boxes", "scores", "labels")) for p in preds],
                  [tensors(t, ("boxes", "labels")) for t in targets])  # fmt: skip
    res = metric.compute()

    def value(x: torch.Tensor) -> float | None:
        v = float(x)
        return None if v < 0 else v  # torchmetrics reports -1 where undefined

    per_class: dict[str, dict[str, Any]] = {c: {"ap": None, "ar_100": None} for c in classes}
    found = res["classes"].reshape(-1).tolist()
    for i, k in enumerate(found):
        if 0 <= k < len(classes):
            per_class[classes[k]] = {"ap": value(res["map_per_class"].reshape(-1)[i]),
                                     "ar_100": value(res["mar_100_per_class"].reshape(-1)[i])}  # fmt: skip
    return {
        "n": len(targets),
        "boxes": int(sum(len(np.asarray(t["labels"]).reshape(-1)) for t in targets)),
        "map": value(res["map"]),
        "map_50": value(res["map_50"]),
        "map_75": value(res["map_75"]),
        "mar_100": value(res["mar_100"]),
        "per_class": per_class,
    }
