"""The Foundation X objective: one unit's task loss mixed with the teacher's consistency loss.

A batch comes from one dataset and trains one unit, ``dataset/task``: only that head runs, so
only it (and the shared parts) receive gradients; other datasets' heads keep ``grad = None``.
Losses, unknown labels (``nan``) and ignored pixels (255) masked as xrayfm's fine-tuning losses
do, with the reference's choices (jlianglab/Foundation_X):

- multi-label: BCE over the known labels (reference: BCE for every classification set);
- multi-class: cross-entropy over rows with a known one-hot label;
- segmentation: the reference's soft Dice ``1 - (2 sum(y p) + 1) / (sum(y) + sum(p) + 1)`` on
  sigmoid outputs over the whole batch and all channels (utils_segmentation.py L165-169), known
  pixels only;
- detection: the sum of the detection head's losses over the box-annotated images.

The unit loss is ``(1 - w) * weight * task + w * consistency`` with ``w`` the recipe's
consistency weight (reference 0.5) and ``weight`` the task's loss weight.

:func:`untrained_parameters` lists trainable parameters no optimiser group holds (the
reference leaves about 5.5 M out); :func:`check_optimizer_coverage` turns that into an error
when training starts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xrayfm.data.sample import MASK_IGNORE
from xrayfm.errors import XrayfmError
from xrayfm.models.heads.detection import detection_targets
from xrayfm.pretrain.ema_teacher import EmaTeacher, consistency_loss
from xrayfm.pretrain.multitask_model import MultiTaskModel
from xrayfm.pretrain.multitask_recipe import MultiTaskRecipe
from xrayfm.tasks import TaskSpec


def masked_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean BCE over the known (non-nan) entries of ``labels`` (N, K); 0 when none is known."""
    known = ~torch.isnan(labels)
    per = F.binary_cross_entropy_with_logits(logits, torch.nan_to_num(labels, nan=0.0), reduction="none")
    return (per * known).sum() / known.sum().clamp(min=1)


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the rows of one-hot ``labels`` (N, K) that are fully known; 0 when none is."""
    rows = ~torch.isnan(labels).any(1)
    if not rows.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[rows].float(), labels[rows].argmax(1))


def soft_dice_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The reference's smoothed soft Dice over all known pixels of the batch (N, M, H, W); 255 = ignore."""
    known = (mask != MASK_IGNORE).to(logits.dtype)
    p = logits.sigmoid() * known
    y = (mask == 1).to(logits.dtype)
    return 1.0 - (2.0 * (p * y).sum() + 1.0) / (y.sum() + p.sum() + 1.0)


def unit_task_loss(spec: TaskSpec, prediction: Any, batch: Mapping[str, Any], unit: str) -> torch.Tensor:
    """The loss of one unit's prediction against its dataset's targets in a collated batch.

    Args:
        spec: The unit's task.
        prediction: The head's output (a loss dict for detection).
        batch: A batch of :func:`~xrayfm.data.sample.collate_samples` from the unit's dataset.
        unit: ``dataset/task``, for error messages.

    Raises:
        XrayfmError: The batch lacks the task's targets or they do not fit its classes.
    """
    if spec.kind == "detection":
        return torch.stack(list(prediction.values())).sum()
    key = spec.sample_key
    if key not in batch:
        raise XrayfmError(f"unit {unit!r}: its batch has no {key!r}; is the unit's loader the right dataset?")
    target = batch[key]
    if target.shape[1] != spec.num_classes:
        raise XrayfmError(
            f"unit {unit!r}: {key!r} has {target.shape[1]} channels but the task has {spec.num_classes} classes "
            f"{list(spec.classes)}"
        )
    if spec.kind == "multilabel":
        return masked_bce(prediction, target.to(prediction.dtype))
    if spec.kind == "multiclass":
        return masked_cross_entropy(prediction, target)
    if target.shape[-2:] != prediction.shape[-2:]:
        raise XrayfmError(f"unit {unit!r}: mask size {tuple(target.shape[-2:])} != image size")
    return soft_dice_loss(prediction, target)


class MultiTaskObjective(nn.Module):
    """Student, EMA teacher and the per-unit losses; the module a training loop optimises.

    Args:
        model: The student.
        weights: Loss weight per ``dataset/task`` (default 1).
        consistency_weight: ``w`` in ``(1 - w) * task + w * consistency``; 0 skips the teacher's forward.

    Raises:
        XrayfmError: A weight for a unit the model has no head for, or ``consistency_weight`` outside [0, 1].
    """

    def __init__(
        self, model: MultiTaskModel, *, weights: Mapping[str, float] | None = None, consistency_weight: float = 0.5
    ) -> None:
        super().__init__()
        if not 0.0 <= consistency_weight <= 1.0:
            raise XrayfmError(f"consistency_weight must be in [0, 1], got {consistency_weight}")
        for unit in weights or {}:
            model.task(unit)
        self.model = model
        self.teacher = EmaTeacher(model)
        self.weights = {unit: float((weights or {}).get(unit, 1.0)) for unit in model.tasks}
        self.consistency_weight = consistency_weight

    @classmethod
    def from_recipe(cls, recipe: MultiTaskRecipe, model: MultiTaskModel) -> MultiTaskObjective:
        """The objective with the recipe's task weights and consistency weight."""
        weights = {f"{d}/{t}": task.weight for d, e in recipe.datasets.items() for t, task in e.tasks.items()}
        return cls(model, weights=weights, consistency_weight=recipe.consistency_weight)

    def losses(self, batch: Mapping[str, Any], unit: str) -> dict[str, torch.Tensor]:
        """``task``, ``consistency`` and their mix ``loss`` for one unit's batch.

        Args:
            batch: A collated batch from the unit's dataset.
            unit: ``dataset/task``.

        Raises:
            XrayfmError: Unknown unit, or targets missing or not fitting the task.
        """
        spec = self.model.task(unit)
        targets = None
        if spec.kind == "detection":
            try:
                targets = detection_targets(dict(batch))
            except ValueError as exc:
                raise XrayfmError(f"unit {unit!r}: {exc}") from exc
        student = self.model(batch["image"], unit, targets)
        task = unit_task_loss(spec, student.prediction, batch, unit)
        w = self.consistency_weight
        if w > 0:
            teacher = self.teacher(batch["image"], unit, head=spec.kind != "detection")
            consistency = consistency_loss(student, teacher, spec.kind)
        else:
            consistency = task.new_zeros(())
        return {"task": task, "consistency": consistency, "loss": (1 - w) * self.weights[unit] * task + w * consistency}

    def forward(self, batch: Mapping[str, Any], unit: str) -> torch.Tensor:
        """The unit's mixed loss (see :meth:`losses`)."""
        return self.losses(batch, unit)["loss"]

    def update_teacher(self, momentum: float) -> None:
        """Move the teacher towards the student (:meth:`EmaTeacher.update`)."""
        self.teacher.update(self.model, momentum)


def untrained_parameters(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Names of ``model``'s trainable parameters that no group of ``optimizer`` holds.

    Trainable means ``requires_grad`` or frozen by a :meth:`MultiTaskModel.lock` (such parameters
    must stay in the optimiser to train again on release); a teacher's parameters are not trainable.
    """
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    locked = set(_locked_names(model))
    return [n for n, p in model.named_parameters() if (p.requires_grad or n in locked) and id(p) not in held]


def _locked_names(model: nn.Module) -> Iterable[str]:
    for prefix, module in model.named_modules():
        if isinstance(module, MultiTaskModel):
            yield from (f"{prefix}.{n}" if prefix else n for n in module.frozen_names)


def check_optimizer_coverage(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Refuse to train when a trainable parameter is outside the optimiser (it would silently never move).

    Raises:
        XrayfmError: Naming the parameters left out (the first ten, and how many in all).
    """
    missing = untrained_parameters(model, optimizer)
    if missing:
        left_out = set(missing)
        count = sum(p.numel() for n, p in model.named_parameters() if n in left_out)
        raise XrayfmError(
            f"{len(missing)} trainable parameters ({count:,} values) are in no optimiser group, e.g. {missing[:10]}; "
            "build the optimiser from every parameter (with the model released) or freeze them on purpose"
        )
