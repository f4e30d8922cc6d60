"""One head of a Foundation X multi-task model presented as a fine-tuned model with one task.

Used by :func:`xrayfm.cli.scored_models.load_scored_model`; apart from it so that the command line
imports torch only when a command runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from xrayfm.errors import XrayfmError
from xrayfm.tasks import TaskSpec


class HeadModel(nn.Module):
    """One head of a multi-task model as a model with one task: the evaluated dataset's.

    Args:
        view: The multi-task model's :class:`~xrayfm.pretrain.multitask_serving.MultiTaskView`.
        head: The ``dataset/task`` key of the head that answers.
        task: The dataset's task the head answers (its name keys the outputs).

    Attributes:
        tasks: ``[task]``.
        preprocess: The multi-task model's input record.
    """

    def __init__(self, view: nn.Module, head: str, task: TaskSpec) -> None:
        super().__init__()
        self.view, self.head = view, head
        self.tasks = [task]
        self.preprocess = view.preprocess

    @property
    def backbone(self) -> nn.Module:
        """The shared backbone (for the heatmaps)."""
        return self.view.backbone

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Grey [0, 1] (N, 1, H, W) -> the backbone's normalised input."""
        return self.view.normalize(x)

    def forward(self, images: torch.Tensor, tasks: Sequence[str] | None = None) -> dict[str, Any]:
        """The head's output under the dataset task's name (empty when ``tasks`` leaves the task out)."""
        name = self.tasks[0].name
        if tasks is not None and name not in tasks:
            return {}
        return {name: self.view(images, tasks=[self.head])[self.head]}


def bind_head(view: nn.Module, head: str, dataset_tasks: Sequence[TaskSpec], dataset: str) -> HeadModel:
    """The head ``head`` of ``view`` answering the task of ``dataset_tasks`` with the same kind of targets.

    Raises:
        XrayfmError: No such head, or the dataset has no task of the head's kind with its classes in its order.
    """
    heads = {t.name: t for t in view.tasks}
    spec = heads.get(head)
    if spec is None:
        raise XrayfmError(f"--head {head!r} is not a head of this model; its heads: {sorted(heads)}")
    given = next((t for t in dataset_tasks if t.sample_key == spec.sample_key), None)
    if given is None or given.kind != spec.kind or given.classes != spec.classes:
        offered = [f"{t.name}: {t.kind} {list(t.classes)}" for t in dataset_tasks] or "no labels"
        fitting = [k for k, t in heads.items() if any(t.kind == d.kind and t.classes == d.classes
                                                      for d in dataset_tasks)]  # fmt: skip
        raise XrayfmError(f"head {head!r} is {spec.kind} {list(spec.classes)}, which no task of {dataset} matches "
                          f"(it has {offered}); heads that fit: {fitting or 'none'}")  # fmt: skip
    return HeadModel(view, head, given)
