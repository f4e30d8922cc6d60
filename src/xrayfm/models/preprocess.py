"""The preprocessing record that travels with every weight file and export.

One :class:`Preprocess` per model says how a radiograph becomes the model's input: input side,
channels, interpolation, centre-crop share, grey mean / std and the intensity scheme. It lives
in three places that always agree because they are written from one another:

- on a backbone, as timm's ``pretrained_cfg`` (``input_size``, ``interpolation``, ``crop_pct``,
  ``mean``, ``std``), set by :func:`xrayfm.models.create_model` from the release tag, the export
  sidecar or the requested ``img_size``;
- on an :class:`~xrayfm.models.task_model.XrayModel`, as its ``preprocess`` attribute (its
  normalisation buffers come from it);
- on disk, as the ``preprocess`` entry of ``backbone.json``, ``model.json`` and ``onnx.json``.

:func:`resolve_preprocess` is the one resolver: dataset evaluation transforms, fine-tuning,
serving, explanation and ONNX export all ask it, so none of them re-types a mean, a size or an
interpolation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xrayfm.data.transforms import EvalResize, eval_window
from xrayfm.errors import XrayfmError

#: How pixels reach [0, 1] before this record applies (the same for training and serving).
INTENSITY = "grey [0, 1] from read_xray: DICOM rescale + VOI LUT / window, MONOCHROME1 inverted, PNG by bit depth"
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


@dataclass(frozen=True)
class Preprocess:
    """How an image file becomes a model input.

    Attributes:
        input_size: Side of the square model input in pixels.
        channels: Channels of the backbone's stem (the grey image is repeated inside the model).
        interpolation: ``bilinear`` or ``bicubic`` (antialiased when shrinking).
        crop_pct: 1.0 resizes the whole image to the input square (xrayfm's default, no
            anatomy cut off); below 1 the shorter side goes to ``input_size / crop_pct`` and the
            centre ``input_size`` square is kept (timm / EVA-X evaluation: 224 / 256 = 0.875).
        mean: Normalisation mean of the grey [0, 1] image.
        std: Normalisation std (positive).
        intensity: How file pixels become grey [0, 1] (documentation; one scheme today).
    """

    input_size: int
    channels: int = 3
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    mean: float = 0.5
    std: float = 0.25
    intensity: str = INTENSITY

    def __post_init__(self) -> None:
        if int(self.input_size) <= 0:
            raise XrayfmError(f"preprocess: input_size must be positive, got {self.input_size}")
        if self.interpolation not in INTERPOLATIONS:
            raise XrayfmError(f"preprocess: interpolation {self.interpolation!r} is not one of {INTERPOLATIONS}")
        if not 0 < float(self.crop_pct) <= 1:
            raise XrayfmError(f"preprocess: crop_pct must be in (0, 1], got {self.crop_pct}")
        if float(self.std) <= 0:
            raise XrayfmError(f"preprocess: std must be positive, got {self.std}")
        object.__setattr__(self, "input_size", int(self.input_size))
        object.__setattr__(self, "channels", int(self.channels))
        object.__setattr__(self, "crop_pct", float(self.crop_pct))
        object.__setattr__(self, "mean", float(self.mean))
        object.__setattr__(self, "std", float(self.std))

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as written into sidecars."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocess:
        """Inverse of :meth:`to_dict` (unknown keys are an error: the file is of a newer xrayfm)."""
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise XrayfmError(f"preprocess record has unknown fields {sorted(unknown)}")
        return cls(**dict(d))

    def with_size(self, input_size: int | None) -> Preprocess:
        """The same record at another input side (``None`` keeps it)."""
        return self if input_size is None else replace(self, input_size=int(input_size))

    def timm_overlay(self) -> dict[str, Any]:
        """The record as timm ``pretrained_cfg`` entries (per-channel mean / std)."""
        return {
            "input_size": (self.channels, self.input_size, self.input_size),
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
            "mean": (self.mean,) * self.channels,
            "std": (self.std,) * self.channels,
        }

    @classmethod
    def from_timm_cfg(cls, cfg: Mapping[str, Any] | Any) -> Preprocess:
        """Read a timm ``pretrained_cfg`` (dict or dataclass); colour mean / std become grey ones
        (their average: the grey image is repeated to every channel)."""
        get = cfg.get if isinstance(cfg, Mapping) else lambda k, default=None: getattr(cfg, k, default)
        chans, h, _ = tuple(get("input_size", None) or (3, 224, 224))
        mean = tuple(get("mean", None) or (0.485, 0.456, 0.406))
        std = tuple(get("std", None) or (0.229, 0.224, 0.225))
        return cls(
            input_size=h,
            channels=chans,
            interpolation=get("interpolation", None) or "bicubic",
            crop_pct=float(get("crop_pct", None) or 0.875),
            mean=_grey(mean),
            std=_grey(std),
        )

    def eval_transform(self) -> EvalResize:
        """The Sample transform of evaluation (image, masks and boxes follow)."""
        return EvalResize(self.input_size, interpolation=self.interpolation, crop_pct=self.crop_pct)

    def boxes_to_original(self, boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Map (N, 4) xyxy boxes in model-input pixels back to an original ``height`` x ``width`` image."""
        th, tw, top, left = eval_window(height, width, self.input_size, self.crop_pct)
        shift = boxes.new_tensor([left, top, left, top])
        scale = boxes.new_tensor([tw / width, th / height, tw / width, th / height])
        return (boxes + shift) / scale

    def plane_to_original(self, plane: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Map an (S, S) map over the model input (heatmap, mask probabilities) onto the original
        ``height`` x ``width`` image (bilinear); parts the centre crop cut away are 0."""
        th, tw, top, left = eval_window(height, width, self.input_size, self.crop_pct)
        canvas = plane.new_zeros((th, tw))
        canvas[top : top + self.input_size, left : left + self.input_size] = plane
        out = F.interpolate(canvas[None, None].float(), size=(height, width), mode="bilinear", align_corners=False)
        return out[0, 0]

    def prepare(self, pixels: torch.Tensor) -> torch.Tensor:
        """Grey [0, 1] images (N, 1, H, W) or one (H, W) image -> (N, 1, S, S) model input."""
        x = pixels if pixels.ndim == 4 else pixels.reshape(1, 1, *pixels.shape[-2:])
        return resize_images(x.float(), self.input_size, self.interpolation, self.crop_pct)


def _grey(values: tuple[float, ...]) -> float:
    """One grey value for per-channel ones: the value itself when all agree, else their average."""
    return float(values[0]) if len(set(values)) == 1 else sum(values) / len(values)


def resize_images(x: torch.Tensor, size: int, interpolation: str, crop_pct: float) -> torch.Tensor:
    """Resize (N, C, H, W) images as :class:`Preprocess` says; values stay in [0, 1]."""
    th, tw, top, left = eval_window(*x.shape[-2:], size, crop_pct)
    if tuple(x.shape[-2:]) != (th, tw):
        x = F.interpolate(
            x, size=(th, tw), mode=interpolation, align_corners=False, antialias=interpolation != "nearest"
        )
    return x[..., top : top + size, left : left + size].clamp(0.0, 1.0)


def _legacy_record(meta: Mapping[str, Any]) -> Preprocess | None:
    """Sidecars written before the record existed: ``img_size`` / ``model_kwargs`` + ``normalization``."""
    norm = meta.get("normalization") or {}
    size = meta.get("img_size") or (meta.get("model_kwargs") or {}).get("img_size")
    if "mean" not in norm or "std" not in norm or not size:
        return None
    return Preprocess(input_size=size, channels=norm.get("channels", 3), mean=norm["mean"], std=norm["std"])


def resolve_preprocess(source: nn.Module | Mapping[str, Any], *, img_size: int | None = None) -> Preprocess:
    """The preprocessing of a model, a backbone or a sidecar; the one resolver every path uses.

    Args:
        source: An :class:`~xrayfm.models.task_model.XrayModel` (its record), a timm backbone
            (its ``pretrained_cfg``) or a sidecar mapping (``model.json`` / ``backbone.json`` /
            ``onnx.json``) holding a ``preprocess`` entry.
        img_size: Another input side, e.g. a user's ``--img-size`` (the rest is kept).

    Raises:
        XrayfmError: The source carries no preprocessing record.
    """
    if isinstance(source, nn.Module):
        record = getattr(source, "preprocess", None)
        if not isinstance(record, Preprocess):
            cfg = getattr(source, "pretrained_cfg", None)
            if cfg is None:
                raise XrayfmError(f"{type(source).__name__} carries no preprocessing record (pretrained_cfg)")
            record = Preprocess.from_timm_cfg(cfg)
        return record.with_size(img_size)
    if "preprocess" in source:
        return Preprocess.from_dict(source["preprocess"]).with_size(img_size)
    legacy = _legacy_record(source)
    if legacy is None:
        raise XrayfmError(f"sidecar of {source.get('arch', 'a model')!r} has no preprocessing record")
    return legacy.with_size(img_size)
