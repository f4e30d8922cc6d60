"""Bootstrap 95% confidence intervals over images (percentile method, seeded).

Images are resampled with replacement; each resample's metric is recomputed; the interval is
the 2.5th-97.5th percentile of the resampled values. A resample where the metric is undefined
(e.g. no positive of a class drawn) is skipped and counted. AUROC inside the loop uses a
vectorised rank formula (Mann-Whitney U, ties averaged), equal to torchmetrics' value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from xrayfm.errors import XrayfmError


def rank_auroc(p: np.ndarray, t: np.ndarray) -> float | None:
    """AUROC of scores ``p`` for 0/1 targets ``t`` by ranks; None without both classes."""
    pos = int(t.sum())
    neg = len(t) - pos
    if pos == 0 or neg == 0:
        return None
    _, inverse, counts = np.unique(p, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = (ends - (counts - 1) / 2.0)[inverse]  # average 1-based rank within ties
    return float((ranks[t == 1].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float | None],
    n_samples: int,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Point value and percentile interval of ``statistic(indices)``.

    Args:
        statistic: Maps an index array (a resample of ``range(n_samples)``) to a value or None.
        n_samples: Number of samples (images).
        n_boot: Resamples.
        seed: Seed of the resampling (deterministic).
        alpha: 1 - coverage.

    Returns:
        ``value``, ``low``, ``high`` (None when undefined), ``n_boot`` (valid resamples) and
        ``skipped`` (resamples where the statistic was undefined).
    """
    if n_samples <= 0:
        raise XrayfmError("bootstrap needs at least one sample")
    value = statistic(np.arange(n_samples))
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        v = statistic(rng.integers(0, n_samples, n_samples))
        if v is not None and np.isfinite(v):
            values.append(v)
    low = high = None
    if values:
        low, high = (float(q) for q in np.quantile(values, [alpha / 2, 1 - alpha / 2]))
    return {
        "value": None if value is None else float(value),
        "low": low,
        "high": high,
        "n_boot": len(values),
        "skipped": n_boot - len(values),
    }


def _resampled(
    statistics: dict[str, Callable[[np.ndarray], float | None]], n: int, n_boot: int, seed: int, alpha: float
) -> dict[str, dict[str, Any]]:
    """Several statistics over the same resamples (same seed = same draws for each)."""
    return {k: bootstrap_ci(f, n, n_boot=n_boot, seed=seed, alpha=alpha) for k, f in statistics.items()}


def classification_cis(
    probs: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    *,
    kind: str = "multilabel",
    threshold: float = 0.5,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Intervals of mean AUROC and accuracy and, per class, AUROC / sensitivity / specificity.

    Multi-label classes are scored over their known labels; multi-class rows with a known class
    are scored one-vs-rest (accuracy = top-1).
    """
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if kind == "multiclass":
        rows = ~np.isnan(y).any(1)
        p, target = p[rows], y[rows].argmax(1)
        y = np.eye(len(classes))[target]
        decided = np.eye(len(classes))[p.argmax(1)].astype(bool)
    else:
        decided = p >= threshold
    n = len(p)

    def auroc(k: int) -> Callable[[np.ndarray], float | None]:
        def f(idx: np.ndarray) -> float | None:
            t = y[idx, k]
            known = ~np.isnan(t)
            return rank_auroc(p[idx, k][known], t[known])

        return f

    def rate(k: int, positive: bool) -> Callable[[np.ndarray], float | None]:
        def f(idx: np.ndarray) -> float | None:
            t, d = y[idx, k], decided[idx, k]
            sel = t == (1 if positive else 0)
            return float((d[sel] == positive).mean()) if sel.any() else None

        return f

    def mean_auroc(idx: np.ndarray) -> float | None:
        vals = [v for v in (auroc(k)(idx) for k in range(len(classes))) if v is not None]
        return float(np.mean(vals)) if vals else None

    def accuracy(idx: np.ndarray) -> float | None:
        if kind == "multiclass":
            return float((p[idx].argmax(1) == y[idx].argmax(1)).mean())
        t, d = y[idx], decided[idx]
        known = ~np.isnan(t)
        return float((d[known] == (t[known] == 1)).mean()) if known.any() else None

    out: dict[str, Any] = _resampled({"mean_auroc": mean_auroc, "accuracy": accuracy}, n, n_boot, seed, alpha)
    out["per_class"] = {
        c: _resampled(
            {"auroc": auroc(k), "sensitivity": rate(k, True), "specificity": rate(k, False)}, n, n_boot, seed, alpha
        )
        for k, c in enumerate(classes)
    }
    return out


def segmentation_cis(
    dice: np.ndarray,
    jaccard: np.ndarray,
    classes: Sequence[str],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Intervals of mean Dice / Jaccard (over classes) and per class, from (N, M) per-image scores."""
    d, j = np.asarray(dice, dtype=np.float64), np.asarray(jaccard, dtype=np.float64)
    n = len(d)
    out: dict[str, Any] = _resampled(
        {"mean_dice": lambda i: float(d[i].mean()), "mean_jaccard": lambda i: float(j[i].mean())},
        n, n_boot, seed, alpha,
    )  # fmt: skip
    out["per_class"] = {
        c: _resampled(
            {"dice": lambda i, k=k: float(d[i, k].mean()), "jaccard": lambda i, k=k: float(j[i, k].mean())},
            n,
            n_boot,
            seed,
            alpha,
        )  # fmt: skip
        for k, c in enumerate(classes)
    }
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
    """Intervals of mAP (0.5:0.95) and mAP@0.5 by resampling images (pycocotools is slow: the
    number of resamples is capped at 200)."""
    from xrayfm.evaluate.metrics import detection_metrics

    n_boot = min(n_boot, 200)
    cache: dict[bytes, dict[str, Any]] = {}

    def scores(idx: np.ndarray) -> dict[str, Any]:
        key = idx.tobytes()
        if key not in cache:  # both statistics see the same resamples: score each once
            cache[key] = detection_metrics([preds[i] for i in idx], [targets[i] for i in idx], classes)
        return cache[key]

    return _resampled(
        {"map": lambda i: scores(i)["map"], "map_50": lambda i: scores(i)["map_50"]}, len(targets), n_boot, seed, alpha
    )
