"""A backbone with task heads: what fine-tuning trains, evaluation scores and serving runs.

:class:`XrayModel` takes the data's native input — grey [0, 1] images (N, 1, H, W) — and does
its own preprocessing (repeat to the backbone's channels, normalise with the mean / std stored
in its buffers), so inference can never silently use other numbers than training did. Its
:class:`~xrayfm.models.preprocess.Preprocess` record (input size, interpolation, crop, mean /
std) is saved with it and drives every evaluation, serving, explanation and export path. One
backbone pass feeds every head: pooled features to classification heads, a feature pyramid
to segmentation heads (for a plain ViT made from its last block, as EVA-X's segmentation, or
from four blocks; the tapped layers are saved, so a model reloads with the pyramid it trained with).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from xrayfm.errors import XrayfmError
from xrayfm.models.features import FeaturePyramid, dense_layers
from xrayfm.models.heads import ClassificationHead, DetectionHead, SegmentationHead
from xrayfm.models.preprocess import Preprocess, resolve_preprocess
from xrayfm.tasks import CLASSIFICATION_KINDS, DENSE_KINDS, TaskSpec


def normalize_grey(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Grey [0, 1] images (N, 1, H, W) normalised with ``mean`` / ``std`` and repeated to ``in_chans``.

    Raises:
        XrayfmError: ``x`` is not (N, 1, H, W) (or already (N, in_chans, H, W)).
    """
    if x.ndim != 4 or x.shape[1] not in (1, in_chans):
        raise XrayfmError(f"expected images (N, 1, H, W), got shape {tuple(x.shape)}")
    x = (x - mean) / std
    return x.expand(-1, in_chans, -1, -1) if x.shape[1] == 1 else x


def input_channels(backbone: nn.Module) -> int:
    """Channels of a timm backbone's stem (its ``pretrained_cfg['first_conv']`` layer)."""
    first = (getattr(backbone, "pretrained_cfg", None) or {}).get("first_conv")
    for name in (first,) if isinstance(first, str) else tuple(first or ()):
        layer = backbone.get_submodule(name)
        if hasattr(layer, "in_channels"):
            return int(layer.in_channels)
    conv = next((m for m in backbone.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise XrayfmError(f"{type(backbone).__name__}: cannot tell its input channels (no first_conv)")
    return int(conv.in_channels)


class XrayModel(nn.Module):
    """Backbone + one head per task spec.

    Args:
        backbone: A timm model created with ``num_classes=0``.
        tasks: Task specs (at most one per kind family: one label task, one mask task).
        preprocess: How images become this model's input (default: the backbone's own record,
            its ``pretrained_cfg``); its mean / std fill the normalisation buffers.
        dropout: Dropout before classification layers.
        decoder: Segmentation decoder: ``upernet`` / ``unet`` (default UperNet for a ViT, U-Net for a CNN).
        layers: Backbone layers feeding dense heads; given, they replace ``features``.
        features: Which layers feed dense heads when ``layers`` is not given: ``last`` (a plain
            ViT's last block makes all four levels, EVA-X) or ``pyramid`` (four blocks); see
            :func:`~xrayfm.models.features.dense_layers`.
        head_init_scale: Factor on the initial classification-head weights (EVA-X: 0.001).
        decoder_dropout: ``Dropout2d`` before the segmentation classifier (EVA-X: 0.1).

    Raises:
        XrayfmError: No task, an unknown ``features`` mode, or a detection task on a backbone
            without strides 4-32.
    """

    def __init__(
        self,
        backbone: nn.Module,
        tasks: Sequence[TaskSpec],
        *,
        preprocess: Preprocess | None = None,
        dropout: float = 0.0,
        decoder: str | None = None,
        layers: Sequence[int] | None = None,
        features: str = "last",
        head_init_scale: float = 1.0,
        decoder_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not tasks:
            raise XrayfmError("a model needs at least one task")
        self.backbone = backbone
        self.tasks = list(tasks)
        self.in_chans = input_channels(backbone)
        self.preprocess = preprocess if preprocess is not None else resolve_preprocess(backbone)
        self.register_buffer("mean", torch.tensor(self.preprocess.mean), persistent=True)
        self.register_buffer("std", torch.tensor(self.preprocess.std), persistent=True)
        self.heads = nn.ModuleDict()
        dense = [t for t in tasks if t.kind in DENSE_KINDS]
        if dense and layers is None:
            layers = dense_layers(backbone, features)
        self.pyramid = FeaturePyramid(backbone, layers) if dense else None
        for t in tasks:
            if t.kind in CLASSIFICATION_KINDS:
                self.heads[t.name] = ClassificationHead(
                    backbone.num_features, t.num_classes, dropout, init_scale=head_init_scale
                )
            elif t.kind == "segmentation":
                assert self.pyramid is not None
                self.heads[t.name] = SegmentationHead(
                    self.pyramid.out_channels, self.pyramid.strides, t.num_classes,
                    decoder=decoder or ("upernet" if self.pyramid.plain else "unet"), input_channels=self.in_chans,
                    dropout=decoder_dropout,
                )  # fmt: skip
            else:  # detection
                assert self.pyramid is not None
                if len(self.pyramid.out_channels) < 4 or self.pyramid.strides[-4:] != [4, 8, 16, 32]:
                    raise XrayfmError(f"task {t.name!r}: detection needs pyramid levels at strides 4-32")
                self.heads[t.name] = DetectionHead(self.pyramid.out_channels, t.num_classes)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Grey [0, 1] (N, 1, H, W) -> normalised (N, in_chans, H, W)."""
        return normalize_grey(x, self.mean, self.std, self.in_chans)

    def forward(
        self,
        x: torch.Tensor,
        targets: dict[str, list[dict[str, torch.Tensor] | None]] | None = None,
        tasks: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Outputs per task: logits (N, K) for classification, (N, M, H, W) for segmentation;
        for detection, per-image ``boxes`` / ``scores`` / ``labels`` — or, when ``targets[task]``
        is given (training; None for an image without a box annotation, which that head then
        skips), torchvision's loss dict. ``tasks`` restricts which heads run."""
        selected = self.tasks if tasks is None else [t for t in self.tasks if t.name in tasks]
        x = self.normalize(x)
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
            "preprocess": self.preprocess.to_dict(),
            "dropout": next((h.dropout.p for h in self.heads.values() if isinstance(h, ClassificationHead)), 0.0),
            "decoder": seg[0].kind if seg else None,
            "layers": self.pyramid.layers if self.pyramid is not None else None,
        }
