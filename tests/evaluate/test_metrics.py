"""Metric values against cases worked out by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from xrayfm.errors import XrayfmError
from xrayfm.evaluate.metrics import classification_metrics, roc_curves, segmentation_metrics

NAN = float("nan")


def test_binary_auroc_sensitivity_specificity_by_hand() -> None:
    # scores of positives 0.9, 0.4; negatives 0.6, 0.1 -> pairs (0.9>0.6, 0.9>0.1, 0.4<0.6, 0.4>0.1): 3/4
    probs = np.array([[0.9], [0.4], [0.6], [0.1]])
    labels = np.array([[1.0], [1.0], [0.0], [0.0]])
    m = classification_metrics(probs, labels, ["x"], threshold=0.5)["per_class"]["x"]
    assert m["auroc"] == pytest.approx(0.75)
    assert m["sensitivity"] == pytest.approx(0.5)  # 0.9 caught, 0.4 missed
    assert m["specificity"] == pytest.approx(0.5)  # 0.1 right, 0.6 wrong
    assert m["accuracy"] == pytest.approx(0.5)
    assert (m["positives"], m["negatives"]) == (2, 2)


def test_ties_count_half() -> None:
    m = classification_metrics(np.array([0.5, 0.5]), np.array([1.0, 0.0]), ["x"])["per_class"]["x"]
    assert m["auroc"] == pytest.approx(0.5)


def test_unknown_labels_are_left_out_not_counted_negative() -> None:
    probs = np.array([[0.9, 0.2], [0.4, 0.8], [0.6, 0.3], [0.1, 0.7]])
    labels = np.array([[1.0, NAN], [1.0, 1.0], [0.0, 0.0], [0.0, NAN]])
    base = classification_metrics(probs, labels, ["a", "b"])
    moved = probs.copy()
    moved[0, 1], moved[3, 1] = 0.99, 0.01  # only unknown entries change
    assert classification_metrics(moved, labels, ["a", "b"]) == base
    b = base["per_class"]["b"]
    assert (b["positives"], b["negatives"], b["auroc"]) == (1, 1, 1.0)
    assert base["mean"]["auroc"] == pytest.approx((0.75 + 1.0) / 2)


def test_class_without_positives_has_no_auroc_and_a_note() -> None:
    m = classification_metrics(np.array([[0.2, 0.9], [0.4, 0.1]]), np.array([[0.0, 1.0], [0.0, 0.0]]), ["a", "b"])
    assert m["per_class"]["a"]["auroc"] is None and m["per_class"]["a"]["sensitivity"] is None
    assert m["mean"]["auroc"] == 1.0 and any(n.startswith("a:") for n in m["notes"])


def test_per_class_thresholds() -> None:
    probs, labels = np.array([[0.3, 0.3]]), np.array([[1.0, 1.0]])
    m = classification_metrics(probs, labels, ["a", "b"], threshold=[0.2, 0.5])["per_class"]
    assert m["a"]["sensitivity"] == 1.0 and m["b"]["sensitivity"] == 0.0


def test_multiclass_accuracy_and_one_vs_rest() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.1, 0.4], [0.3, 0.3, 0.4]])
    labels = np.eye(3)[[0, 1, 2, 2]]
    m = classification_metrics(probs, labels, ["a", "b", "c"], kind="multiclass")
    assert m["mean"]["accuracy"] == pytest.approx(0.75)  # row 3 predicted a, truly c
    assert m["per_class"]["c"]["sensitivity"] == pytest.approx(0.5)
    assert m["per_class"]["a"]["specificity"] == pytest.approx(2 / 3)
    # class c one-vs-rest: positives 0.4, 0.4; negatives 0.1, 0.3 -> 1.0
    assert m["per_class"]["c"]["auroc"] == pytest.approx(1.0)
    assert 0 <= m["mean"]["ece"] <= 1


def test_calibration_error_of_a_perfectly_calibrated_and_a_bad_model() -> None:
    labels = np.array([[1.0], [0.0]] * 10)
    assert classification_metrics(labels.copy(), labels, ["x"])["per_class"]["x"]["ece"] == pytest.approx(0.0)
    assert classification_metrics(1 - labels, labels, ["x"])["per_class"]["x"]["ece"] == pytest.approx(1.0)


def test_shape_mismatch_is_named() -> None:
    with pytest.raises(XrayfmError, match="differ in shape"):
        classification_metrics(np.zeros((3, 2)), np.zeros((3, 1)), ["a"])
    with pytest.raises(XrayfmError, match="class names"):
        classification_metrics(np.zeros((3, 2)), np.zeros((3, 2)), ["a"])


def test_roc_curve_end_points() -> None:
    c = roc_curves(np.array([0.9, 0.4, 0.6, 0.1]), np.array([1.0, 1.0, 0.0, 0.0]), ["x"])["x"]
    assert c["fpr"][0] == 0 and c["tpr"][-1] == 1 and c["auroc"] == pytest.approx(0.75)


def test_dice_and_jaccard_by_hand_with_ignored_pixels() -> None:
    target = np.zeros((1, 1, 2, 4), dtype=np.uint8)
    target[0, 0, 0, :3] = 1  # 3 reference pixels
    target[0, 0, 1, 3] = 255  # ignored
    pred = np.zeros_like(target, dtype=bool)
    pred[0, 0, 0, 1:4] = True  # 2 overlap, 1 false positive
    pred[0, 0, 1, 3] = True  # on an ignored pixel: does not count
    m = segmentation_metrics(pred, target, ["lung"], return_per_image=True)
    assert m["per_class"]["lung"]["dice"] == pytest.approx(2 * 2 / (3 + 3))
    assert m["per_class"]["lung"]["jaccard"] == pytest.approx(2 / 4)
    assert m["per_image"]["dice"] == [[pytest.approx(2 / 3)]]


def test_empty_reference_and_empty_prediction_score_one() -> None:
    target = np.zeros((2, 1, 3, 3), dtype=np.uint8)
    pred = np.zeros_like(target, dtype=bool)
    pred[1, 0, 0, 0] = True  # a false alarm on the second image
    m = segmentation_metrics(pred, target, ["nodule"], return_per_image=True)
    assert m["per_image"]["dice"] == [[1.0], [0.0]] and m["mean"]["dice"] == 0.5


def test_mask_shapes_must_agree() -> None:
    with pytest.raises(XrayfmError, match="must both be"):
        segmentation_metrics(np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 2, 3)), ["x"])


def test_detection_map_perfect_then_missed_box() -> None:
    from xrayfm.evaluate.box_metrics import detection_metrics

    targets = [
        {"boxes": [[10, 10, 50, 50]], "labels": [0]},
        {"boxes": [[5, 5, 25, 45], [60, 60, 90, 90]], "labels": [1, 0]},
    ]
    perfect = [{"boxes": t["boxes"], "scores": [0.9] * len(t["labels"]), "labels": t["labels"]} for t in targets]
    m = detection_metrics(perfect, targets, ["nodule", "mass"])
    assert m["map"] == pytest.approx(1.0) and m["map_50"] == pytest.approx(1.0) and m["boxes"] == 3
    assert m["per_class"]["mass"]["ap"] == pytest.approx(1.0)
    missed = [perfect[0], {"boxes": [[5, 5, 25, 45]], "scores": [0.9], "labels": [1]}]  # second nodule missed
    m2 = detection_metrics(missed, targets, ["nodule", "mass"])
    assert m2["per_class"]["nodule"]["ap"] < 0.6 and m2["per_class"]["mass"]["ap"] == pytest.approx(1.0)
    shifted = [{"boxes": [[30, 30, 70, 70]], "scores": [0.9], "labels": [0]}, perfect[1]]  # IoU 1/7 with truth
    assert detection_metrics(shifted, targets, ["nodule", "mass"])["per_class"]["nodule"]["ap"] < 0.6


def test_detection_class_without_reference_boxes_is_none() -> None:
    from xrayfm.evaluate.box_metrics import detection_metrics

    targets = [{"boxes": [[10, 10, 50, 50]], "labels": [0]}]
    preds = [{"boxes": [[10, 10, 50, 50]], "scores": [0.8], "labels": [0]}]
    assert detection_metrics(preds, targets, ["a", "b"])["per_class"]["b"]["ap"] is None
    with pytest.raises(XrayfmError, match="predictions for"):
        detection_metrics(preds, targets * 2, ["a"])


def test_binary_kind_is_multilabel_with_one_class() -> None:
    probs, labels = np.array([0.9, 0.4, 0.6, 0.1]), np.array([1.0, 1.0, 0.0, 0.0])
    m = classification_metrics(probs, labels, ["x"], kind="binary")
    assert m["kind"] == "binary" and m["per_class"] == classification_metrics(probs, labels, ["x"])["per_class"]
    with pytest.raises(XrayfmError, match="one class"):
        classification_metrics(np.zeros((2, 2)), np.zeros((2, 2)), ["a", "b"], kind="binary")


def test_torch_inputs_give_the_numpy_result() -> None:
    probs = np.array([[0.9, 0.2], [0.4, 0.8], [0.6, 0.3], [0.1, 0.7]], dtype=np.float32)
    labels = np.array([[1.0, NAN], [1.0, 1.0], [0.0, 0.0], [0.0, NAN]], dtype=np.float32)
    a = classification_metrics(probs, labels, ["a", "b"])
    assert classification_metrics(torch.from_numpy(probs), torch.from_numpy(labels), ["a", "b"]) == a


@pytest.mark.parametrize(
    ("probs", "labels", "kwargs", "match"),
    [
        ([[2.5], [-1.0]], [[1.0], [0.0]], {}, "not logits"),
        ([[NAN], [0.2]], [[1.0], [0.0]], {}, "nan / infinite"),
        ([[0.5], [0.2]], [[-1.0], [0.0]], {}, "0, 1 or nan"),
        ([[0.5, 0.5]], [[1.0, 1.0]], {"kind": "multiclass"}, "one-hot"),
        ([[0.5, 0.5]], [[1.0, 0.0]], {"threshold": [0.5, 0.5, 0.5]}, "one per class"),
        ([[0.5, 0.5]], [[1.0, 0.0]], {"kind": "ordinal"}, "unknown classification kind"),
    ],
)
def test_bad_classification_inputs_are_named(probs: list, labels: list, kwargs: dict, match: str) -> None:
    with pytest.raises(XrayfmError, match=match):
        classification_metrics(np.array(probs), np.array(labels), ["a", "b"][: len(probs[0])], **kwargs)


def test_multiclass_rows_without_a_known_class_are_left_out() -> None:
    probs = np.array([[0.7, 0.3], [0.2, 0.8], [0.9, 0.1]])
    labels = np.array([[1.0, 0.0], [0.0, 1.0], [NAN, NAN]])
    m = classification_metrics(probs, labels, ["a", "b"], kind="multiclass")
    assert m["n"] == 2 and m["mean"]["accuracy"] == 1.0 and m["threshold"] == "argmax"
    assert any("1 rows without a known class" in n for n in m["notes"])


def test_ece_by_hand() -> None:
    # all four predictions fall in one bin (0.8 lies in (0.8 - 1/15, 0.8]): confidence 0.8, accuracy 0.5 -> ECE 0.3
    m = classification_metrics(np.full(4, 0.8), np.array([1.0, 1.0, 0.0, 0.0]), ["x"])["per_class"]["x"]
    assert m["ece"] == pytest.approx(0.3)


def test_results_are_strict_json() -> None:
    probs = np.array([[0.9, 0.2], [0.4, 0.8], [0.6, 0.3], [0.1, 0.7]], dtype=np.float32)
    labels = np.array([[1.0, NAN], [1.0, 0.0], [0.0, 0.0], [0.0, NAN]])
    json.dumps(classification_metrics(probs, labels, ["a", "b"], threshold=[0.3, 0.6]), allow_nan=False)
    json.dumps(classification_metrics(probs, np.eye(2)[[0, 1, 0, 1]], ["a", "b"], kind="multiclass"), allow_nan=False)
    target = np.full((2, 1, 2, 2), 255, dtype=np.uint8)
    target[0] = 1
    json.dumps(segmentation_metrics(target == 1, target, ["x"], return_per_image=True), allow_nan=False)


def test_image_with_every_pixel_ignored_is_not_scored() -> None:
    target = np.zeros((2, 1, 2, 2), dtype=np.uint8)
    target[0, 0, 0, 0] = 1
    target[1] = 255  # nothing known about the second image
    pred = np.zeros_like(target)
    pred[0, 0, 0, 0] = 1
    pred[1] = 1  # would be all false positives if the ignore mask were not respected
    m = segmentation_metrics(pred, target, ["x"], return_per_image=True)
    assert m["per_image"]["dice"] == [[1.0], [None]]
    assert m["per_class"]["x"] == {"dice": 1.0, "jaccard": 1.0, "images": 1} and m["mean"]["dice"] == 1.0


def test_two_classes_dice_by_hand() -> None:
    target = np.zeros((1, 2, 2, 2), dtype=np.uint8)
    target[0, 0] = [[1, 1], [0, 0]]
    target[0, 1] = [[0, 0], [1, 255]]
    pred = np.zeros_like(target)
    pred[0, 0] = [[1, 0], [0, 0]]  # dice 2*1/(1+2) = 2/3, jaccard 1/2
    pred[0, 1] = [[0, 1], [1, 1]]  # ignored pixel dropped: dice 2*1/(2+1) = 2/3, jaccard 1/2
    m = segmentation_metrics(torch.from_numpy(pred), torch.from_numpy(target), ["l", "r"])
    assert m["per_class"]["l"]["dice"] == pytest.approx(2 / 3) and m["per_class"]["r"]["jaccard"] == pytest.approx(0.5)
    assert m["mean"]["dice"] == pytest.approx(2 / 3) and m["mean"]["jaccard"] == pytest.approx(0.5)


def test_probabilities_and_bad_reference_values_are_refused() -> None:
    target = np.zeros((1, 1, 2, 2), dtype=np.uint8)
    with pytest.raises(XrayfmError, match="binary"):
        segmentation_metrics(np.full((1, 1, 2, 2), 0.7), target, ["x"])
    with pytest.raises(XrayfmError, match="0, 1 or 255"):
        segmentation_metrics(np.zeros((1, 1, 2, 2)), target + 2, ["x"])
    with pytest.raises(XrayfmError, match="class names"):
        segmentation_metrics(np.zeros((1, 1, 2, 2)), target, ["x", "y"])


def test_detection_ap_by_hand() -> None:
    from xrayfm.evaluate.box_metrics import detection_metrics

    targets = [{"boxes": [[10, 10, 50, 50]], "labels": [0]}, {"boxes": [[20, 20, 60, 60]], "labels": [0]}]
    # one of two boxes found, no false alarm: precision 1 up to recall 0.5, i.e. 51 of 101 recall points
    half = [{"boxes": [[10, 10, 50, 50]], "scores": [0.9], "labels": [0]}, {"boxes": [], "scores": [], "labels": []}]
    m = detection_metrics(half, targets, ["nodule"])
    assert m["map"] == pytest.approx(51 / 101, abs=1e-6) and m["per_class"]["nodule"]["ar_100"] == pytest.approx(0.5)
    # both found, but a higher-scored false alarm first: precision 1/2 then 2/3 -> interpolated 2/3 at every recall
    fa = [{"boxes": [[10, 10, 50, 50], [100, 100, 120, 120]], "scores": [0.8, 0.95], "labels": [0, 0]},
          {"boxes": [[20, 20, 60, 60]], "scores": [0.7], "labels": [0]}]  # fmt: skip
    assert detection_metrics(fa, targets, ["nodule"])["map_50"] == pytest.approx(2 / 3, abs=1e-6)
    # a false alarm on an image without reference boxes counts too
    fp_empty = [*half[:1], {"boxes": [[1, 1, 5, 5]], "scores": [0.99], "labels": [0]}]
    one_target = [targets[0], {"boxes": np.zeros((0, 4)), "labels": np.zeros(0, dtype=int)}]
    assert detection_metrics(fp_empty, one_target, ["nodule"])["map"] == pytest.approx(0.5, abs=1e-6)
    assert detection_metrics(half[:1], one_target[:1], ["nodule"])["map"] == pytest.approx(1.0)


BOX = [[10, 10, 50, 50]]
TRUTH = {"boxes": BOX, "labels": [0]}


@pytest.mark.parametrize(
    ("pred", "match"),
    [
        ({"boxes": BOX, "scores": [0.9], "labels": [3]}, "class indices"),
        ({"boxes": [[50, 10, 10, 50]], "scores": [0.9], "labels": [0]}, "x2 >= x1"),
        ({"boxes": BOX, "scores": [0.9, 0.8], "labels": [0]}, "differ in count"),
        ({"boxes": BOX, "labels": [0]}, "no 'scores'"),
        ({"boxes": [10, 10, 50], "scores": [0.9], "labels": [0]}, "must be \\(n, 4\\)"),
        ({"boxes": BOX, "scores": [float("nan")], "labels": [0]}, "scores must be finite"),
    ],
)
def test_bad_boxes_are_named(pred: dict, match: str) -> None:
    from xrayfm.evaluate.box_metrics import detection_metrics

    with pytest.raises(XrayfmError, match=match):
        detection_metrics([pred], [TRUTH], ["a", "b"])
