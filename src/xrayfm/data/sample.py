"""The Sample convention and batch collation.

A Sample is a plain dict so that any dataset, transform or model can produce or consume it:

- ``image``: float32 tensor (C, H, W), C = 1 natively, values in [0, 1] before normalisation.
- ``labels``: float32 (K,); ``nan`` means unknown / not annotated (losses mask it).
- ``mask``: uint8 (M, H, W); 1 = class present, 0 = absent, 255 = ignore (e.g. devices).
- ``boxes``: float32 (N, 4) xyxy in pixels of ``image``; ``box_labels``: int64 (N,).
- ``meta``: dict (``id``, ``source``, ``patient_id``, ``view``, ...).

Unknown-as-nan lets heterogeneous datasets train together and makes label policies data options.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypedDict

import torch

from xrayfm.errors import XrayfmError

MASK_IGNORE = 255


class Sample(TypedDict, total=False):
    """One example; every key except ``image`` and ``meta`` is optional."""

    image: torch.Tensor
    labels: torch.Tensor
    mask: torch.Tensor
    boxes: torch.Tensor
    box_labels: torch.Tensor
    meta: dict[str, Any]


def collate_samples(batch: Sequence[Sample]) -> dict[str, Any]:
    """Collate Samples into a batch.

    Images, labels and masks are stacked (they must share shapes: resize in a transform first);
    boxes, box labels and meta stay lists because their lengths differ per image.

    Raises:
        XrayfmError: The batch is empty or images of different sizes are mixed.
    """
    if not batch:
        raise XrayfmError("cannot collate an empty batch")
    out: dict[str, Any] = {}
    shapes = {tuple(s["image"].shape) for s in batch}
    if len(shapes) > 1:
        ids = [s.get("meta", {}).get("id") for s in batch]
        raise XrayfmError(
            f"images in a batch differ in shape {sorted(shapes)} (ids {ids}); resize them first, "
            "e.g. transform=xrayfm.data.transforms.Resize(224)"
        )
    out["image"] = torch.stack([s["image"] for s in batch])
    for key in ("labels", "mask"):
        present = [key in s for s in batch]
        if all(present):
            out[key] = torch.stack([s[key] for s in batch])
        elif any(present):
            raise XrayfmError(f"some samples in the batch have {key!r} and others do not")
    for key in ("boxes", "box_labels"):
        if any(key in s for s in batch):
            out[key] = [s.get(key) for s in batch]
    out["meta"] = [s.get("meta", {}) for s in batch]
    return out
