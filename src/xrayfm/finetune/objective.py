"""The fine-tuning objective the shared engine optimises: model + task losses.

Segmentation trains with BCE + soft Dice (xrayfm's default) or BCE alone: EVA-X's segmentation
loss is mmseg's ``CrossEntropyLoss(use_sigmoid=True, loss_weight=1.0)`` on one mask channel
(hustvl/EVA-X segmentation/config/__base__/models/upernet_eva_x_small.py:43-44 and
segmentation/config/eva_x/*.py:12), a per-pixel sigmoid BCE.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from xrayfm.data.sample import MASK_IGNORE
from xrayfm.errors import XrayfmError
from xrayfm.finetune.losses import multilabel_loss, task_loss
from xrayfm.models.heads.detection import detection_targets
from xrayfm.models.task_model import XrayModel

#: Segmentation losses: BCE + soft Dice (xrayfm) or BCE alone (EVA-X).
SEG_LOSSES = ("bce_dice", "bce")


class FinetuneObjective(nn.Module):
    """Sum of the task losses of an :class:`XrayModel` on a collated batch.

    A fully frozen backbone (linear probe) stays in eval mode while training, so its batch-norm
    statistics and dropout do not change.

    Args:
        model: The model being adapted.
        pos_weight: Per-task BCE positive weights (multi-label tasks).
        focal_gamma: Focal-loss gamma for classification (0 = plain BCE / CE).
        seg_loss: ``bce_dice`` (BCE + soft Dice) or ``bce`` (EVA-X) for segmentation tasks.

    Raises:
        XrayfmError: Unknown ``seg_loss``.
    """

    def __init__(
        self,
        model: XrayModel,
        *,
        pos_weight: dict[str, torch.Tensor] | None = None,
        focal_gamma: float = 0.0,
        seg_loss: str = "bce_dice",
    ) -> None:
        super().__init__()
        if seg_loss not in SEG_LOSSES:
            raise XrayfmError(f"unknown segmentation loss {seg_loss!r}; expected one of {SEG_LOSSES}")
        self.model = model
        self.pos_weight = dict(pos_weight or {})
        self.focal_gamma = focal_gamma
        self.seg_loss = seg_loss

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """The summed task losses of a collated batch.

        A detection task learns only from the images that carry a box annotation (a Sample
        without ``boxes`` has none; an empty ``boxes`` says "no lesion"); a batch without any
        contributes a zero detection loss.

        Args:
            batch: A batch of :func:`~xrayfm.data.sample.collate_samples`.

        Returns:
            The scalar loss.

        Raises:
            XrayfmError: An image of the batch has boxes without box labels.
        """
        targets = {}
        for t in self.model.tasks:
            if t.kind == "detection":
                try:
                    targets[t.name] = detection_targets(batch)
                except ValueError as exc:
                    ids = [m.get("id") for m in batch.get("meta", [])]
                    raise XrayfmError(f"task {t.name!r}, batch of images {ids}: {exc}") from None
        outputs = self.model(batch["image"], targets)
        losses = []
        for t in self.model.tasks:
            if t.kind == "segmentation" and self.seg_loss == "bce":
                mask = batch[t.sample_key]
                target = torch.where(mask == MASK_IGNORE, torch.nan, (mask == 1).float()).to(outputs[t.name].dtype)
                losses.append(multilabel_loss(outputs[t.name], target))  # BCE over pixels not ignored
            else:
                losses.append(
                    task_loss(
                        t, outputs[t.name], batch, pos_weight=self.pos_weight.get(t.name), focal_gamma=self.focal_gamma
                    )
                )
        return torch.stack(losses).sum()

    def train(self, mode: bool = True) -> FinetuneObjective:
        super().train(mode)
        if mode and not any(p.requires_grad for p in self.model.backbone.parameters()):
            self.model.backbone.eval()
        return self
