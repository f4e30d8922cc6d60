"""Paired comparisons of two models scored on the same images: bootstrap differences and DeLong's test.

Two models evaluated on one test set make correlated errors: an image that is hard for one is
usually hard for the other. Comparing their separate confidence intervals ignores that and is
too conservative (and overlap says little). Here both are scored on the same resamples of the
images (the paired bootstrap: :class:`~xrayfm.evaluate.bootstrap.Resamples` of both models with
one ``seed``), and each metric's difference B - A gets a percentile interval of the resampled
differences.

For AUROC, DeLong's test (DeLong, DeLong & Clarke-Pearson 1988) gives the variance of the
difference of two correlated AUROCs from the structural components of the Mann-Whitney
statistic, computed with midranks as in Sun & Xu (2014, "Fast implementation of DeLong's
algorithm", IEEE Signal Processing Letters 21(11)) in O(N log N). The macro (mean over classes)
difference uses the same components: written per image, the DeLong variance of any linear
combination of AUROCs is the sum over images of the squared combined components, which for a
single class is exactly DeLong's ``S10 / m + S01 / n`` and for several classes adds the
covariance that sharing images creates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import norm, rankdata

from xrayfm.errors import XrayfmError
from xrayfm.evaluate.bootstrap import Resamples, nest, percentile_interval
from xrayfm.evaluate.metrics import check_classification_inputs, known_class_rows


def delong_components(scores: Any, positive: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUROCs and DeLong's structural components of several score vectors on one binary target.

    Sun & Xu's midrank form: for a positive case, ``V10`` is the share of negatives it outscores
    (ties half); for a negative case, ``V01`` is the share of positives that outscore it.

    Args:
        scores: (R, N) scores of R models (or (N,) for one) on the same N cases.
        positive: (N,) bool, True for the positive cases.

    Returns:
        ``(auroc, v10, v01)``: (R,) AUROCs, (R, m) components of the m positives and (R, n) of
        the n negatives, in the input order of the cases.

    Raises:
        XrayfmError: Shapes disagree, or there is no positive or no negative case.
    """
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    pos = np.asarray(positive, dtype=bool).reshape(-1)
    if s.shape[1] != pos.size:
        raise XrayfmError(f"{s.shape[1]} scores for {pos.size} targets")
    m, n = int(pos.sum()), int((~pos).sum())
    if m == 0 or n == 0:
        raise XrayfmError(f"AUROC needs positive and negative cases, got {m} and {n}")
    x, y = s[:, pos], s[:, ~pos]
    tz = rankdata(np.concatenate([x, y], axis=1), axis=1)  # midranks over all cases
    tx, ty = rankdata(x, axis=1), rankdata(y, axis=1)  # midranks within positives / negatives
    auroc = (tz[:, :m].sum(1) / m - (m + 1) / 2.0) / n
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    return auroc, v10, v01


def _influence(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """AUROC (R,) and per-case DeLong influence (R, N) whose squared sums give DeLong's variance.

    The influence of a positive is ``(V10 - AUROC) / sqrt(m (m - 1))`` and of a negative
    ``(V01 - AUROC) / sqrt(n (n - 1))``; None when there are fewer than two of either (no variance).
    """
    auroc, v10, v01 = delong_components(scores, positive)
    m, n = v10.shape[1], v01.shape[1]
    if m < 2 or n < 2:
        return auroc, None
    phi = np.zeros(np.atleast_2d(scores).shape)
    phi[:, positive] = (v10 - auroc[:, None]) / np.sqrt(m * (m - 1))
    phi[:, ~positive] = (v01 - auroc[:, None]) / np.sqrt(n * (n - 1))
    return auroc, phi


def _test(a: float, b: float, variance: float | None) -> dict[str, Any]:
    diff = b - a
    out: dict[str, Any] = {"a": a, "b": b, "difference": diff, "se": None, "z": None, "p": None}
    if variance is None:
        return out
    se = float(np.sqrt(max(variance, 0.0)))
    out["se"] = se
    if se > 0:
        z = diff / se
        out["z"], out["p"] = float(z), float(2 * norm.sf(abs(z)))
    elif diff == 0:  # identical rankings: no difference and no variance
        out["z"], out["p"] = 0.0, 1.0
    return out


def delong_test(scores_a: Any, scores_b: Any, labels: Any) -> dict[str, Any]:
    """DeLong's test of two correlated AUROCs (two models, one binary target, the same cases).

    Args:
        scores_a: (N,) scores of model A.
        scores_b: (N,) scores of model B.
        labels: (N,) 0/1 targets.

    Returns:
        ``a``, ``b`` (AUROCs), ``difference`` (B - A), ``se`` (its DeLong standard error), ``z``
        and two-sided ``p``; ``se``, ``z`` and ``p`` are None with fewer than two positives or
        negatives.

    Raises:
        XrayfmError: Shapes disagree, labels are not 0/1, or a class is missing.
    """
    t = np.asarray(labels, dtype=np.float64).reshape(-1)
    if ((t != 0) & (t != 1)).any():
        raise XrayfmError("DeLong's test needs 0/1 labels")
    auroc, phi = _influence(np.stack([np.ravel(scores_a), np.ravel(scores_b)]), t == 1)
    variance = None if phi is None else float(((phi[1] - phi[0]) ** 2).sum())
    return _test(float(auroc[0]), float(auroc[1]), variance)


def delong_classification(
    probs_a: Any, probs_b: Any, labels: Any, classes: Sequence[str], *, kind: str = "multilabel"
) -> dict[str, Any]:
    """DeLong's test of the AUROC difference B - A per class and for the macro mean over classes.

    Classes are scored as :func:`~xrayfm.evaluate.metrics.classification_metrics` scores them
    (unknown labels left out per class; multi-class one-vs-rest on rows with a known class). The
    macro mean is over the classes with positives and negatives, as ``mean_auroc``.

    Args:
        probs_a: (N, K) probabilities of model A.
        probs_b: (N, K) probabilities of model B on the same images.
        labels: (N, K) 0/1 labels, ``nan`` = unknown.
        classes: K class names.
        kind: ``multilabel``, ``binary`` or ``multiclass``.

    Returns:
        ``mean_auroc`` and ``per_class`` -> name -> ``auroc``, each as :func:`delong_test`
        (``a``, ``b``, ``difference``, ``se``, ``z``, ``p``); a class without positives or
        negatives has all None, and the macro has no ``se`` when one of its classes has fewer
        than two positives or negatives.
    """
    pa, y, _ = check_classification_inputs(probs_a, labels, classes, kind)
    pb, _, _ = check_classification_inputs(probs_b, labels, classes, kind)
    if kind == "multiclass":
        rows = known_class_rows(y)
        pa, pb = pa[rows], pb[rows]
        y = np.eye(len(classes))[y[rows].argmax(1)]
    per_class: dict[str, Any] = {}
    aurocs: list[np.ndarray] = []
    influence: list[np.ndarray | None] = []
    for k, c in enumerate(classes):
        known = ~np.isnan(y[:, k])
        positive = y[known, k] == 1
        if positive.all() or not positive.any():
            per_class[c] = {"auroc": dict.fromkeys(("a", "b", "difference", "se", "z", "p"))}
            continue
        auroc, phi = _influence(np.stack([pa[known, k], pb[known, k]]), positive)
        full = None
        if phi is not None:
            full = np.zeros((2, len(y)))
            full[:, known] = phi
        aurocs.append(auroc)
        influence.append(full)
        per_class[c] = {"auroc": _test(float(auroc[0]), float(auroc[1]), None if phi is None else
                                       float(((phi[1] - phi[0]) ** 2).sum()))}  # fmt: skip
    if not aurocs:
        macro = dict.fromkeys(("a", "b", "difference", "se", "z", "p"))
    else:
        mean = np.mean(aurocs, axis=0)
        variance = None
        if all(phi is not None for phi in influence):
            combined = np.mean([phi[1] - phi[0] for phi in influence], axis=0)  # type: ignore[index]
            variance = float((combined**2).sum())
        macro = _test(float(mean[0]), float(mean[1]), variance)
    return {"mean_auroc": macro, "per_class": per_class}


def paired_differences(a: Resamples, b: Resamples, *, alpha: float = 0.05) -> dict[str, Any]:
    """Each metric's difference B - A with the percentile interval of the paired resampled differences.

    Args:
        a: Resamples of model A.
        b: Resamples of model B on the same images, with the same ``n_boot`` and ``seed`` (so
            row r of both is the same resample of the images).
        alpha: 1 - coverage.

    Returns:
        Nested as the resamples' keys, each leaf ``a``, ``b`` (values on all images),
        ``difference`` (B - A, None where either is undefined), ``low`` / ``high`` (interval of the
        difference), ``n_boot`` (resamples where both were defined) and ``skipped``.

    Raises:
        XrayfmError: The two hold different metrics or numbers of resamples.
    """
    if a.values.keys() != b.values.keys():
        raise XrayfmError("the two models were scored on different metrics")
    flat: dict[tuple[str, ...], Any] = {}
    for key, va in a.values.items():
        vb = b.values[key]
        da, db = a.draws[key], b.draws[key]
        if da.shape != db.shape:
            raise XrayfmError(f"{'/'.join(key)}: {da.size} and {db.size} resamples; use the same n_boot and seed")
        diff = None if va is None or vb is None else vb - va
        interval = percentile_interval(diff, db - da, alpha)
        flat[key] = {"a": va, "b": vb, "difference": interval.pop("value"), **interval}
    return nest(flat)


def seed_mean_difference(
    differences: Sequence[tuple[float | None, np.ndarray]], *, seed: int = 0, alpha: float = 0.05
) -> dict[str, Any]:
    """Mean over training seeds of paired differences, with an interval over images and seeds.

    Each seed's pair of runs was scored on the same images and resamples (one bootstrap seed).
    Replicate r of the interval takes image resample r of every seed and a resample, with
    replacement, of the seeds, so the interval holds both the test-set and the training-seed
    variation.

    Args:
        differences: Per training seed, the difference on all images (None: undefined) and its
            (n_boot,) resampled differences (``nan``: undefined).
        seed: Seed of the resampling of the training seeds.
        alpha: 1 - coverage.

    Returns:
        ``difference`` (mean over seeds), ``sd`` (sample standard deviation over seeds, None for
        one), ``per_seed`` (the differences), ``low`` / ``high``, ``n_boot`` and ``skipped``.
    """
    values = [v for v, _ in differences]
    draws = np.stack([np.asarray(d, dtype=np.float64) for _, d in differences])  # (S, B)
    s, b = draws.shape
    pick = np.random.default_rng(seed).integers(0, s, (b, s))  # seeds drawn for each replicate
    replicate = draws[pick, np.arange(b)[:, None]].mean(1)
    defined = [v for v in values if v is not None]
    mean = float(np.mean(defined)) if len(defined) == len(values) and values else None
    interval = percentile_interval(mean, replicate, alpha)
    sd = float(np.std(defined, ddof=1)) if len(defined) > 1 else None
    return {"difference": interval.pop("value"), "sd": sd, "per_seed": values, **interval}
