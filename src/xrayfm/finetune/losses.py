"""Task losses that respect unknown labels and ignored pixels.

- multi-label / binary: BCE per class over known labels only (``nan`` masked out), optional
  ``pos_weight`` for rare findings, or sigmoid focal loss (torchvision) when ``focal_gamma`` > 0;
- multi-class: cross-entropy over rows with a known one-hot label (focal modulation optional);
- segmentation: BCE + soft Dice (segmentation-models-pytorch) per mask channel, pixels marked
  255 ignored;
- detection: the sum of torchvision Faster R-CNN's RPN and RoI losses over the box-annotated images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses import DiceLoss
from torchvision.ops import sigmoid_focal_loss

from xrayfm.data.sample import MASK_IGNORE
from xrayfm.tasks import TaskSpec

_DICE = DiceLoss(mode="multilabel", from_logits=True, ignore_index=MASK_IGNORE)


def positive_weights(labels: torch.Tensor) -> torch.Tensor:
    """``negatives / positives`` per class over known labels (1 where a class has no positives)."""
    known = ~torch.isnan(labels)
    pos = ((labels == 1) & known).sum(0).float()
    neg = ((labels == 0) & known).sum(0).float()
    return torch.where(pos > 0, neg / pos.clamp(min=1), torch.ones_like(pos))


def multilabel_loss(
    logits: torch.Tensor, labels: torch.Tensor, *, pos_weight: torch.Tensor | None = None, focal_gamma: float = 0.0
) -> torch.Tensor:
    """Mean BCE (or focal loss) over the known entries of ``labels`` (N, K); 0 when none is known."""
    known = ~torch.isnan(labels)
    target = torch.nan_to_num(labels, nan=0.0)
    if focal_gamma > 0:
        per = sigmoid_focal_loss(logits, target, alpha=-1, gamma=focal_gamma, reduction="none")
    else:
        pw = pos_weight.to(logits.device, logits.dtype) if pos_weight is not None else None
        per = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pw, reduction="none")
    return (per * known).sum() / known.sum().clamp(min=1)


def multiclass_loss(logits: torch.Tensor, labels: torch.Tensor, *, focal_gamma: float = 0.0) -> torch.Tensor:
    """Cross-entropy over rows of one-hot ``labels`` (N, K) that are fully known."""
    rows = ~torch.isnan(labels).any(1)
    if not rows.any():
        return logits.sum() * 0.0
    logp = F.log_softmax(logits[rows].float(), dim=1)
    target = labels[rows].argmax(1)
    nll = -logp.gather(1, target[:, None])[:, 0]
    if focal_gamma > 0:
        nll = nll * (1 - torch.exp(-nll)) ** focal_gamma
    return nll.mean()


def segmentation_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice over mask channels (N, M, H, W), ignoring pixels marked 255."""
    keep = mask != MASK_IGNORE
    target = (mask == 1).to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    bce = (bce * keep).sum() / keep.sum().clamp(min=1)
    return bce + _DICE(logits, mask.long())


def task_loss(
    task: TaskSpec,
    output: torch.Tensor | dict[str, torch.Tensor],
    batch: dict[str, torch.Tensor],
    *,
    pos_weight: torch.Tensor | None = None,
    focal_gamma: float = 0.0,
) -> torch.Tensor:
    """The loss of one task's output against its targets in a collated batch."""
    if task.kind == "detection":  # the head computed its losses against the batch's boxes
        return torch.stack(list(output.values())).sum()
    target = batch[task.sample_key]
    if task.kind == "multilabel":
        return multilabel_loss(output, target, pos_weight=pos_weight, focal_gamma=focal_gamma)
    if task.kind == "multiclass":
        return multiclass_loss(output, target, focal_gamma=focal_gamma)
    return segmentation_loss(output, target)
