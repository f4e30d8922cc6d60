"""Decision thresholds chosen on validation predictions, not fixed at 0.5.

Sensitivity, specificity and accuracy of a multi-label class depend on the threshold that turns
a probability into a decision. A threshold chosen on the split that is then scored flatters it,
so the rules here are applied to the validation split's predictions and the thresholds they give
are used, unchanged, on the test split:

- ``youden``: per class, the threshold maximising Youden's J = sensitivity + specificity - 1;
- ``sens:0.9``: per class, the highest threshold whose sensitivity is at least 0.9 (the most
  specific operating point that reaches the target);
- a number (``0.5``): that fixed threshold for every class.

Candidate thresholds are the observed scores; a case is called positive when its probability is
``>=`` the threshold, as in :func:`~xrayfm.evaluate.metrics.classification_metrics`. Multi-class
tasks decide by arg-max and take no threshold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xrayfm.errors import XrayfmError
from xrayfm.evaluate.metrics import check_classification_inputs
from xrayfm.tasks import TaskSpec

#: The threshold used where a rule cannot choose one (a class without positives or negatives).
FALLBACK_THRESHOLD = 0.5


@dataclass(frozen=True)
class ThresholdRule:
    """How decision thresholds are set: ``fixed`` (a number), ``youden`` or ``sensitivity`` (a target).

    Attributes:
        kind: ``fixed``, ``youden`` or ``sensitivity``.
        value: The fixed threshold or the target sensitivity; None for ``youden``.
    """

    kind: str
    value: float | None = None

    @classmethod
    def parse(cls, text: str | float | ThresholdRule) -> ThresholdRule:
        """``youden``, ``sens:0.9`` (target sensitivity in (0, 1]) or a number in [0, 1] (fixed).

        Raises:
            XrayfmError: Anything else.
        """
        if isinstance(text, ThresholdRule):
            return text
        if isinstance(text, (int, float)):
            text = str(text)
        spec = text.strip().lower()
        if spec == "youden":
            return cls("youden")
        head, sep, tail = spec.partition(":")
        try:
            number = float(tail if sep else spec)
        except ValueError:
            number = None
        if sep and head in ("sens", "sensitivity") and number is not None and 0 < number <= 1:
            return cls("sensitivity", number)
        if not sep and number is not None and 0 <= number <= 1:
            return cls("fixed", number)
        raise XrayfmError(f"threshold {text!r} is not 'youden', 'sens:TARGET' (0 < TARGET <= 1) or a number in [0, 1]")

    @property
    def needs_data(self) -> bool:
        """True when the rule chooses thresholds from (validation) predictions."""
        return self.kind != "fixed"

    def __str__(self) -> str:
        if self.kind == "youden":
            return "youden"
        return f"sens:{self.value:g}" if self.kind == "sensitivity" else f"{self.value:g}"


def _one_class(p: np.ndarray, t: np.ndarray, rule: ThresholdRule) -> float | None:
    """The rule's threshold for scores ``p`` of 0/1 targets ``t``; None without positives and negatives."""
    pos, neg = int((t == 1).sum()), int((t == 0).sum())
    if pos == 0 or neg == 0:
        return None
    order = np.argsort(-p, kind="stable")
    p, t = p[order], t[order]
    last = np.r_[p[1:] != p[:-1], True]  # the last case of each tied score: all ties are called together
    tpr = np.cumsum(t == 1)[last] / pos  # sensitivity at threshold = each distinct score, highest first
    fpr = np.cumsum(t == 0)[last] / neg
    scores = p[last]
    if rule.kind == "youden":
        return float(scores[int(np.argmax(tpr - fpr))])
    return float(scores[int(np.argmax(tpr >= rule.value - 1e-12))])


def choose_thresholds(probs: Any, labels: Any, rule: str | float | ThresholdRule) -> np.ndarray:
    """Per-class decision thresholds of multi-label probabilities by ``rule``.

    Each class uses the rows where its label is known. A class without both positives and
    negatives gets :data:`FALLBACK_THRESHOLD` (:func:`choose_task_thresholds` notes it).

    Args:
        probs: (N, K) probabilities (validation split).
        labels: (N, K) 0/1 labels, ``nan`` = unknown.
        rule: ``youden``, ``sens:TARGET``, a number, or a :class:`ThresholdRule`.

    Returns:
        (K,) float64 thresholds.

    Raises:
        XrayfmError: A malformed rule or inputs (as :func:`~xrayfm.evaluate.metrics.classification_metrics`).
    """
    rule = ThresholdRule.parse(rule)
    k_classes = 1 if np.ndim(probs) == 1 else int(np.shape(probs)[1])
    p, y, _ = check_classification_inputs(probs, labels, [str(k) for k in range(k_classes)], "multilabel")
    if not rule.needs_data:
        return np.full(p.shape[1], float(rule.value))
    out = np.full(p.shape[1], FALLBACK_THRESHOLD)
    for k in range(p.shape[1]):
        known = ~np.isnan(y[:, k])
        chosen = _one_class(p[known, k], y[known, k], rule)
        if chosen is not None:
            out[k] = chosen
    return out


@dataclass
class ThresholdChoice:
    """The thresholds each multi-label task uses, the rule that chose them and the split it read.

    Attributes:
        rule: The rule (``youden``, ``sens:0.9``, ``0.5``).
        split: The split whose predictions chose them (None for a fixed threshold).
        tasks: Task name -> class name -> threshold (multi-label tasks only).
        notes: Why a class fell back to :data:`FALLBACK_THRESHOLD`, or the rule to a fixed one.
        default: The threshold of a task or class without its own (the value of a fixed rule).
    """

    rule: str
    split: str | None = None
    tasks: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    default: float = FALLBACK_THRESHOLD

    @classmethod
    def fixed(cls, value: float, note: str | None = None) -> ThresholdChoice:
        """One threshold for every class of every task."""
        rule = ThresholdRule("fixed", float(value))
        return cls(rule=str(rule), notes=[note] if note else [], default=float(value))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ThresholdChoice:
        """Inverse of :meth:`to_dict` (as recorded in an evaluation's ``thresholds``)."""
        tasks = {t: {c: float(v) for c, v in chosen.items()} for t, chosen in d.get("tasks", {}).items()}
        return cls(d["rule"], d.get("split"), tasks, list(d.get("notes", [])), float(d.get("default", 0.5)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, recorded in ``metrics.json``."""
        return {"rule": self.rule, "split": self.split, "tasks": self.tasks, "notes": self.notes,
                "default": self.default}  # fmt: skip

    def for_task(self, task: TaskSpec) -> float | list[float]:
        """The task's thresholds in class order (:attr:`default` for a task without its own)."""
        chosen = self.tasks.get(task.name)
        if chosen is None:
            return self.default
        return [float(chosen.get(c, self.default)) for c in task.classes]


def choose_task_thresholds(
    tasks: Sequence[TaskSpec], predictions: Mapping[str, Any], rule: str | float | ThresholdRule, *, split: str
) -> ThresholdChoice:
    """Thresholds of every multi-label task from predictions of ``split`` (normally ``val``).

    Args:
        tasks: The model's task specs.
        predictions: :func:`~xrayfm.evaluate.predict.predict` output on ``split``.
        rule: ``youden``, ``sens:TARGET``, a number, or a :class:`ThresholdRule`.
        split: The split the predictions come from (recorded).

    Returns:
        The choice; a fixed rule records no split.
    """
    rule = ThresholdRule.parse(rule)
    if not rule.needs_data:
        return ThresholdChoice.fixed(float(rule.value))
    choice = ThresholdChoice(rule=str(rule), split=split)
    for t in tasks:
        pred = predictions.get(t.name)
        if t.kind != "multilabel" or pred is None:
            continue
        values = choose_thresholds(pred["probs"], pred["labels"], rule)
        y = np.asarray(pred["labels"], dtype=np.float64)
        for k, c in enumerate(t.classes):
            known = y[:, k][~np.isnan(y[:, k])]
            if not ((known == 1).any() and (known == 0).any()):
                choice.notes.append(f"{t.name}/{c}: no positive or no negative case in {split}; threshold "
                                    f"{FALLBACK_THRESHOLD}")  # fmt: skip
        choice.tasks[t.name] = {c: float(v) for c, v in zip(t.classes, values)}
    return choice
