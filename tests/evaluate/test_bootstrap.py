"""Bootstrap intervals: seeded, containing the point value, narrowing with more data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from xrayfm.errors import XrayfmError
from xrayfm.evaluate.bootstrap import (
    bootstrap_ci,
    classification_cis,
    rank_auroc,
    segmentation_cis,
)
from xrayfm.evaluate.box_bootstrap import detection_cis
from xrayfm.evaluate.box_metrics import detection_metrics
from xrayfm.evaluate.metrics import classification_metrics, segmentation_metrics


def scores(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = (rng.random(n) < 0.3).astype(float)
    p = np.clip(0.3 * t + rng.random(n) * 0.8, 0, 1).round(2)  # rounding makes ties
    return p, t


def test_rank_auroc_equals_torchmetrics_with_ties() -> None:
    p, t = scores(500)
    assert rank_auroc(p, t) == pytest.approx(float(binary_auroc(torch.tensor(p), torch.tensor(t).long())), abs=1e-6)
    assert rank_auroc(p, np.zeros_like(t)) is None


def test_same_seed_same_interval_and_value_inside() -> None:
    x = np.random.default_rng(1).random(200)
    a = bootstrap_ci(lambda i: float(x[i].mean()), len(x), n_boot=300, seed=4)
    assert a == bootstrap_ci(lambda i: float(x[i].mean()), len(x), n_boot=300, seed=4)
    assert a != bootstrap_ci(lambda i: float(x[i].mean()), len(x), n_boot=300, seed=5)
    assert a["low"] < a["value"] < a["high"] and a["n_boot"] == 300 and a["skipped"] == 0


def test_interval_narrows_with_more_samples() -> None:
    widths = []
    for n in (50, 2000):
        p, t = scores(n)
        ci = classification_cis(p[:, None], t[:, None], ["x"], n_boot=200)
        widths.append(ci["mean_auroc"]["high"] - ci["mean_auroc"]["low"])
    assert widths[1] < widths[0] / 3


def test_undefined_resamples_are_skipped_and_counted() -> None:
    t = np.zeros(30)
    t[0] = 1  # one positive: many resamples miss it
    p = np.linspace(0, 1, 30)
    ci = classification_cis(p[:, None], t[:, None], ["rare"], n_boot=200)["per_class"]["rare"]["auroc"]
    assert ci["skipped"] > 0 and ci["n_boot"] + ci["skipped"] == 200


def test_classification_cis_ignore_unknown_labels() -> None:
    p, t = scores(100)
    labels = t.copy()[:, None]
    labels[:10] = np.nan
    probs = p[:, None].copy()
    a = classification_cis(probs, labels, ["x"], n_boot=50)
    probs[:10] = 1 - probs[:10]  # only rows with unknown labels change
    assert classification_cis(probs, labels, ["x"], n_boot=50) == a


def test_multiclass_accuracy_interval() -> None:
    probs = np.eye(3)[[0, 1, 2, 0]] * 0.8 + 0.05
    labels = np.eye(3)[[0, 1, 2, 1]]
    ci = classification_cis(probs, labels, ["a", "b", "c"], kind="multiclass", n_boot=100)
    assert ci["accuracy"]["value"] == pytest.approx(0.75)


def test_segmentation_cis_from_per_image_scores() -> None:
    dice = np.array([[0.9, 0.5], [0.7, 0.5], [0.8, 0.5]])
    ci = segmentation_cis(dice, dice * 0.8, ["a", "b"], n_boot=100)
    assert ci["per_class"]["a"]["dice"]["value"] == pytest.approx(0.8)
    assert ci["per_class"]["b"]["dice"]["low"] == ci["per_class"]["b"]["dice"]["high"] == 0.5
    assert ci["mean_dice"]["value"] == pytest.approx(0.65)


def test_detection_intervals_resample_images() -> None:
    from xrayfm.evaluate.box_bootstrap import detection_cis

    targets = [{"boxes": [[10, 10, 50, 50]], "labels": [0]} for _ in range(12)]
    preds = [{"boxes": [[10, 10, 50, 50]] if i % 3 else [[60, 60, 90, 90]], "scores": [0.9], "labels": [0]}
             for i in range(12)]  # fmt: skip
    ci = detection_cis(preds, targets, ["nodule"], n_boot=30)
    assert ci["map_50"]["low"] < ci["map_50"]["value"] < ci["map_50"]["high"] + 1e-9
    assert ci["map"]["n_boot"] == 30


def labelled(n: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, k)) < 0.25).astype(float)
    y[rng.random((n, k)) < 0.1] = np.nan
    p = np.clip(0.35 * np.nan_to_num(y) + rng.random((n, k)) * 0.65, 0, 1).round(2)  # ties
    return p, y


def test_vectorised_auroc_interval_equals_the_generic_bootstrap() -> None:
    p, y = labelled(150, 3)

    def mean_auroc(idx: np.ndarray) -> float | None:
        vals = [rank_auroc(p[idx, k][~np.isnan(y[idx, k])], y[idx, k][~np.isnan(y[idx, k])]) for k in range(3)]
        return None if None in vals else float(np.mean(vals))

    fast = classification_cis(p, y, ["a", "b", "c"], n_boot=200, seed=3)
    slow = bootstrap_ci(mean_auroc, len(p), n_boot=200, seed=3)
    assert fast["mean_auroc"]["value"] == pytest.approx(slow["value"], abs=1e-6)
    fast_bounds = (fast["mean_auroc"]["low"], fast["mean_auroc"]["high"])
    assert fast_bounds == pytest.approx((slow["low"], slow["high"]), abs=1e-12)

    def sensitivity_b(idx: np.ndarray) -> float | None:
        t, d = y[idx, 1], p[idx, 1] >= 0.5
        return float(d[t == 1].mean()) if (t == 1).any() else None

    slow_b = bootstrap_ci(sensitivity_b, len(p), n_boot=200, seed=3)
    assert fast["per_class"]["b"]["sensitivity"] == pytest.approx(slow_b, abs=1e-12)


@pytest.mark.parametrize("kind", ["multilabel", "multiclass"])
def test_interval_values_equal_the_point_metrics(kind: str) -> None:
    p, y = labelled(120, 3, seed=2)
    if kind == "multiclass":
        y = np.eye(3)[np.nan_to_num(y).argmax(1)]
        p = p / p.sum(1, keepdims=True)
    threshold = [0.4, 0.5, 0.6] if kind == "multilabel" else 0.5
    m = classification_metrics(p, y, ["a", "b", "c"], kind=kind, threshold=threshold)
    ci = classification_cis(p, y, ["a", "b", "c"], kind=kind, threshold=threshold, n_boot=50)
    assert ci["mean_auroc"]["value"] == m["mean"]["auroc"] and ci["accuracy"]["value"] == m["mean"]["accuracy"]
    assert ci["mean_sensitivity"]["value"] == m["mean"]["sensitivity"]
    for c in "abc":
        for key in ("auroc", "accuracy", "sensitivity", "specificity"):
            assert ci["per_class"][c][key]["value"] == m["per_class"][c][key]
            assert ci["per_class"][c][key]["low"] <= ci["per_class"][c][key]["high"]


def test_classification_intervals_are_seeded() -> None:
    p, y = labelled(100, 2)
    a = classification_cis(p, y, ["a", "b"], n_boot=100, seed=1)
    assert a == classification_cis(p, y, ["a", "b"], n_boot=100, seed=1)
    assert a != classification_cis(p, y, ["a", "b"], n_boot=100, seed=2)
    assert a["mean_auroc"]["low"] < a["mean_auroc"]["value"] < a["mean_auroc"]["high"]


def test_generic_bootstrap_counts_none_and_nan_as_skipped() -> None:
    x = np.arange(20.0)

    def statistic(idx: np.ndarray) -> float | None:
        if idx[0] % 3 == 0:
            return None
        return float("nan") if idx[0] % 3 == 1 else float(x[idx].mean())

    ci = bootstrap_ci(statistic, 20, n_boot=300, seed=0)
    first = np.random.default_rng(0).integers(0, 20, (300, 20))[:, 0]
    assert ci["skipped"] == int((first % 3 != 2).sum()) and ci["n_boot"] == int((first % 3 == 2).sum())
    assert ci["value"] is None  # the full sample starts with index 0
    assert bootstrap_ci(lambda i: None, 5, n_boot=10)["low"] is None


@pytest.mark.parametrize(("n", "n_boot", "alpha", "match"), [(0, 10, 0.05, "at least one"), (5, -1, 0.05, "n_boot"),
                                                             (5, 10, 1.5, "alpha")])  # fmt: skip
def test_bad_bootstrap_settings_are_named(n: int, n_boot: int, alpha: float, match: str) -> None:
    with pytest.raises(XrayfmError, match=match):
        bootstrap_ci(lambda i: 1.0, n, n_boot=n_boot, alpha=alpha)


def test_wider_coverage_gives_a_wider_interval() -> None:
    x = np.random.default_rng(0).random(100)
    narrow = bootstrap_ci(lambda i: float(x[i].mean()), 100, n_boot=400, alpha=0.2)
    wide = bootstrap_ci(lambda i: float(x[i].mean()), 100, n_boot=400, alpha=0.01)
    assert wide["low"] < narrow["low"] < narrow["high"] < wide["high"]


def test_segmentation_cis_skip_unscored_images_and_match_the_metrics() -> None:
    rng = np.random.default_rng(0)
    target = (rng.random((30, 2, 8, 8)) < 0.3).astype(np.uint8)
    target[:3, 1] = 255  # class 1 not annotated on three images
    pred = (rng.random((30, 2, 8, 8)) < 0.3) | (target == 1)
    m = segmentation_metrics(pred, target, ["a", "b"], return_per_image=True)
    ci = segmentation_cis(m["per_image"]["dice"], m["per_image"]["jaccard"], ["a", "b"], n_boot=200)
    assert ci["mean_dice"]["value"] == m["mean"]["dice"] and ci["mean_jaccard"]["value"] == m["mean"]["jaccard"]
    assert ci["per_class"]["b"]["dice"]["value"] == m["per_class"]["b"]["dice"]
    assert ci["mean_dice"]["low"] < ci["mean_dice"]["value"] < ci["mean_dice"]["high"]
    with pytest.raises(XrayfmError, match="per-image jaccard"):
        segmentation_cis(np.zeros((3, 2)), np.zeros((3, 1)), ["a", "b"])


def boxes_case(n: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    rng = np.random.default_rng(seed)
    preds, targets = [], []
    for _ in range(n):
        m = int(rng.integers(0, 3))
        xy = rng.random((m, 2)) * 100
        truth = np.c_[xy, xy + 10 + rng.random((m, 2)) * 40]
        labels = rng.integers(0, 2, m)
        noise = rng.normal(0, 4, (m, 4))
        extra = np.c_[rng.random((2, 2)) * 100, rng.random((2, 2)) * 100 + 100]
        preds.append({"boxes": np.r_[truth + noise, extra], "scores": rng.random(m + 2),
                      "labels": np.r_[labels, rng.integers(0, 2, 2)]})  # fmt: skip
        targets.append({"boxes": truth, "labels": labels})
    return preds, targets


def test_detection_intervals_match_torchmetrics_and_are_seeded() -> None:
    preds, targets = boxes_case(25)
    m = detection_metrics(preds, targets, ["a", "b"])
    ci = detection_cis(preds, targets, ["a", "b"], n_boot=40, seed=1)
    for key in ("map", "map_50", "map_75"):
        assert ci[key]["value"] == pytest.approx(m[key], abs=1e-6)
        assert ci[key]["n_boot"] + ci[key]["skipped"] == 40
    assert ci["per_class"]["b"]["ap"]["value"] == pytest.approx(m["per_class"]["b"]["ap"], abs=1e-6)
    assert ci == detection_cis(preds, targets, ["a", "b"], n_boot=40, seed=1)
    assert ci["map_50"]["low"] < ci["map_50"]["high"]


def test_detection_resample_equals_torchmetrics_on_the_repeated_images() -> None:
    from xrayfm.evaluate.bootstrap import index_chunks
    from xrayfm.evaluate.box_bootstrap import _CocoResampler

    preds, targets = boxes_case(12, seed=4)
    idx = next(index_chunks(12, 1, seed=0))[0]
    resampled = _CocoResampler(preds, targets, 2).scores(idx)
    direct = detection_metrics([preds[i] for i in idx], [targets[i] for i in idx], ["a", "b"])
    assert resampled["map"] == pytest.approx(direct["map"], abs=1e-6)
    assert resampled["map_50"] == pytest.approx(direct["map_50"], abs=1e-6)


def test_detection_class_absent_from_a_resample_is_skipped() -> None:
    targets = [{"boxes": [[10, 10, 50, 50]], "labels": [0]}] + [{"boxes": np.zeros((0, 4)), "labels": []}] * 9
    preds = [{"boxes": [[10, 10, 50, 50]], "scores": [0.9], "labels": [0]}] * 10
    ci = detection_cis(preds, targets, ["nodule"], n_boot=50)
    assert ci["map"]["skipped"] > 0 and ci["map"]["n_boot"] + ci["map"]["skipped"] == 50
