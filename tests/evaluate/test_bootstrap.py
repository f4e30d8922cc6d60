"""Bootstrap intervals: seeded, containing the point value, narrowing with more data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from xrayfm.evaluate.bootstrap import bootstrap_ci, classification_cis, rank_auroc, segmentation_cis


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
    from xrayfm.evaluate.bootstrap import detection_cis

    targets = [{"boxes": [[10, 10, 50, 50]], "labels": [0]} for _ in range(12)]
    preds = [{"boxes": [[10, 10, 50, 50]] if i % 3 else [[60, 60, 90, 90]], "scores": [0.9], "labels": [0]}
             for i in range(12)]  # fmt: skip
    ci = detection_cis(preds, targets, ["nodule"], n_boot=30)
    assert ci["map_50"]["low"] < ci["map_50"]["value"] < ci["map_50"]["high"] + 1e-9
    assert ci["map"]["n_boot"] == 30
