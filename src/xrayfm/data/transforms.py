"""Sample transforms that keep images, masks and boxes in register.

Only geometry that every pipeline needs lives here for now: :class:`Resize` brings samples of
any size to one shape (so they batch) and rescales masks (nearest neighbour, so 255 = ignore
survives) and boxes with the image. Training augmentation (crops, flips, gamma, noise; never
colour jitter) builds on the same Sample contract.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from xrayfm.data.sample import Sample
from xrayfm.errors import XrayfmError


class Resize:
    """Resize a Sample to ``(height, width)``; boxes and masks follow the image.

    Args:
        size: Output side (square) or ``(height, width)``.
        antialias: Antialias when shrinking the image (bilinear); masks always use nearest.
    """

    def __init__(self, size: int | tuple[int, int], *, antialias: bool = True) -> None:
        h, w = (size, size) if isinstance(size, int) else size
        if h <= 0 or w <= 0:
            raise XrayfmError(f"resize target must be positive, got {size}")
        self.size = (int(h), int(w))
        self.antialias = antialias

    def __call__(self, sample: Sample) -> Sample:
        image = sample["image"]
        h0, w0 = image.shape[-2:]
        out: Sample = dict(sample)  # type: ignore[assignment]
        if (h0, w0) == self.size:
            return out
        out["image"] = F.interpolate(
            image[None], size=self.size, mode="bilinear", align_corners=False, antialias=self.antialias
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
        return f"Resize(size={self.size})"


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
    ) -> None:
        from torchvision.transforms import v2

        self.geometry = v2.Compose(
            [
                v2.RandomAffine(degrees=degrees),
                v2.RandomResizedCrop(size, scale=scale, ratio=ratio, antialias=True),
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
            keep = ((boxes[:, 2] - boxes[:, 0]) >= 1) & ((boxes[:, 3] - boxes[:, 1]) >= 1)
            out["boxes"], out["box_labels"] = boxes[keep], sample["box_labels"][keep]
        return out
