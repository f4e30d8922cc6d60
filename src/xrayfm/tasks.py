"""Task specifications: what a label, mask or box means.

A :class:`TaskSpec` names a task, its kind and its classes. Datasets declare the tasks their
samples carry, heads are built from them and checkpoints record them, so a model can never be
paired with labels in another order without the mismatch being caught.

This module is the one definition of the task kinds and their groups (:data:`TASK_KINDS`,
:data:`CLASSIFICATION_KINDS`, :data:`DENSE_KINDS`); models, fine-tuning, evaluation and
explanations import them from here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from xrayfm.errors import XrayfmError

if TYPE_CHECKING:  # the module stays free of torch: the server and the data layer import it
    import torch

TaskKind = Literal["multilabel", "multiclass", "segmentation", "detection"]
#: Kinds whose targets are a label vector per image and whose head pools the whole image.
CLASSIFICATION_KINDS: tuple[str, ...] = ("multilabel", "multiclass")
#: Kinds whose targets are spatial (masks, boxes) and whose heads read the feature pyramid.
DENSE_KINDS: tuple[str, ...] = ("segmentation", "detection")
#: Every task kind: the classification kinds, then the dense ones.
TASK_KINDS: tuple[str, ...] = (*CLASSIFICATION_KINDS, *DENSE_KINDS)

#: Which Sample key carries the targets of each task kind.
SAMPLE_KEY: dict[str, str] = {
    "multilabel": "labels",
    "multiclass": "labels",
    "segmentation": "mask",
    "detection": "boxes",
}


def probabilities(kind: str, logits: torch.Tensor) -> torch.Tensor:
    """A head's logits as probabilities: softmax over the classes for a multi-class task, a sigmoid per
    class (or mask pixel) for multi-label and segmentation tasks."""
    return logits.softmax(1) if kind == "multiclass" else logits.sigmoid()


@dataclass(frozen=True)
class TaskSpec:
    """A named task with its kind and ordered class names.

    Attributes:
        name: Short identifier, e.g. ``"findings"``, ``"lungs"``, ``"lesions"``.
        kind: One of ``multilabel``, ``multiclass``, ``segmentation``, ``detection``.
        classes: Ordered class names; index ``i`` of a label vector, mask channel or box label
            refers to ``classes[i]``.
    """

    name: str
    kind: TaskKind
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise XrayfmError(f"task {self.name!r}: unknown kind {self.kind!r}; expected one of {TASK_KINDS}")
        if not self.classes:
            raise XrayfmError(f"task {self.name!r}: has no classes")
        if len(set(self.classes)) != len(self.classes):
            raise XrayfmError(f"task {self.name!r}: duplicate class names in {self.classes}")
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def sample_key(self) -> str:
        """The Sample key holding this task's targets."""
        return SAMPLE_KEY[self.kind]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (for checkpoint sidecars)."""
        d = asdict(self)
        d["classes"] = list(self.classes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(name=d["name"], kind=d["kind"], classes=tuple(d["classes"]))
