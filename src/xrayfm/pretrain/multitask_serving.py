"""A saved Foundation X model as the server and the heatmaps see a fine-tuned one.

``xrayfm serve`` answers with a :class:`~xrayfm.models.task_model.XrayModel`'s interface: a list
of task specs, ``model(x, tasks=[...])`` giving outputs per task name, ``backbone``, ``normalize``
and ``preprocess``. :class:`MultiTaskView` presents a
:class:`~xrayfm.pretrain.multitask_model.MultiTaskModel` that way, each head a task named
``dataset/task``, so the server's runtime, its batching and the Grad-CAM / attention heatmaps of
:mod:`xrayfm.explain` take it unchanged. It lives here, not in ``serve``, because the package map
lets ``serve`` import neither ``pretrain`` nor the CLI's loaders; the CLI loads it and hands it over.

A forward runs the backbone once for every head asked through
:meth:`MultiTaskModel.forward_heads`, which computes each head as training's per-unit forward does.

Served weights default to the EMA teacher: the sidecar names no preferred set, and the teacher
is the student averaged over phase ends, so it is not tilted towards whichever head the cyclic
schedule trained last (the ``export/`` backbone is the student's, as the starting point for
fine-tuning, not a serving choice).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xrayfm.errors import XrayfmError
from xrayfm.models.preprocess import Preprocess
from xrayfm.pretrain.multitask_export import find_multitask_model, load_multitask_model
from xrayfm.pretrain.multitask_model import MultiTaskModel
from xrayfm.tasks import TaskSpec

#: The weight sets of a saved multi-task model, the default first.
WEIGHTS = ("teacher", "student")


class MultiTaskView(nn.Module):
    """A :class:`MultiTaskModel` with :class:`~xrayfm.models.task_model.XrayModel`'s inference interface.

    Args:
        model: The multi-task model (its weights are shared, not copied).

    Attributes:
        tasks: One spec per head, named by its ``dataset/task`` key, in the model's order.
        preprocess: The model's input record.
    """

    def __init__(self, model: MultiTaskModel) -> None:
        super().__init__()
        self.model = model
        self.tasks: list[TaskSpec] = [replace(spec, name=key) for key, spec in model.tasks.items()]
        self.preprocess: Preprocess = model.preprocess

    @property
    def backbone(self) -> nn.Module:
        """The shared backbone (Grad-CAM's target layer and attention maps are read from it)."""
        return self.model.backbone

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Grey [0, 1] (N, 1, H, W) -> the backbone's normalised input."""
        return self.model.normalize(x)

    def forward(self, images: torch.Tensor, tasks: Sequence[str] | None = None) -> dict[str, Any]:
        """Outputs per ``dataset/task`` head, from one backbone pass (inference only).

        Args:
            images: Grey [0, 1] images (N, 1, H, W).
            tasks: Heads to run (default: all).

        Returns:
            Logits (N, K) per classification head, mask logits (N, K, H, W) per segmentation head,
            per-image ``boxes`` / ``scores`` / ``labels`` per detection head.
        """
        return self.model.forward_heads(images, [t.name for t in self.tasks if tasks is None or t.name in tasks])


def multitask_folder(path: str | Path) -> Path | None:
    """The folder of a saved multi-task model at ``path`` (a run folder or its ``model/``), or None."""
    try:
        return find_multitask_model(path)
    except XrayfmError:
        return None


def load_served_multitask(path: str | Path, *, weights: str = WEIGHTS[0]) -> tuple[MultiTaskView, dict[str, Any]]:
    """A saved multi-task model ready for the server: the view and a sidecar the server can read.

    Args:
        path: A run folder (``OUT``) or its ``model/`` folder.
        weights: ``teacher`` (default, see the module notes) or ``student``.

    Returns:
        The view in eval mode and the sidecar with ``tasks`` as the view's specs and
        ``served_weights`` naming the set loaded.

    Raises:
        XrayfmError: An unknown weight set, or as :func:`load_multitask_model`.
    """
    if weights not in WEIGHTS:
        raise XrayfmError(f"unknown weights {weights!r}; choose from {list(WEIGHTS)}")
    model, meta = load_multitask_model(path, teacher=weights == "teacher")
    view = MultiTaskView(model).eval()
    return view, {**meta, "tasks": [t.to_dict() for t in view.tasks], "served_weights": weights}
