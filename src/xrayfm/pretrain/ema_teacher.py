"""The Foundation X teacher: an exponential moving average of the student, and the consistency loss.

The teacher starts as a copy of the student and follows it by
``teacher = m * teacher + (1 - m) * student`` over parameters *and* floating-point buffers
(batch-norm running statistics; integer buffers such as ``num_batches_tracked`` are copied), with
``m = 0.8`` once per phase in the reference (jlianglab/Foundation_X main.py L316-338, engine.py
L45-49), which leaves buffers out. The teacher never trains: its parameters do not require
gradients, it runs in eval mode under ``torch.no_grad``, whatever ``train()`` a loop calls.

:func:`consistency_loss` compares a student's unit output with the teacher's on the same batch
(as the reference does) and, unlike the reference's localization term, which it computes on a
detached deep copy of the student, sends its gradient to the student.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from xrayfm.errors import XrayfmError
from xrayfm.pretrain.multitask_model import MultiTaskModel, UnitOutput


class EmaTeacher(nn.Module):
    """A frozen copy of the student that follows it by EMA.

    Args:
        student: The model to copy (its lock state is dropped: the teacher has no trainable part).
    """

    def __init__(self, student: MultiTaskModel) -> None:
        super().__init__()
        self.model = copy.deepcopy(student)
        self.model.release()
        self.model.requires_grad_(False)
        self.model.eval()

    def train(self, mode: bool = True) -> EmaTeacher:
        """Keep the teacher in eval mode (dropout off, batch-norm on running statistics)."""
        super().train(mode)
        self.model.eval()
        return self

    @torch.no_grad()
    def update(self, student: nn.Module, momentum: float) -> None:
        """``teacher = momentum * teacher + (1 - momentum) * student`` over parameters and float buffers.

        Integer buffers (``num_batches_tracked``) take the student's value.

        Args:
            student: The student (same architecture as the teacher).
            momentum: In [0, 1]; 1 keeps the teacher, 0 copies the student.

        Raises:
            XrayfmError: Momentum outside [0, 1], or the student's tensors do not match the teacher's.
        """
        if not 0.0 <= momentum <= 1.0:
            raise XrayfmError(f"EMA momentum must be in [0, 1], got {momentum}")
        for kind, mine, theirs in (
            ("parameter", self.model.named_parameters(), student.named_parameters()),
            ("buffer", self.model.named_buffers(), student.named_buffers()),
        ):
            ours, source = dict(mine), dict(theirs)
            if ours.keys() != source.keys():
                diff = sorted(ours.keys() ^ source.keys())
                raise XrayfmError(f"the student's {kind}s differ from the teacher's: {diff[:5]}")
            for name, t in ours.items():
                s = source[name].detach()
                if t.is_floating_point():
                    t.lerp_(s.to(t.dtype), 1.0 - momentum)
                else:
                    t.copy_(s)

    @torch.no_grad()
    def forward(
        self,
        images: torch.Tensor,
        unit: str,
        targets: Sequence[dict[str, torch.Tensor] | None] | None = None,
        *,
        head: bool = True,
    ) -> UnitOutput:
        """The teacher's output on a unit (no gradient), as :meth:`MultiTaskModel.forward`."""
        return self.model(images, unit, targets, head=head)


def prediction_probabilities(kind: str, logits: torch.Tensor) -> torch.Tensor:
    """Probabilities the consistency compares: sigmoid for multi-label and masks, softmax for multi-class."""
    return logits.softmax(dim=1) if kind == "multiclass" else logits.sigmoid()


def consistency_loss(student: UnitOutput, teacher: UnitOutput, kind: str) -> torch.Tensor:
    """Mean of the feature and prediction terms between the student's and the teacher's outputs.

    Terms, each an MSE against the detached teacher: pooled features as they are (reference,
    classification: MSE of the pooled features, main.py L993-1000); feature maps L2-normalised
    over channels (reference, segmentation, L585-598); for classification and segmentation the
    predicted probabilities. Detection compares features only (its predictions are boxes).

    Args:
        student: The student's unit output (with gradient).
        teacher: The teacher's output on the same images.
        kind: The unit's task kind.

    Returns:
        A scalar.

    Raises:
        XrayfmError: The two outputs carry different features.
    """
    if student.features.keys() != teacher.features.keys():
        raise XrayfmError(f"student features {sorted(student.features)} != teacher's {sorted(teacher.features)}")
    terms = []
    for name, s in student.features.items():
        t = teacher.features[name].detach().to(s.dtype)
        if s.ndim > 2:
            s, t = F.normalize(s, dim=1), F.normalize(t, dim=1)
        terms.append(F.mse_loss(s, t))
    if kind != "detection" and student.prediction is not None and teacher.prediction is not None:
        s = prediction_probabilities(kind, student.prediction.float())
        t = prediction_probabilities(kind, teacher.prediction.detach().float())
        terms.append(F.mse_loss(s, t))
    return torch.stack(terms).mean()
