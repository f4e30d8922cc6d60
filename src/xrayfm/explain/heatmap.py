"""One entry point for every heatmap: a Grad-CAM family map, attention rollout, or raw attention."""

from __future__ import annotations

import numpy as np
import torch

from xrayfm.explain.gradcam import class_activation_map
from xrayfm.explain.rollout import attention_rollout, query_attention
from xrayfm.models.task_model import XrayModel


def compute_heatmap(
    model: XrayModel,
    images: torch.Tensor,
    *,
    method: str,
    task: str | None = None,
    class_index: int | None = None,
    point: tuple[float, float] = (0.5, 0.5),
) -> np.ndarray:
    """Heatmaps (N, H, W) in [0, 1] at the input's size, by any of xrayfm's methods.

    Args:
        model: The fine-tuned model.
        images: Grey [0, 1] images (N, 1, H, W) as the model takes them.
        method: ``rollout`` (attention rollout), ``attention`` (raw attention of the patch at
            ``point``) or one of :data:`~xrayfm.explain.gradcam.CAM_METHODS`.
        task: Classification task a CAM explains (default: the model's first).
        class_index: Class a CAM explains (default: each image's highest-scoring class).
        point: Query point (x, y) in [0, 1] image coordinates for ``attention``.

    Returns:
        The maps as a float array.

    Raises:
        XrayfmError: Unknown method, no such classification task, a backbone without the
            attention maps the method needs, or a query point outside [0, 1].
    """
    if method == "rollout":
        return attention_rollout(model, images).numpy()
    if method == "attention":
        return query_attention(model, images, point).numpy()
    return class_activation_map(model, images, task=task, class_index=class_index, method=method)[0]
