"""One entry point for every heatmap: a Grad-CAM family map, attention rollout, or raw attention.

:func:`explain_batch` explains a batch in one pass and also returns the explained task's logits
from that pass, so a server answering "probabilities and a heatmap" runs the model once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from xrayfm.explain.gradcam import cam_with_logits
from xrayfm.explain.rollout import attention_maps_and_logits, query_attention_of, rollout_of
from xrayfm.models.task_model import XrayModel

#: Methods whose maps do not depend on a class.
ATTENTION_METHODS = ("rollout", "attention")


@dataclass(frozen=True)
class HeatmapBatch:
    """Heatmaps of a batch and what the same pass computed besides.

    Attributes:
        maps: (N, H, W) float32 in [0, 1], at the input's size.
        classes: The class each map explains (None for the class-free attention methods).
        logits: The task's logits (N, K) from the same forward pass, or None when no task was
            asked of an attention method.
    """

    maps: np.ndarray
    classes: list[int] | None
    logits: torch.Tensor | None


def explain_batch(
    model: XrayModel,
    images: torch.Tensor,
    *,
    method: str,
    task: str | None = None,
    class_index: int | Sequence[int] | None = None,
    point: tuple[float, float] = (0.5, 0.5),
) -> HeatmapBatch:
    """Heatmaps of a batch by any of xrayfm's methods, in one forward (and, for a CAM, backward) pass.

    Args:
        model: The fine-tuned model.
        images: Grey [0, 1] images (N, 1, H, W) as the model takes them.
        method: ``rollout`` (attention rollout), ``attention`` (raw attention of the patch at
            ``point``) or one of :data:`~xrayfm.explain.gradcam.CAM_METHODS`.
        task: Classification task a CAM explains (default: the model's first) and whose logits
            come back; for the attention methods, logits come back only when it is named.
        class_index: Class a CAM explains: one for all images, one per image, or None for each
            image's highest-probability class.
        point: Query point (x, y) in [0, 1] image coordinates for ``attention``.

    Raises:
        XrayfmError: Unknown method, no such task, a class index out of range, a backbone
            without the attention maps the method needs, or a query point outside [0, 1].
    """
    if method not in ATTENTION_METHODS:
        maps, classes, logits = cam_with_logits(model, images, task=task, class_index=class_index, method=method)
        return HeatmapBatch(maps, classes, logits)
    recorded, logits = attention_maps_and_logits(model, images, task)
    size = tuple(images.shape[-2:])
    if method == "rollout":
        heat = rollout_of(recorded, model, size)
    else:
        heat = query_attention_of(recorded, model, size, point)
    return HeatmapBatch(heat.numpy(), None, logits)


def compute_heatmap(
    model: XrayModel,
    images: torch.Tensor,
    *,
    method: str,
    task: str | None = None,
    class_index: int | Sequence[int] | None = None,
    point: tuple[float, float] = (0.5, 0.5),
) -> np.ndarray:
    """Heatmaps (N, H, W) in [0, 1] at the input's size: :func:`explain_batch`'s maps alone.

    Raises:
        XrayfmError: As :func:`explain_batch`.
    """
    return explain_batch(model, images, method=method, task=task, class_index=class_index, point=point).maps
