"""One backbone, many heads keyed ``dataset/task``: the Foundation X model.

Every dataset of a recipe gets its own heads: a linear classifier per classification task, a box
decoder per detection task (Deformable DETR as the paper's DINO family: one deformable encoder that
every detection dataset shares, :class:`~xrayfm.models.heads.deformable_detr.DeformableEncoder`, and
a :class:`~xrayfm.models.heads.deformable_detr.DeformableDetrHead` decoder per dataset; or, with
``localizer="faster_rcnn"``, a whole torchvision Faster R-CNN per dataset through
:class:`~xrayfm.models.heads.DetectionHead`) and, per segmentation task, a classifier on one
segmentation decoder that all segmentation datasets share (UperNet = PSP + FPN, as the
reference's PSP + FPN decoder with per-dataset heads, jlianglab/Foundation_X
``swin_transformer_CyclicSegmentation.py``; a U-Net for a CNN). A forward runs one unit: the
backbone, the shared parts that unit needs and that unit's head only, and returns the features
the teacher's consistency loss compares; :meth:`MultiTaskModel.forward_heads` runs several units on
one backbone pass (the server's way), through the same code. The shared modules live outside
``heads``, so a lock on one dataset's head freezes them.

:meth:`MultiTaskModel.lock` freezes everything but one head (Foundation X's lock phase) and keeps
the frozen shared modules in eval mode, so their batch-norm statistics do not move either, even
when a training loop calls ``train()`` again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.base import SegmentationHead as SmpSegmentationHead
from torch import nn

from xrayfm.errors import XrayfmError
from xrayfm.models.features import FeaturePyramid, dense_layers
from xrayfm.models.heads import ClassificationHead, DetectionHead, SegmentationHead
from xrayfm.models.heads.deformable_detr import DeformableDetrHead, DeformableEncoder, detr_config
from xrayfm.models.preprocess import Preprocess, resolve_preprocess
from xrayfm.models.task_model import input_channels, normalize_grey
from xrayfm.pretrain.multitask_recipe import LOCALIZERS, NAME_PATTERN, MultiTaskRecipe
from xrayfm.tasks import CLASSIFICATION_KINDS, DENSE_KINDS, TaskSpec


@dataclass
class UnitOutput:
    """What one unit's forward gives.

    Attributes:
        prediction: Logits (N, K) for classification, (N, K, H, W) for segmentation; for
            detection the head's loss dict (training, with targets) or per-image boxes; None
            when the head was not run.
        features: Named features for the consistency loss: ``pooled`` (N, C) always,
            ``decoder`` (N, C, h, w) of the shared segmentation decoder, ``pyramid`` (N, C, h, w)
            the coarsest pyramid level of a detection unit, ``loc_encoder`` (N, d, tokens) the shared
            Deformable DETR encoder's output.
    """

    prediction: Any
    features: dict[str, torch.Tensor] = field(default_factory=dict)


class SharedSegmentationDecoder(nn.Module):
    """The decoder of :class:`~xrayfm.models.heads.SegmentationHead` without its classifier, to be
    shared by several segmentation datasets, each with its own classifier (:meth:`classifier`).

    Args:
        in_channels: Channels of the pyramid levels, finest first.
        strides: Their strides.
        decoder: ``upernet`` or ``unet``.
        input_channels: Channels of the image (the U-Net's full-resolution skip).
        dropout: ``Dropout2d`` before each classifier.
    """

    def __init__(
        self, in_channels: Sequence[int], strides: Sequence[int], *, decoder: str, input_channels: int, dropout: float
    ) -> None:
        super().__init__()
        template = SegmentationHead(
            in_channels, strides, 1, decoder=decoder, input_channels=input_channels, dropout=dropout
        )
        self.kind, self.decoder, self.dropout = template.kind, template.decoder, template.dropout
        conv = template.classifier[0]
        self.out_channels, self.kernel_size = conv.in_channels, conv.kernel_size[0]

    def forward(self, image: torch.Tensor, pyramid: list[torch.Tensor]) -> torch.Tensor:
        """Decoded map (N, out_channels, h, w): 1/4 of the input for UperNet, full size for U-Net."""
        if self.kind == "upernet":  # smp's UperNet skips its first two inputs (strides 1, 2)
            maps = pyramid[-4:]
            return self.decoder([maps[0], maps[0], *maps])
        return self.decoder([image, *pyramid])

    def classifier(self, num_classes: int) -> nn.Module:
        """A new per-dataset classifier on this decoder's output."""
        return SmpSegmentationHead(self.out_channels, num_classes, kernel_size=self.kernel_size)


class MultiTaskModel(nn.Module):
    """A shared backbone with one head per (dataset, task).

    Takes grey [0, 1] images (N, 1, H, W) and normalises them itself, as
    :class:`~xrayfm.models.task_model.XrayModel`.

    Args:
        backbone: A timm model created with ``num_classes=0``.
        tasks: Task specs per dataset name.
        preprocess: Input record (default: the backbone's own); its mean / std fill the buffers.
        dropout: Dropout before classification layers.
        decoder: Shared segmentation decoder, ``upernet`` / ``unet`` (default: UperNet for a ViT,
            U-Net for a CNN).
        layers: Backbone layers feeding dense heads (default from ``features``).
        features: ``last`` or ``pyramid``, see :func:`~xrayfm.models.features.dense_layers`.
        decoder_dropout: ``Dropout2d`` before the segmentation classifiers.
        localizer: Detection heads, ``deformable_detr`` (shared encoder, a decoder per dataset) or
            ``faster_rcnn`` (a detector per dataset).
        detr: ``DeformableDetrConfig`` fields over
            :data:`~xrayfm.models.heads.deformable_detr.DETR_DEFAULTS` (``d_model``, ``encoder_layers``...).

    Raises:
        XrayfmError: No task, a name that cannot key a head, an unknown localizer or DETR setting, or
            detection on a backbone without pyramid levels at strides 4-32.
    """

    def __init__(
        self,
        backbone: nn.Module,
        tasks: Mapping[str, Sequence[TaskSpec]],
        *,
        preprocess: Preprocess | None = None,
        dropout: float = 0.0,
        decoder: str | None = None,
        layers: Sequence[int] | None = None,
        features: str = "last",
        decoder_dropout: float = 0.0,
        localizer: str = "deformable_detr",
        detr: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if localizer not in LOCALIZERS:
            raise XrayfmError(f"unknown localizer {localizer!r}; expected one of {list(LOCALIZERS)}")
        self.tasks: dict[str, TaskSpec] = {}
        for dataset, specs in tasks.items():
            for spec in specs:
                if not NAME_PATTERN.match(dataset) or not NAME_PATTERN.match(spec.name):
                    raise XrayfmError(f"{dataset}/{spec.name}: names must be letters, digits, '_' or '-'")
                self.tasks[f"{dataset}/{spec.name}"] = spec
        if not self.tasks:
            raise XrayfmError("a multi-task model needs at least one task")
        self.backbone = backbone
        self.in_chans = input_channels(backbone)
        self.preprocess = preprocess if preprocess is not None else resolve_preprocess(backbone)
        self.register_buffer("mean", torch.tensor(self.preprocess.mean), persistent=True)
        self.register_buffer("std", torch.tensor(self.preprocess.std), persistent=True)
        kinds = {t.kind for t in self.tasks.values()}
        dense = bool(kinds & set(DENSE_KINDS))
        self.pyramid = FeaturePyramid(backbone, layers or dense_layers(backbone, features)) if dense else None
        self.seg_decoder = None
        if "segmentation" in kinds:
            assert self.pyramid is not None
            self.seg_decoder = SharedSegmentationDecoder(
                self.pyramid.out_channels, self.pyramid.strides,
                decoder=decoder or ("upernet" if self.pyramid.plain else "unet"),
                input_channels=self.in_chans, dropout=decoder_dropout,
            )  # fmt: skip
        self.localizer, self.loc_encoder = localizer, None
        #: The DETR settings asked for (over the defaults), saved so the model rebuilds as it was.
        self.detr_settings = dict(detr or {})
        if "detection" in kinds:
            assert self.pyramid is not None
            if len(self.pyramid.out_channels) < 4 or self.pyramid.strides[-4:] != [4, 8, 16, 32]:
                raise XrayfmError(f"detection needs pyramid levels at strides 4-32, got {self.pyramid.strides}")
            if localizer == "deformable_detr":
                self.detr_config = detr_config(detr)
                self.loc_encoder = DeformableEncoder(self.pyramid.out_channels, self.detr_config)
        self.heads = nn.ModuleDict()
        for key, spec in self.tasks.items():
            dataset, name = key.split("/")
            if dataset not in self.heads:
                self.heads[dataset] = nn.ModuleDict()
            self.heads[dataset][name] = self._make_head(spec, dropout)
        self._locked: str | None = None
        self._frozen: tuple[str, ...] = ()

    def _make_head(self, spec: TaskSpec, dropout: float) -> nn.Module:
        if spec.kind in CLASSIFICATION_KINDS:
            return ClassificationHead(self.backbone.num_features, spec.num_classes, dropout)
        if spec.kind == "segmentation":
            assert self.seg_decoder is not None
            return self.seg_decoder.classifier(spec.num_classes)
        assert self.pyramid is not None
        if self.loc_encoder is not None:
            return DeformableDetrHead(self.detr_config, spec.num_classes)
        return DetectionHead(self.pyramid.out_channels, spec.num_classes)

    @classmethod
    def from_recipe(cls, recipe: MultiTaskRecipe, backbone: nn.Module, **kwargs: Any) -> MultiTaskModel:
        """The model with the heads ``recipe`` declares and its localizer; ``kwargs`` go to the constructor."""
        return cls(backbone, recipe.task_specs(), **{"localizer": recipe.localizer, "detr": recipe.detr, **kwargs})

    def task(self, unit: str) -> TaskSpec:
        """The task spec of a ``dataset/task`` key.

        Raises:
            XrayfmError: No head has that key.
        """
        if unit not in self.tasks:
            raise XrayfmError(f"no head {unit!r}; this model has {sorted(self.tasks)}")
        return self.tasks[unit]

    def head(self, unit: str) -> nn.Module:
        """The head of a ``dataset/task`` key."""
        self.task(unit)
        dataset, name = unit.split("/")
        return self.heads[dataset][name]

    def shared_modules(self) -> dict[str, nn.Module]:
        """Modules every unit of a kind shares: backbone, pyramid adapters, segmentation decoder, DETR encoder."""
        shared = {"backbone": self.backbone, "pyramid": self.pyramid, "seg_decoder": self.seg_decoder,
                  "loc_encoder": self.loc_encoder}  # fmt: skip
        return {name: m for name, m in shared.items() if m is not None}

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Grey [0, 1] (N, 1, H, W) -> normalised (N, in_chans, H, W)."""
        return normalize_grey(x, self.mean, self.std, self.in_chans)

    def forward(
        self,
        images: torch.Tensor,
        unit: str,
        targets: Sequence[dict[str, torch.Tensor] | None] | None = None,
        *,
        head: bool = True,
    ) -> UnitOutput:
        """Run one unit: the shared parts it needs and its own head only.

        Args:
            images: Grey [0, 1] images (N, 1, H, W).
            unit: ``dataset/task`` key.
            targets: Detection targets per image (training; see
                :func:`~xrayfm.models.heads.detection.detection_targets`).
            head: False: features only (e.g. a teacher's detection unit, whose boxes are not compared).

        Returns:
            The head's prediction and the features for consistency.
        """
        predictions, features = self._run(images, [unit], {unit: targets}, heads=head)
        return UnitOutput(predictions.get(unit), features)

    def forward_heads(
        self,
        images: torch.Tensor,
        units: Sequence[str],
        targets: Mapping[str, Sequence[dict[str, torch.Tensor] | None]] | None = None,
    ) -> dict[str, Any]:
        """Run several units on one backbone pass, each head as :meth:`forward` runs it alone.

        Classification heads share the pooled features, segmentation heads the shared decoder's
        map, Deformable DETR heads the shared encoder's memory (the server answers every head so).

        Args:
            images: Grey [0, 1] images (N, 1, H, W).
            units: ``dataset/task`` keys.
            targets: Detection targets per image, per detection unit (training).

        Returns:
            The prediction per unit, as :attr:`UnitOutput.prediction`.
        """
        return self._run(images, units, targets or {}, heads=True)[0]

    def _run(
        self,
        images: torch.Tensor,
        units: Sequence[str],
        targets: Mapping[str, Sequence[dict[str, torch.Tensor] | None] | None],
        *,
        heads: bool,
    ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """The predictions of ``units`` (none unless ``heads``) and the features their kinds give."""
        specs = {unit: self.task(unit) for unit in units}
        x = self.normalize(images)
        if all(spec.kind in CLASSIFICATION_KINDS for spec in specs.values()):
            final, maps = self.backbone.forward_features(x), []
        else:
            assert self.pyramid is not None
            final, maps = self.pyramid(self.backbone, x)
        features = {"pooled": self.backbone.forward_head(final, pre_logits=True)}
        predictions: dict[str, Any] = {}
        memory = None
        for unit, spec in specs.items():
            if spec.kind in CLASSIFICATION_KINDS:
                if heads:
                    predictions[unit] = self.head(unit)(features["pooled"])
            elif spec.kind == "segmentation":
                assert self.seg_decoder is not None
                if "decoder" not in features:
                    features["decoder"] = self.seg_decoder(x, maps)
                if heads:
                    logits = self.head(unit)(self.seg_decoder.dropout(features["decoder"]))
                    if logits.shape[-2:] != x.shape[-2:]:
                        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
                    predictions[unit] = logits
            else:
                features["pyramid"] = maps[-1]
                if self.loc_encoder is not None and memory is None:
                    memory = self.loc_encoder(maps)
                    features["loc_encoder"] = memory.hidden.transpose(1, 2)
                if heads and memory is not None:
                    predictions[unit] = self.head(unit)(memory, tuple(x.shape[-2:]), targets.get(unit))
                elif heads:
                    predictions[unit] = self.head(unit)(x, maps, targets.get(unit))
        return predictions, features

    @property
    def locked(self) -> str | None:
        """The unit whose head alone trains, or None when released."""
        return self._locked

    @property
    def frozen_names(self) -> tuple[str, ...]:
        """Parameters the current lock froze (they return to training on :meth:`release`)."""
        return self._frozen

    def lock(self, unit: str) -> None:
        """Freeze every parameter but ``unit``'s head and keep the shared modules in eval mode.

        Frozen parameters lose their gradient (``grad = None``), so an optimiser that still holds
        them (AdamW with weight decay included) skips them until :meth:`release`.

        Raises:
            XrayfmError: Unknown unit, or the model is already locked on another unit.
        """
        self.task(unit)
        if self._locked is not None and self._locked != unit:
            raise XrayfmError(f"the model is locked on {self._locked!r}; release it before locking {unit!r}")
        if self._locked == unit:
            return
        dataset, name = unit.split("/")
        own = f"heads.{dataset}.{name}."
        frozen = []
        for pname, p in self.named_parameters():
            if p.requires_grad and not pname.startswith(own):
                p.requires_grad_(False)
                p.grad = None
                frozen.append(pname)
        self._locked, self._frozen = unit, tuple(frozen)
        self.train(self.training)

    def release(self) -> None:
        """Let the parameters the lock froze train again (a no-op when not locked)."""
        params = dict(self.named_parameters())
        for pname in self._frozen:
            params[pname].requires_grad_(True)
        self._locked, self._frozen = None, ()
        self.train(self.training)

    def train(self, mode: bool = True) -> MultiTaskModel:
        """As ``nn.Module.train``, but the shared modules stay in eval mode while locked."""
        super().train(mode)
        if self._locked is not None:
            for module in self.shared_modules().values():
                module.eval()
        return self
