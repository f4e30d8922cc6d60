"""Paired statistics: DeLong's test checked by hand and against the Mann-Whitney definition; paired bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xrayfm.errors import XrayfmError
from xrayfm.evaluate.bootstrap import bootstrap_ci, classification_resamples, rank_auroc, segmentation_resamples
from xrayfm.evaluate.compare import align_ids, common_tasks, compare_predictions
from xrayfm.evaluate.paired import (
    delong_classification,
    delong_components,
    delong_test,
    paired_differences,
    seed_mean_difference,
)
from xrayfm.evaluate.thresholds import ThresholdChoice
from xrayfm.tasks import TaskSpec


def test_delong_by_hand() -> None:
    """Two positives, three negatives.

    A = [0.9, 0.4 | 0.5, 0.2, 0.1]: V10 (share of negatives below each positive) = [1, 2/3],
    V01 (share of positives above each negative) = [1/2, 1, 1], AUROC 5/6.
    B = [0.8, 0.7 | 0.3, 0.6, 0.1]: V10 = [1, 1], V01 = [1, 1, 1], AUROC 1.
    Differences B - A: V10 [0, 1/3] (sample variance 1/18), V01 [1/2, 0, 0] (sample variance 1/12).
    Var = (1/18) / 2 + (1/12) / 3 = 1/36 + 1/36 = 1/18, so z = (1/6) / sqrt(1/18) = 1/sqrt(2).
    """
    labels = [1, 1, 0, 0, 0]
    a, b = [0.9, 0.4, 0.5, 0.2, 0.1], [0.8, 0.7, 0.3, 0.6, 0.1]
    auroc, v10, v01 = delong_components([a, b], np.array(labels) == 1)
    assert auroc == pytest.approx([5 / 6, 1.0])
    assert v10 == pytest.approx(np.array([[1, 2 / 3], [1, 1]]))
    assert v01 == pytest.approx(np.array([[1 / 2, 1, 1], [1, 1, 1]]))
    test = delong_test(a, b, labels)
    assert test["difference"] == pytest.approx(1 / 6)
    assert test["se"] == pytest.approx(math.sqrt(1 / 18))
    assert test["z"] == pytest.approx(1 / math.sqrt(2))
    assert test["p"] == pytest.approx(math.erfc(0.5))  # 2 (1 - Phi(z)) = erfc(z / sqrt 2)


def brute_force_delong(scores: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs and DeLong's covariance from the Mann-Whitney kernel over every positive-negative pair."""
    x, y = scores[:, t == 1], scores[:, t == 0]
    kernel = (x[:, :, None] > y[:, None, :]) + 0.5 * (x[:, :, None] == y[:, None, :])  # (R, m, n)
    v10, v01 = kernel.mean(2), kernel.mean(1)
    return kernel.mean((1, 2)), np.cov(v10) / x.shape[1] + np.cov(v01) / y.shape[1]


def test_delong_equals_the_mann_whitney_definition_with_ties() -> None:
    rng = np.random.default_rng(3)
    t = (rng.random(60) < 0.35).astype(float)
    a = np.round(rng.random(60) * 0.7 + 0.3 * t, 1)  # rounding makes many ties
    b = np.round(rng.random(60) * 0.6 + 0.5 * t, 1)
    auroc, cov = brute_force_delong(np.stack([a, b]), t)
    test = delong_test(a, b, t)
    assert [test["a"], test["b"]] == pytest.approx(auroc)
    assert test["se"] ** 2 == pytest.approx(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    assert test["a"] == pytest.approx(rank_auroc(a, t))


def test_macro_delong_is_the_contrast_of_the_delong_covariance() -> None:
    """With every label known, the macro difference's variance is L S L' for DeLong's covariance S of the
    four AUROCs (two classes x two models) and the contrast L = (-1/2, -1/2, 1/2, 1/2)."""
    rng = np.random.default_rng(0)
    y = (rng.random((80, 2)) < 0.4).astype(float)
    pa, pb = rng.random((80, 2)) * 0.8 + 0.2 * y, rng.random((80, 2)) * 0.6 + 0.4 * y
    res = delong_classification(pa, pb, y, ["c0", "c1"])
    per_class = [brute_force_delong(np.stack([pa[:, k], pb[:, k]]), y[:, k]) for k in range(2)]
    # DeLong's covariance across the two classes: the same images, different partitions; build it from
    # the per-image components of each estimator, as DeLong's S for one class generalises
    phi = []
    for k in range(2):
        _, v10, v01 = delong_components(np.stack([pa[:, k], pb[:, k]]), y[:, k] == 1)
        m, n = v10.shape[1], v01.shape[1]
        f = np.zeros((2, 80))
        f[:, y[:, k] == 1] = (v10 - v10.mean(1, keepdims=True)) / math.sqrt(m * (m - 1))
        f[:, y[:, k] == 0] = (v01 - v01.mean(1, keepdims=True)) / math.sqrt(n * (n - 1))
        phi.append(f)
    s = np.concatenate(phi) @ np.concatenate(phi).T  # (4, 4): rows A0, B0, A1, B1
    for k in range(2):  # the diagonal blocks are each class's own DeLong covariance
        assert s[2 * k : 2 * k + 2, 2 * k : 2 * k + 2] == pytest.approx(per_class[k][1])
    contrast = np.array([-0.5, 0.5, -0.5, 0.5])
    assert res["mean_auroc"]["se"] ** 2 == pytest.approx(contrast @ s @ contrast)
    assert res["mean_auroc"]["difference"] == pytest.approx(
        np.mean([res["per_class"][c]["auroc"]["difference"] for c in ("c0", "c1")])
    )


def test_identical_models_have_no_difference_and_p_one() -> None:
    rng = np.random.default_rng(1)
    y = (rng.random((50, 1)) < 0.5).astype(float)
    p = rng.random((50, 1))
    res = delong_classification(p, p, y, ["x"])
    assert res["mean_auroc"]["difference"] == 0 and res["mean_auroc"]["p"] == 1.0


def test_delong_leaves_out_unknown_labels_and_a_class_without_positives() -> None:
    y = np.array([[1, 0], [0, 0], [1, np.nan], [0, 0], [1, 0], [0, 0]], dtype=float)
    pa = np.linspace(0.1, 0.9, 12).reshape(6, 2)
    res = delong_classification(pa, pa[::-1].copy(), y, ["a", "b"])
    assert res["per_class"]["b"]["auroc"]["a"] is None
    assert res["mean_auroc"]["a"] == pytest.approx(res["per_class"]["a"]["auroc"]["a"])


def test_delong_needs_both_classes() -> None:
    with pytest.raises(XrayfmError, match="positive and negative"):
        delong_test([0.1, 0.2], [0.3, 0.4], [1, 1])


def scores(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = (rng.random(n) < 0.4).astype(float)
    a = np.clip(rng.random(n) * 0.8 + 0.2 * t, 0, 1).round(2)
    b = np.clip(rng.random(n) * 0.6 + 0.4 * t, 0, 1).round(2)
    return a, b, t


def test_paired_bootstrap_equals_the_difference_on_each_joint_resample() -> None:
    a, b, t = scores(120)
    ra = classification_resamples(a[:, None], t[:, None], ["x"], n_boot=300, seed=7)
    rb = classification_resamples(b[:, None], t[:, None], ["x"], n_boot=300, seed=7)
    diff = paired_differences(ra, rb)["mean_auroc"]

    def auroc_difference(idx: np.ndarray) -> float | None:
        va, vb = rank_auroc(a[idx], t[idx]), rank_auroc(b[idx], t[idx])
        return None if va is None or vb is None else vb - va

    ref = bootstrap_ci(auroc_difference, len(t), n_boot=300, seed=7)  # the same draws, images resampled jointly
    assert diff["difference"] == pytest.approx(ref["value"])
    assert (diff["low"], diff["high"]) == pytest.approx((ref["low"], ref["high"]))
    assert diff["a"] == pytest.approx(rank_auroc(a, t)) and diff["b"] == pytest.approx(rank_auroc(b, t))


def test_a_known_difference_is_recovered_exactly() -> None:
    """B's Dice is A's plus 0.1 on every image: every resample's difference is 0.1."""
    rng = np.random.default_rng(0)
    dice_a = rng.random((40, 2)) * 0.8
    ra = segmentation_resamples(dice_a, dice_a, ["l", "r"], n_boot=200, seed=1)
    rb = segmentation_resamples(dice_a + 0.1, dice_a, ["l", "r"], n_boot=200, seed=1)
    d = paired_differences(ra, rb)
    assert d["mean_dice"]["difference"] == pytest.approx(0.1)
    assert (d["mean_dice"]["low"], d["mean_dice"]["high"]) == pytest.approx((0.1, 0.1))
    assert d["mean_jaccard"]["difference"] == 0 and d["per_class"]["l"]["dice"]["n_boot"] == 200
    unpaired = ra.intervals(0.05)["mean_dice"]
    assert unpaired["high"] - unpaired["low"] > 0.05  # each model's own interval is wide; the paired one is not


def test_paired_resamples_need_the_same_draws() -> None:
    a, b, t = scores(30)
    ra = classification_resamples(a[:, None], t[:, None], ["x"], n_boot=10)
    rb = classification_resamples(b[:, None], t[:, None], ["x"], n_boot=20)
    with pytest.raises(XrayfmError, match="same n_boot"):
        paired_differences(ra, rb)


def test_compare_predictions_matches_images_by_id_and_keeps_each_models_thresholds() -> None:
    a, b, t = scores(80, seed=2)
    ids = [f"img{i}" for i in range(80)]
    perm = np.random.default_rng(0).permutation(80)
    task = TaskSpec("labels", "multilabel", ("x",))
    pred_a = {"ids": ids, "labels": {"probs": a[:, None], "labels": t[:, None]}}
    pred_b = {"ids": [ids[i] for i in perm], "labels": {"probs": b[perm, None], "labels": t[perm, None]}}
    thr_b = ThresholdChoice("youden", "val", {"labels": {"x": 0.45}})
    res = compare_predictions([task], pred_a, pred_b, thresholds_b=thr_b, n_boot=50)
    in_order = compare_predictions([task], pred_a, {"ids": ids, "labels": {"probs": b[:, None], "labels": t[:, None]}},
                                   thresholds_b=thr_b, n_boot=50)  # fmt: skip
    assert res == in_order
    sens = res["tasks"]["labels"]["differences"]["mean_sensitivity"]
    assert sens["a"] == pytest.approx(((a >= 0.5) & (t == 1)).sum() / t.sum())
    assert sens["b"] == pytest.approx(((b >= 0.45) & (t == 1)).sum() / t.sum())
    assert res["tasks"]["labels"]["delong"]["mean_auroc"]["difference"] == pytest.approx(
        rank_auroc(b, t) - rank_auroc(a, t)
    )
    pred_b["labels"]["labels"] = 1 - pred_b["labels"]["labels"]
    with pytest.raises(XrayfmError, match="reference labels differ"):
        compare_predictions([task], pred_a, pred_b, n_boot=5)


def test_different_image_sets_and_tasks_are_refused() -> None:
    with pytest.raises(XrayfmError, match="different images .*1 only in A, 1 only in B"):
        align_ids(["a", "b", "c"], ["a", "b", "d"])
    with pytest.raises(XrayfmError, match="repeat"):
        align_ids(["a", "a"], ["a", "a"])
    assert align_ids(["a", "b", "c"], ["c", "a", "b"]).tolist() == [1, 2, 0]
    x, y = TaskSpec("labels", "multilabel", ("p", "q")), TaskSpec("labels", "multilabel", ("p", "r"))
    with pytest.raises(XrayfmError, match="not comparable: task 'labels'"):
        common_tasks([x], [y])
    masks = TaskSpec("masks", "segmentation", ("lung",))
    shared, notes = common_tasks([x, masks], [x])
    assert shared == [x] and notes == ["task 'masks' only in A: not compared"]


def test_seed_mean_difference_resamples_images_and_seeds() -> None:
    rng = np.random.default_rng(0)
    draws = [0.05 + 0.01 * rng.standard_normal(400) for _ in range(3)]
    res = seed_mean_difference([(0.04, draws[0]), (0.05, draws[1]), (0.07, draws[2])], seed=1)
    assert res["difference"] == pytest.approx(0.16 / 3) and res["per_seed"] == [0.04, 0.05, 0.07]
    assert res["sd"] == pytest.approx(np.std([0.04, 0.05, 0.07], ddof=1))
    assert res["low"] < 0.05 < res["high"] and res["n_boot"] == 400
    one = seed_mean_difference([(0.04, draws[0])])
    assert one["sd"] is None and one["low"] == pytest.approx(np.quantile(draws[0], 0.025))
    assert seed_mean_difference([(None, draws[0]), (0.05, draws[1])])["difference"] is None
