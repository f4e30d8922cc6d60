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
