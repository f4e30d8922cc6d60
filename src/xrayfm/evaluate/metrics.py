"""The field's metrics: AUROC, accuracy, sensitivity / specificity, calibration, Dice, Jaccard.

Point values of AUROC, ROC curves and calibration error come from torchmetrics. Unknown labels
(``nan``) are left out class by class, never counted as negatives; a class without positives or
negatives in the evaluated rows has no AUROC (``None``) and a note says so. Segmentation pixels
marked 255 are ignored. Every result is a plain, JSON-serialisable dict.

The input checks and small reductions that :mod:`xrayfm.evaluate.bootstrap` reuses are public
here (:func:`check_classification_inputs`, :func:`known_class_rows`, :func:`mean_or_none`,
:func:`column_means`, :func:`as_numpy`), so the intervals score exactly what the point values
score. Box mAP lives in :mod:`xrayfm.evaluate.box_metrics`.
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
from xrayfm.tasks import CLASSIFICATION_KINDS

ECE_BINS = 15
#: What :func:`classification_metrics` accepts as ``kind``: the classification task kinds plus
#: ``binary``, a scoring mode (multi-label with one class), not a task kind.
CLASSIFICATION_MODES: tuple[str, ...] = (*CLASSIFICATION_KINDS, "binary")
_PROB_TOLERANCE = 1e-4  # float16 / fused softmax may overshoot [0, 1] by a rounding error
_MASK_CHUNK = 64  # images per step when comparing masks (bounds the temporary boolean arrays)


def as_numpy(x: Any) -> np.ndarray:
    """A numpy view of a tensor (detached, on the CPU) or an array-like."""
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _matrix(x: Any, name: str) -> np.ndarray:
    arr = as_numpy(x)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise XrayfmError(f"{name} must be (N, K), got shape {arr.shape}")
    try:
        return arr.astype(np.float64)
    except (TypeError, ValueError) as e:
        raise XrayfmError(f"{name} must be numeric, got dtype {arr.dtype}") from e


def check_classification_inputs(
    probs: Any, labels: Any, classes: Sequence[str], kind: str, threshold: float | Sequence[float] = 0.5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checked float64 (N, K) probabilities and labels and K thresholds.

    Multi-class rows with an unknown (``nan``) label are kept here; callers drop them (see
    :func:`known_class_rows`). Probabilities are clipped to [0, 1] (within a rounding tolerance).

    Args:
        probs: (N, K) probabilities (or (N,) for one class), numpy or torch.
        labels: (N, K) 0/1 labels, ``nan`` = unknown (one-hot for multi-class).
        classes: K class names.
        kind: One of :data:`CLASSIFICATION_MODES`.
        threshold: One decision threshold, or one per class.

    Returns:
        ``(probabilities, labels, thresholds)``: float64 (N, K), (N, K) and (K,).

    Raises:
        XrayfmError: Unknown kind, shapes that disagree, no samples, probabilities outside [0, 1]
            or not finite, labels other than 0 / 1 / nan, multi-class labels that are not one-hot,
            or a threshold list of the wrong length.
    """
    if kind not in CLASSIFICATION_MODES:
        raise XrayfmError(f"unknown classification kind {kind!r}; expected one of {CLASSIFICATION_MODES}")
    p, y = _matrix(probs, "probabilities"), _matrix(labels, "labels")
    if p.shape != y.shape:
        raise XrayfmError(f"probabilities {p.shape} and labels {y.shape} differ in shape")
    if p.shape[1] != len(classes):
        raise XrayfmError(f"{p.shape[1]} columns but {len(classes)} class names")
    if kind == "binary" and len(classes) != 1:
        raise XrayfmError(f"kind 'binary' takes one class, got {len(classes)}; use 'multilabel'")
    if len(p) == 0:
        raise XrayfmError("nothing to evaluate: no samples")
    if not np.isfinite(p).all():
        raise XrayfmError(f"probabilities contain {int((~np.isfinite(p)).sum())} nan / infinite values")
    if p.min() < -_PROB_TOLERANCE or p.max() > 1 + _PROB_TOLERANCE:
        raise XrayfmError(
            f"probabilities must lie in [0, 1], got [{p.min():.4g}, {p.max():.4g}]: pass sigmoid / softmax outputs, "
            "not logits"
        )
    p = np.clip(p, 0.0, 1.0)
    known = y[~np.isnan(y)]
    bad = np.unique(known[(known != 0) & (known != 1)])
    if bad.size:
        raise XrayfmError(f"labels must be 0, 1 or nan (unknown), found {bad[:5].tolist()}; map them first")
    if kind == "multiclass":
        sums = y[~np.isnan(y).any(1)].sum(1)
        if (sums != 1).any():
            row = int(np.flatnonzero(~np.isnan(y).any(1))[np.argmax(sums != 1)])
            raise XrayfmError(f"multiclass labels must be one-hot; row {row} has {int(sums[sums != 1][0])} ones")
    thresholds = np.asarray(threshold, dtype=np.float64).reshape(-1)
    if thresholds.size == 1:
        thresholds = np.repeat(thresholds, len(classes))
    if thresholds.size != len(classes) or not np.isfinite(thresholds).all():
        raise XrayfmError(f"threshold must be one number or one per class ({len(classes)}), got {threshold!r}")
    return p, y, thresholds


def _rate(num: float, den: float) -> float | None:
    return float(num / den) if den > 0 else None


def mean_or_none(values: Sequence[float | None]) -> float | None:
    """Mean of the values that are defined.

    Args:
        values: Numbers, None where undefined.

    Returns:
        The mean of the numbers, or None when every value is None (or there is none).
    """
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _tensors(p: np.ndarray, t: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(np.ascontiguousarray(p)), torch.from_numpy(t.astype(np.int64))


def _binary_class(p: np.ndarray, t: np.ndarray, threshold: float) -> dict[str, Any]:
    pos, neg = int((t == 1).sum()), int((t == 0).sum())
    decided = p >= threshold
    tp, tn = int((decided & (t == 1)).sum()), int((~decided & (t == 0)).sum())
    pt, tt = _tensors(p, t)
    return {
        "positives": pos,
        "negatives": neg,
        "auroc": float(binary_auroc(pt, tt)) if pos and neg else None,
        "accuracy": _rate(tp + tn, pos + neg),
        "sensitivity": _rate(tp, pos),
        "specificity": _rate(tn, neg),
        "ece": float(binary_calibration_error(pt, tt, n_bins=ECE_BINS)) if pos + neg else None,
    }


def known_class_rows(y: np.ndarray) -> np.ndarray:
    """Rows of one-hot labels whose class is known (no ``nan``).

    Args:
        y: (N, K) one-hot labels, ``nan`` = unknown.

    Returns:
        bool (N,): True where the row has no ``nan``.
    """
    return ~np.isnan(y).any(1)


def classification_metrics(
    probs: Any,
    labels: Any,
    classes: Sequence[str],
    *,
    kind: str = "multilabel",
    threshold: float | Sequence[float] = 0.5,
) -> dict[str, Any]:
    """Per-class and mean metrics of classification probabilities.

    Multi-label (and ``binary``, one class): each class is scored over the rows where its label
    is known; accuracy, sensitivity and specificity use ``probability >= threshold``. Multi-class:
    rows with a known class are scored; per-class AUROC is one-vs-rest and the decisions are the
    arg-max. ECE is the 15-bin L1 expected calibration error (torchmetrics).

    Args:
        probs: (N, K) probabilities (sigmoid for multi-label, softmax for multi-class), numpy or torch.
        labels: (N, K) 0/1 targets (one-hot for multi-class); ``nan`` = unknown.
        classes: K class names.
        kind: ``multilabel``, ``binary`` (multi-label with one class) or ``multiclass``.
        threshold: Multi-label decision threshold, one value or one per class.

    Returns:
        ``kind``, ``n`` (rows scored), ``threshold`` (``"argmax"`` for multi-class), ``per_class``
        (name -> ``auroc``, ``accuracy``, ``sensitivity``, ``specificity``, ``ece``, ``positives``,
        ``negatives``; a rate is None where its denominator is 0), ``mean`` (the same metrics
        averaged over the classes where defined; multi-class ``accuracy`` is top-1 and ``ece`` the
        multi-class calibration error) and ``notes`` (why a value is missing).

    Raises:
        XrayfmError: Bad inputs (see shapes, ranges and label values above) or no row to score.
    """
    p, y, thresholds = check_classification_inputs(probs, labels, classes, kind, threshold)
    notes: list[str] = []
    per_class: dict[str, dict[str, Any]] = {}
    keys = ("auroc", "accuracy", "sensitivity", "specificity", "ece")
    if kind == "multiclass":
        rows = known_class_rows(y)
        if not rows.any():
            raise XrayfmError("nothing to evaluate: no sample has a known class")
        if not rows.all():
            notes.append(f"{int((~rows).sum())} rows without a known class left out")
        p, y = p[rows], y[rows]
        target, decided = y.argmax(1), p.argmax(1)
        for k, name in enumerate(classes):
            m = _binary_class(p[:, k], (target == k).astype(np.float64), 0.5)
            m["sensitivity"] = _rate(((decided == k) & (target == k)).sum(), (target == k).sum())
            m["specificity"] = _rate(((decided != k) & (target != k)).sum(), (target != k).sum())
            m["accuracy"] = float(((decided == k) == (target == k)).mean())
            per_class[name] = m
        mean = {key: mean_or_none([m[key] for m in per_class.values()]) for key in keys}
        mean["accuracy"] = float((decided == target).mean())
        pt, tt = _tensors(p, target)
        mean["ece"] = float(multiclass_calibration_error(pt, tt, len(classes), n_bins=ECE_BINS))
        thr: Any = "argmax"
    else:
        for k, name in enumerate(classes):
            known = ~np.isnan(y[:, k])
            per_class[name] = _binary_class(p[known, k], y[known, k], float(thresholds[k]))
        mean = {key: mean_or_none([m[key] for m in per_class.values()]) for key in keys}
        thr = float(thresholds[0]) if np.ndim(threshold) == 0 else thresholds.tolist()
    for name, m in per_class.items():
        if m["auroc"] is None:
            notes.append(f"{name}: AUROC undefined ({m['positives']} positives, {m['negatives']} negatives)")
    return {"kind": kind, "n": int(len(p)), "threshold": thr, "per_class": per_class, "mean": mean, "notes": notes}


def roc_curves(probs: Any, labels: Any, classes: Sequence[str]) -> dict[str, dict[str, Any]]:
    """ROC curve per class over its known labels (one-vs-rest for one-hot labels), for plotting.

    Args:
        probs: (N, K) probabilities.
        labels: (N, K) 0/1 labels, ``nan`` = unknown.
        classes: K class names.

    Returns:
        Class name -> ``fpr`` and ``tpr`` (lists, from torchmetrics ``binary_roc``) and ``auroc``;
        empty lists and None where the class lacks positives or negatives.
    """
    p, y, _ = check_classification_inputs(probs, labels, classes, "multilabel")
    out: dict[str, dict[str, Any]] = {}
    for k, name in enumerate(classes):
        known = ~np.isnan(y[:, k])
        pk, tk = _tensors(p[known, k], y[known, k])
        if tk.numel() == 0 or tk.min() == tk.max():
            out[name] = {"fpr": [], "tpr": [], "auroc": None}
            continue
        fpr, tpr, _ = binary_roc(pk, tk)
        out[name] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auroc": float(binary_auroc(pk, tk))}
    return out


def overlap_per_image(pred: Any, target: Any) -> tuple[np.ndarray, np.ndarray]:
    """Dice and Jaccard per image and class, (N, M) float64 each, ignoring target pixels marked 255.

    A class absent from both the prediction and the reference of an image scores 1 (a correct
    "nothing here"). Where every pixel of a class is ignored in an image the score is ``nan``
    (nothing to evaluate): leave it out of means.

    Args:
        pred: (N, M, H, W) binary prediction (bool, or integers / floats that are 0 or 1).
        target: (N, M, H, W) uint8 reference: 1 = class, 0 = not, 255 = ignore.

    Raises:
        XrayfmError: Shapes differ or are not 4-D, the prediction is not binary (threshold
            probabilities first), or the reference holds values other than 0, 1 and 255.
    """
    pr, tg = as_numpy(pred), as_numpy(target)
    if pr.shape != tg.shape or pr.ndim != 4:
        raise XrayfmError(f"predicted masks {pr.shape} and reference masks {tg.shape} must both be (N, M, H, W)")
    n, m = pr.shape[:2]
    inter, sp, st, seen = (np.zeros((n, m), dtype=np.int64) for _ in range(4))
    for s in range(0, n, _MASK_CHUNK):
        pc, tc = pr[s : s + _MASK_CHUNK], tg[s : s + _MASK_CHUNK]
        if pc.dtype != bool:
            if ((pc != 0) & (pc != 1)).any():
                raise XrayfmError("predicted masks must be binary (0/1 or bool): threshold probabilities first")
            pc = pc != 0
        if ((tc != 0) & (tc != 1) & (tc != MASK_IGNORE)).any():
            raise XrayfmError(f"reference masks must hold 0, 1 or {MASK_IGNORE} (ignore) only")
        keep = tc != MASK_IGNORE
        p, t = pc & keep, tc == 1
        inter[s : s + _MASK_CHUNK] = (p & t).sum((2, 3))
        sp[s : s + _MASK_CHUNK], st[s : s + _MASK_CHUNK] = p.sum((2, 3)), t.sum((2, 3))
        seen[s : s + _MASK_CHUNK] = keep.sum((2, 3))
    union = sp + st - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(sp + st > 0, 2 * inter / (sp + st), 1.0)
        jaccard = np.where(union > 0, inter / union, 1.0)
    dice[seen == 0] = np.nan
    jaccard[seen == 0] = np.nan
    return dice, jaccard


def column_means(scores: np.ndarray) -> list[float | None]:
    """Per column of (N, M) scores: the mean over rows that are not ``nan``.

    Args:
        scores: (N, M) float scores, ``nan`` = not scored.

    Returns:
        M means, None for a column without any score.
    """
    out: list[float | None] = []
    for col in scores.T:
        col = col[~np.isnan(col)]
        out.append(float(col.mean()) if col.size else None)
    return out


def _listed(scores: np.ndarray) -> list[list[float | None]]:
    return [[None if np.isnan(v) else float(v) for v in row] for row in scores]


def segmentation_metrics(
    pred: Any, target: Any, classes: Sequence[str], *, return_per_image: bool = False
) -> dict[str, Any]:
    """Mean Dice and Jaccard (IoU) per class over images, and over classes.

    Each image and class is scored on its own, ignoring pixels where the reference is 255. An
    image where both the prediction and the reference of a class are empty scores Dice 1 and
    Jaccard 1 (a correct "nothing here"); an image where every pixel of a class is ignored is
    not scored for that class.

    Args:
        pred: (N, M, H, W) binary predicted masks (bool, or 0/1 integers or floats).
        target: (N, M, H, W) uint8 reference (1 = class, 0 = not, 255 = ignore).
        classes: M class names.
        return_per_image: Also return the (N, M) scores (``per_image`` -> ``dice`` / ``jaccard``,
            nested lists, None where not scored) for resampling by :func:`segmentation_cis`.

    Returns:
        ``n`` images, ``per_class`` (name -> ``dice``, ``jaccard``, ``images`` scored), ``mean``
        (``dice`` / ``jaccard`` averaged over classes) and, if asked, ``per_image``.

    Raises:
        XrayfmError: Shapes or values are wrong (see :func:`overlap_per_image`) or the number of
            channels differs from the number of class names.
    """
    dice, jaccard = overlap_per_image(pred, target)
    if dice.shape[1] != len(classes):
        raise XrayfmError(f"{dice.shape[1]} mask channels but {len(classes)} class names")
    d_means, j_means = column_means(dice), column_means(jaccard)
    scored = (~np.isnan(dice)).sum(0)
    per_class = {
        c: {"dice": d_means[k], "jaccard": j_means[k], "images": int(scored[k])} for k, c in enumerate(classes)
    }
    out: dict[str, Any] = {
        "n": int(len(dice)),
        "per_class": per_class,
        "mean": {"dice": mean_or_none(d_means), "jaccard": mean_or_none(j_means)},
    }
    if return_per_image:
        out["per_image"] = {"dice": _listed(dice), "jaccard": _listed(jaccard)}
    return out
