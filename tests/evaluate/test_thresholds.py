"""Decision thresholds chosen on validation predictions: Youden's J, a target sensitivity, a fixed value."""

from __future__ import annotations

import numpy as np
import pytest

from xrayfm.errors import XrayfmError
from xrayfm.evaluate.thresholds import (
    ThresholdChoice,
    ThresholdRule,
    choose_task_thresholds,
    choose_thresholds,
)
from xrayfm.tasks import TaskSpec

# scores 0.1 .. 0.8 with labels chosen so that, calling ">= threshold" positive:
#   0.3: sensitivity 4/4, specificity 2/4 -> J 0.50
#   0.6: sensitivity 3/4, specificity 4/4 -> J 0.75 (the maximum)
#   0.7: sensitivity 2/4, specificity 4/4 -> J 0.50
P = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
T = np.array([0, 0, 1, 0, 0, 1, 1, 1], dtype=float)


def test_youden_picks_the_threshold_with_the_largest_j() -> None:
    assert choose_thresholds(P, T, "youden").tolist() == [0.6]


@pytest.mark.parametrize(("target", "expected"), [(1.0, 0.3), (0.75, 0.6), (0.7, 0.6), (0.5, 0.7), (0.2, 0.8)])
def test_target_sensitivity_takes_the_highest_threshold_that_reaches_it(target: float, expected: float) -> None:
    assert choose_thresholds(P[:, None], T[:, None], f"sens:{target}").tolist() == [expected]


def test_tied_scores_are_called_together() -> None:
    p = np.array([0.2, 0.5, 0.5, 0.9])
    t = np.array([0, 1, 0, 1], dtype=float)
    # at 0.5 both tied cases are positive: sensitivity 1, specificity 1/2 (J 0.5); at 0.9: 1/2 and 1 (J 0.5)
    assert choose_thresholds(p, t, "sens:1").tolist() == [0.5]
    assert choose_thresholds(p, t, "youden").tolist() == [0.9]  # the first (highest) of equal J


def test_unknown_labels_are_left_out_and_a_class_without_negatives_falls_back() -> None:
    probs = np.stack([P, P], axis=1)
    labels = np.stack([T, np.ones_like(T)], axis=1)
    labels[0, 0] = np.nan
    labels[5, 0] = np.nan  # the positive at 0.6 unknown: 0.7 now gives sensitivity 2/3, specificity 1
    assert choose_thresholds(probs, labels, "youden").tolist() == [0.7, 0.5]


def test_a_fixed_rule_ignores_the_data() -> None:
    assert choose_thresholds(P, T, 0.25).tolist() == [0.25]


@pytest.mark.parametrize("text", ["youdn", "sens:0", "sens:1.5", "1.5", "spec:0.9", ""])
def test_bad_rules_are_named(text: str) -> None:
    with pytest.raises(XrayfmError, match="youden"):
        ThresholdRule.parse(text)


def test_rules_print_as_they_are_written() -> None:
    assert [str(ThresholdRule.parse(t)) for t in ("YOUDEN", "sens:0.90", "0.5", 0.3)] == [
        "youden",
        "sens:0.9",
        "0.5",
        "0.3",
    ]


def test_task_thresholds_record_rule_split_and_fallbacks() -> None:
    tasks = [TaskSpec("labels", "multilabel", ("a", "b")), TaskSpec("kind", "multiclass", ("x", "y"))]
    labels = np.stack([T, np.zeros_like(T)], axis=1)
    predictions = {"labels": {"probs": np.stack([P, P], axis=1), "labels": labels}}
    choice = choose_task_thresholds(tasks, predictions, "youden", split="val")
    assert choice.rule == "youden" and choice.split == "val"
    assert choice.tasks == {"labels": {"a": 0.6, "b": 0.5}}
    assert choice.notes == ["labels/b: no positive or no negative case in val; threshold 0.5"]
    assert choice.for_task(tasks[0]) == [0.6, 0.5] and choice.for_task(tasks[1]) == 0.5
    again = ThresholdChoice.from_dict(choice.to_dict())
    assert again == choice
    fixed = choose_task_thresholds(tasks, predictions, "0.3", split="val")
    assert fixed.split is None and fixed.for_task(tasks[0]) == 0.3 and fixed.rule == "0.3"
