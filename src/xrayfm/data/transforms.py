"""Sample transforms that keep images, masks and boxes in register.

:class:`Resize` brings samples of any size to one shape (so they batch) and rescales masks
(nearest neighbour, so 255 = ignore survives) and boxes with the image; :class:`EvalResize` is
the evaluation view of a preprocessing record. Training views, all on the same Sample contract:

- :class:`FinetuneAugment` (``basic``, xrayfm's own): crop, flip, small rotation, gamma, noise;
- :class:`RandAugmentView` (``randaugment``): EVA-X classification's timm pipeline (random
  resized crop, flip, RandAugment) on the grey image;
- :class:`PhotometricView` (``photometric``): EVA-X segmentation's mmseg pipeline (resize,
  flip, photometric distortion, which on a grey image is brightness and contrast).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from xrayfm.data.sample import Sample
from xrayfm.errors import XrayfmError


def drop_empty_boxes(boxes: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the boxes narrower or shorter than one pixel (e.g. cut off by a crop), with their labels.

    Args:
        boxes: (N, 4) xyxy boxes.
        labels: (N,) box labels.

    Returns:
        The kept boxes and their labels.
    """
    keep = ((boxes[:, 2] - boxes[:, 0]) >= 1) & ((boxes[:, 3] - boxes[:, 1]) >= 1)
    return boxes[keep], labels[keep]


class Resize:
    """Resize a Sample to ``(height, width)``; boxes and masks follow the image.

    Args:
        size: Output side (square) or ``(height, width)``.
        antialias: Antialias when shrinking the image; masks always use nearest.
        interpolation: ``bilinear`` or ``bicubic`` for the image.
    """

    def __init__(self, size: int | tuple[int, int], *, antialias: bool = True, interpolation: str = "bilinear") -> None:
        h, w = (size, size) if isinstance(size, int) else size
        if h <= 0 or w <= 0:
            raise XrayfmError(f"resize target must be positive, got {size}")
        self.size = (int(h), int(w))
        self.antialias = antialias
        self.interpolation = interpolation

    def __call__(self, sample: Sample) -> Sample:
        image = sample["image"]
        h0, w0 = image.shape[-2:]
        out: Sample = dict(sample)  # type: ignore[assignment]
        if (h0, w0) == self.size:
            return out
        out["image"] = F.interpolate(
            image[None], size=self.size, mode=self.interpolation, align_corners=False, antialias=self.antialias
        )[0].clamp_(0.0, 1.0)
        if "mask" in sample:
            out["mask"] = F.interpolate(sample["mask"][None].float(), size=self.size, mode="nearest-exact")[0].to(
                torch.uint8
            )
        if "boxes" in sample:
            sy, sx = self.size[0] / h0, self.size[1] / w0
            out["boxes"] = sample["boxes"] * torch.tensor([sx, sy, sx, sy], dtype=sample["boxes"].dtype)
        meta = dict(sample.get("meta", {}))
        meta["resized_from"] = [int(w0), int(h0)]
        out["meta"] = meta
        return out

    def __repr__(self) -> str:
        return f"Resize(size={self.size}, interpolation={self.interpolation!r})"


def eval_window(height: int, width: int, size: int, crop_pct: float) -> tuple[int, int, int, int]:
    """Where an image of ``height`` x ``width`` goes in evaluation: the resized (height, width),
    then the (top, left) corner of the ``size`` square kept. ``crop_pct`` 1 squashes the whole
    image into the square; below 1 the shorter side becomes ``round(size / crop_pct)``."""
    if crop_pct >= 1.0:
        return size, size, 0, 0
    scale = round(size / crop_pct) / min(height, width)
    th, tw = max(size, round(height * scale)), max(size, round(width * scale))
    return th, tw, (th - size) // 2, (tw - size) // 2


class EvalResize:
    """The evaluation view of a :class:`~xrayfm.models.preprocess.Preprocess` record, on Samples.

    ``crop_pct`` 1 resizes the whole image to ``size`` x ``size``; below 1 the shorter side goes
    to ``round(size / crop_pct)`` and the centre square is kept (timm / EVA-X evaluation). Masks
    and boxes follow; boxes left with no area inside the crop are dropped with their labels.
    Pixels match :func:`xrayfm.models.preprocess.resize_images`, which serving uses.

    Args:
        size: Output side.
        interpolation: ``bilinear`` or ``bicubic``.
        crop_pct: Centre-crop share in (0, 1].
    """

    def __init__(self, size: int, *, interpolation: str = "bilinear", crop_pct: float = 1.0) -> None:
        if not 0 < crop_pct <= 1:
            raise XrayfmError(f"crop_pct must be in (0, 1], got {crop_pct}")
        self.size, self.interpolation, self.crop_pct = int(size), interpolation, float(crop_pct)

    def __call__(self, sample: Sample) -> Sample:
        h, w = sample["image"].shape[-2:]
        th, tw, top, left = eval_window(h, w, self.size, self.crop_pct)
        out = Resize((th, tw), interpolation=self.interpolation)(sample)
        if (th, tw) == (self.size, self.size):
            return out
        window = (slice(top, top + self.size), slice(left, left + self.size))
        out["image"] = out["image"][(..., *window)]
        if "mask" in out:
            out["mask"] = out["mask"][(..., *window)]
        if "boxes" in out:
            shift = torch.tensor([left, top, left, top], dtype=out["boxes"].dtype)
            boxes = (out["boxes"] - shift).clamp(0, self.size)
            out["boxes"], out["box_labels"] = drop_empty_boxes(boxes, out["box_labels"])
        return out

    def __repr__(self) -> str:
        return f"EvalResize(size={self.size}, interpolation={self.interpolation!r}, crop_pct={self.crop_pct})"


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[Sample], Sample]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample) -> Sample:
        for t in self.transforms:
            sample = t(sample)
        return sample

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"


class PretrainAugment:
    """Self-supervised pretraining view: random resized crop, horizontal flip, normalise, repeat.

    EVA-X MIM defaults: crop scale (0.2, 1), ratio (3/4, 4/3), flip p=0.5, grey [0, 1] image
    normalised with the dataset mean/std and repeated to ``channels`` (3 for ImageNet-shaped
    stems). No colour jitter: X-ray intensities carry meaning.

    Args:
        size: Output side.
        scale: Crop area range (fraction of the image).
        ratio: Crop aspect-ratio range.
        mean: Normalisation mean of the grey [0, 1] image.
        std: Normalisation std.
        channels: Output channels (the grey channel repeated).
    """

    def __init__(
        self,
        size: int = 224,
        *,
        scale: tuple[float, float] = (0.2, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        mean: float = 0.4919,
        std: float = 0.2851,
        channels: int = 3,
    ) -> None:
        from torchvision.transforms import v2

        self.crop = v2.RandomResizedCrop(size, scale=scale, ratio=ratio, antialias=True)
        self.flip = v2.RandomHorizontalFlip()
        self.mean, self.std, self.channels = mean, std, channels

    def __call__(self, sample: Sample) -> Sample:
        image = self.flip(self.crop(sample["image"]))
        image = ((image - self.mean) / self.std).repeat(self.channels, 1, 1)
        return {"image": image, "meta": sample.get("meta", {})}


class FinetuneAugment:
    """Supervised training view: random resized crop, flip, small rotation, gamma and noise.

    Image, mask and boxes move together (torchvision ``tv_tensors``); boxes that leave the crop
    are dropped with their labels. Intensity changes are X-ray plausible (exposure gamma,
    detector noise), never colour jitter. The image stays grey [0, 1] with one channel; the
    model normalises it.

    Args:
        size: Output side.
        scale: Crop area range.
        ratio: Crop aspect-ratio range.
        flip: Probability of a horizontal flip (0 keeps laterality, e.g. for cardiomegaly).
        degrees: Maximum rotation.
        gamma: Gamma range (1, 1) = off.
        noise: Std of additive Gaussian noise (0 = off).
        interpolation: ``bilinear`` or ``bicubic`` for the image (masks: nearest).
    """

    def __init__(
        self,
        size: int = 224,
        *,
        scale: tuple[float, float] = (0.5, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip: float = 0.5,
        degrees: float = 10.0,
        gamma: tuple[float, float] = (0.8, 1.25),
        noise: float = 0.01,
        interpolation: str = "bilinear",
    ) -> None:
        from torchvision.transforms import InterpolationMode, v2

        mode = InterpolationMode(interpolation)
        self.geometry = v2.Compose(
            [
                v2.RandomAffine(degrees=degrees),
                v2.RandomResizedCrop(size, scale=scale, ratio=ratio, interpolation=mode, antialias=True),
                v2.RandomHorizontalFlip(flip),
            ]
        )
        self.gamma, self.noise = gamma, noise

    def __call__(self, sample: Sample) -> Sample:
        from torchvision import tv_tensors

        image = sample["image"]
        h, w = image.shape[-2:]
        targets: dict[str, object] = {}
        if "mask" in sample:
            targets["mask"] = tv_tensors.Mask(sample["mask"])
        if "boxes" in sample:
            targets["boxes"] = tv_tensors.BoundingBoxes(sample["boxes"], format="XYXY", canvas_size=(h, w))
            targets["box_labels"] = sample["box_labels"]
        image, targets = self.geometry(tv_tensors.Image(image), targets)
        image = image.as_subclass(torch.Tensor)
        g = float(torch.empty(1).uniform_(*self.gamma)) if self.gamma != (1.0, 1.0) else 1.0
        image = image.clamp(0, 1) ** g
        if self.noise > 0:
            image = (image + self.noise * torch.randn_like(image)).clamp_(0, 1)
        out: Sample = {**sample, "image": image}  # type: ignore[typeddict-item]
        if "mask" in targets:
            out["mask"] = targets["mask"].as_subclass(torch.Tensor)
        if "boxes" in targets:
            # not v2.SanitizeBoundingBoxes: it would also drop mask channels when their count
            # equals the box count (it takes them for instance masks)
            boxes = targets["boxes"].as_subclass(torch.Tensor)
            out["boxes"], out["box_labels"] = drop_empty_boxes(boxes, sample["box_labels"])
        return out


class RandAugmentView:
    """EVA-X classification's training view: timm's ``create_transform`` on the grey image.

    Random resized crop (``scale``, ``ratio``, ``interpolation``), horizontal flip and timm
    RandAugment (``rand_augment``, e.g. ``rand-m6-mstd0.5-inc1``), as the official fine-tuning
    builds it (``--build_timm_transform --aa ...``) with colour jitter and random erasing off.
    timm works on 8-bit PIL images, so the grey [0, 1] image goes through an 8-bit RGB image
    (its three channels equal, as the official loader's ``convert('RGB')``) and comes back as one
    grey channel; every RandAugment op keeps the channels equal. Randomness comes from Python's
    ``random``, NumPy and torch (seed all three for a repeatable view). Classification only: the
    view cannot move masks or boxes, so it leaves them out of its output.

    Args:
        size: Output side.
        rand_augment: timm RandAugment string.
        scale: Crop area range.
        ratio: Crop aspect-ratio range.
        flip: Horizontal-flip probability.
        interpolation: ``bilinear`` or ``bicubic``.
        fill: Grey [0, 1] value of pixels that geometric ops uncover (timm: the normalisation mean).

    Raises:
        XrayfmError: A malformed RandAugment string.
    """

    def __init__(
        self,
        size: int = 224,
        *,
        rand_augment: str = "rand-m6-mstd0.5-inc1",
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip: float = 0.5,
        interpolation: str = "bicubic",
        fill: float = 0.5,
    ) -> None:
        from timm.data import create_transform

        if not rand_augment.startswith("rand"):
            raise XrayfmError(
                f"rand_augment must be a timm RandAugment string such as rand-m6-mstd0.5-inc1, got {rand_augment!r}"
            )
        try:
            self.views = create_transform(
                size, is_training=True, scale=tuple(scale), ratio=tuple(ratio), hflip=flip, color_jitter=None,
                auto_augment=rand_augment, interpolation=interpolation, mean=(fill,) * 3, re_prob=0.0,
                normalize=False, separate=True,
            )  # fmt: skip
        except (AssertionError, ValueError, KeyError) as exc:
            raise XrayfmError(f"rand_augment {rand_augment!r} is not a valid timm RandAugment string: {exc}") from None
        self.rand_augment = rand_augment

    def __call__(self, sample: Sample) -> Sample:
        from PIL import Image

        grey = (sample["image"][0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        image = Image.fromarray(grey, mode="L").convert("RGB")
        primary, secondary, final = self.views
        tensor = final(secondary(primary(image)))
        out = {k: v for k, v in sample.items() if k not in ("mask", "boxes", "box_labels")}
        out["image"] = tensor[:1].float() / 255.0
        return out  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"RandAugmentView({self.views})"


class PhotometricView:
    """EVA-X segmentation's training view (mmseg): resize, flip, photometric distortion.

    The image (mask and boxes with it) is resized to ``size`` x ``size`` without keeping the aspect
    ratio (mmseg ``Resize(keep_ratio=False)``), flipped with probability ``flip`` (``RandomFlip``), then
    mmseg's ``PhotoMetricDistortion`` acts: with probability 1/2 each, a brightness shift
    uniform in +-``brightness`` and a contrast factor uniform in ``contrast`` (pixel times factor),
    each clipped to [0, 1]. Its saturation and hue steps do nothing to a grey image, so they are left out.

    Args:
        size: Output side.
        flip: Horizontal-flip probability.
        brightness: Largest brightness shift on the [0, 1] scale (mmseg: 32 of 255).
        contrast: Contrast factor range (mmseg: 0.5 to 1.5).
        interpolation: ``bilinear`` or ``bicubic`` for the image.
    """

    def __init__(
        self,
        size: int = 512,
        *,
        flip: float = 0.5,
        brightness: float = 32 / 255,
        contrast: tuple[float, float] = (0.5, 1.5),
        interpolation: str = "bilinear",
    ) -> None:
        self.resize = Resize(size, interpolation=interpolation)
        self.flip, self.brightness, self.contrast = flip, brightness, contrast

    def __call__(self, sample: Sample) -> Sample:
        out = self.resize(sample)
        if float(torch.rand(())) < self.flip:
            out["image"] = out["image"].flip(-1)
            if "mask" in out:
                out["mask"] = out["mask"].flip(-1)
            if "boxes" in out:
                width = out["image"].shape[-1]
                out["boxes"] = torch.stack([width - out["boxes"][:, 2], out["boxes"][:, 1], width - out["boxes"][:, 0],
                                            out["boxes"][:, 3]], dim=1)  # fmt: skip
        image = out["image"]
        if float(torch.rand(())) < 0.5:
            image = (image + float(torch.empty(()).uniform_(-self.brightness, self.brightness))).clamp(0.0, 1.0)
        if float(torch.rand(())) < 0.5:
            image = image * float(torch.empty(()).uniform_(*self.contrast))
        out["image"] = image.clamp(0.0, 1.0)
        return out

    def __repr__(self) -> str:
        return f"PhotometricView(size={self.resize.size}, flip={self.flip}, contrast={self.contrast})"
