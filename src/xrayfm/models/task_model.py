"""A backbone with task heads: what fine-tuning trains, evaluation scores and serving runs.

:class:`XrayModel` takes the data's native input — grey [0, 1] images (N, 1, H, W) — and does
its own preprocessing (repeat to the backbone's channels, normalise with the mean / std stored
in its buffers), so inference can never silently use other numbers than training did. One
backbone pass feeds every head: pooled features to classification heads, a feature pyramid
to segmentation heads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from xrayfm.errors import XrayfmError
from xrayfm.models.features import FeaturePyramid
from xrayfm.models.heads import ClassificationHead, DetectionHead, SegmentationHead
from xrayfm.tasks import TaskSpec

CLASSIFICATION_KINDS = ("multilabel", "multiclass")
DENSE_KINDS = ("segmentation", "detection")
SUPPORTED_KINDS = (*CLASSIFICATION_KINDS, *DENSE_KINDS)


class XrayModel(nn.Module):
    """Backbone + one head per task spec.

    Args:
        backbone: A timm model created with ``num_classes=0``.
        tasks: Task specs (at most one per kind family: one label task, one mask task).
        mean: Normalisation mean of the grey [0, 1] image.
        std: Normalisation std.
        dropout: Dropout before classification layers.
        decoder: Segmentation decoder: ``upernet`` / ``unet`` (default UperNet for a ViT, U-Net for a CNN).
        layers: Backbone layers feeding dense heads (default :func:`~xrayfm.models.features.default_layers`).

    Raises:
        XrayfmError: No task, or a detection task on a backbone without strides 4-32.
    """

    def __init__(
        self,
        backbone: nn.Module,
        tasks: Sequence[TaskSpec],
        *,
        mean: float = 0.5,
        std: float = 0.25,
        dropout: float = 0.0,
        decoder: str | None = None,
        layers: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if not tasks:
            raise XrayfmError("a model needs at least one task")
        self.backbone = backbone
        self.tasks = list(tasks)
        self.in_chans = int(getattr(backbone, "in_chans", None) or backbone.patch_embed.proj.in_channels)
        self.normalization = (float(mean), float(std))  # exact values for the sidecar
        self.register_buffer("mean", torch.tensor(float(mean)), persistent=True)
        self.register_buffer("std", torch.tensor(float(std)), persistent=True)
        self.heads = nn.ModuleDict()
        dense = [t for t in tasks if t.kind in DENSE_KINDS]
        self.pyramid = FeaturePyramid(backbone, layers) if dense else None
        for t in tasks:
            if t.kind in CLASSIFICATION_KINDS:
                self.heads[t.name] = ClassificationHead(backbone.num_features, t.num_classes, dropout)
            elif t.kind == "segmentation":
                assert self.pyramid is not None
                self.heads[t.name] = SegmentationHead(
                    self.pyramid.out_channels, self.pyramid.strides, t.num_classes,
                    decoder=decoder or ("upernet" if self.pyramid.plain else "unet"), input_channels=self.in_chans,
                )  # fmt: skip
            else:  # detection
                assert self.pyramid is not None
                if len(self.pyramid.out_channels) < 4 or self.pyramid.strides[-4:] != [4, 8, 16, 32]:
                    raise XrayfmError(f"task {t.name!r}: detection needs pyramid levels at strides 4-32")
                self.heads[t.name] = DetectionHead(self.pyramid.out_channels, t.num_classes)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Grey [0, 1] (N, 1, H, W) -> normalised (N, in_chans, H, W)."""
        if x.ndim != 4 or x.shape[1] not in (1, self.in_chans):
            raise XrayfmError(f"expected images (N, 1, H, W), got shape {tuple(x.shape)}")
        x = (x - self.mean) / self.std
        return x.expand(-1, self.in_chans, -1, -1) if x.shape[1] == 1 else x

    def forward(
        self,
        x: torch.Tensor,
        targets: dict[str, list[dict[str, torch.Tensor]]] | None = None,
        tasks: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Outputs per task: logits (N, K) for classification, (N, M, H, W) for segmentation;
        for detection, per-image ``boxes`` / ``scores`` / ``labels`` — or, when ``targets[task]``
        is given (training), torchvision's loss dict. ``tasks`` restricts which heads run."""
        selected = self.tasks if tasks is None else [t for t in self.tasks if t.name in tasks]
        x = self.preprocess(x)
        if self.pyramid is None or not any(t.kind in DENSE_KINDS for t in selected):
            final, maps = self.backbone.forward_features(x), []
        else:
            final, maps = self.pyramid(self.backbone, x)
        out: dict[str, torch.Tensor] = {}
        pooled = None
        for t in selected:
            if t.kind in CLASSIFICATION_KINDS:
                if pooled is None:
                    pooled = self.backbone.forward_head(final, pre_logits=True)
                out[t.name] = self.heads[t.name](pooled)
            elif t.kind == "detection":
                out[t.name] = self.heads[t.name](x, maps, (targets or {}).get(t.name))
            else:
                out[t.name] = self.heads[t.name](x, maps)
        return out

    def head_config(self) -> dict[str, Any]:
        """What :func:`~xrayfm.models.task_checkpoint.load_task_model` needs besides weights."""
        seg = [h for h in self.heads.values() if isinstance(h, SegmentationHead)]
        return {
            "tasks": [t.to_dict() for t in self.tasks],
            "normalization": {
                "mean": self.normalization[0],
                "std": self.normalization[1],
                "input": "grey [0, 1], 1 channel",
            },
            "dropout": next((h.dropout.p for h in self.heads.values() if isinstance(h, ClassificationHead)), 0.0),
            "decoder": seg[0].kind if seg else None,
            "layers": self.pyramid.layers if self.pyramid is not None else None,
        }
