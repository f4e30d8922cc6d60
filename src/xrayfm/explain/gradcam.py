"""Class activation maps (Grad-CAM and its variants) for every xrayfm backbone.

The maps come from the ``grad-cam`` package; what xrayfm adds is the part every user otherwise
writes by hand: which layer to target and how to turn its output into a (N, C, h, w) map. A
ViT's last block is targeted through its first norm, with the prefix (class) tokens dropped
and the patch tokens laid back on their grid (non-square inputs included); a CNN's last stage
is used as it is; a Swin's NHWC stage output is permuted.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from pytorch_grad_cam import (
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from xrayfm.errors import XrayfmError
from xrayfm.models.features import is_plain_vit
from xrayfm.models.task_model import XrayModel
from xrayfm.tasks import CLASSIFICATION_KINDS

CAM_METHODS: dict[str, type] = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "hirescam": HiResCAM,
    "layercam": LayerCAM,
    "eigencam": EigenCAM,
}


class _TaskLogits(nn.Module):
    """The logits of one classification task (grad-cam wants a tensor-valued model)."""

    def __init__(self, model: XrayModel, task: str) -> None:
        super().__init__()
        self.model, self.task = model, task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[self.task]


def cam_target(backbone: nn.Module, image_size: tuple[int, int]) -> tuple[nn.Module, Callable | None]:
    """The layer Grad-CAM hooks and the function reshaping its output to (N, C, h, w)."""
    if is_plain_vit(backbone):
        prefix = getattr(backbone, "num_prefix_tokens", 0)
        h, w = backbone.patch_embed.dynamic_feat_size(image_size)

        def tokens_to_map(t: torch.Tensor) -> torch.Tensor:
            grid = t[:, prefix:, :]
            return grid.reshape(t.shape[0], h, w, t.shape[-1]).permute(0, 3, 1, 2)

        return backbone.blocks[-1].norm1, tokens_to_map
    info = getattr(backbone, "feature_info", None)
    if not info:
        raise XrayfmError(f"{type(backbone).__name__}: no feature_info to choose a Grad-CAM layer from")
    layer = backbone.get_submodule(info[-1]["module"])
    if "swin" in type(backbone).__name__.lower():
        return layer, lambda t: t.permute(0, 3, 1, 2)
    return layer, None


def class_activation_map(
    model: XrayModel,
    images: torch.Tensor,
    *,
    task: str | None = None,
    class_index: int | None = None,
    method: str = "gradcam",
) -> tuple[np.ndarray, list[int]]:
    """Heatmaps (N, H, W) in [0, 1] at the input's size, for one class of a classification task.

    Args:
        model: A model with a classification head.
        images: Grey [0, 1] images (N, 1, H, W) as the model takes them.
        task: Classification task (default: the model's first).
        class_index: Class explained (default: each image's highest-scoring class).
        method: One of :data:`CAM_METHODS`.

    Returns:
        The maps and the class index explained for each image.

    Raises:
        XrayfmError: Unknown method, or no such classification task.
    """
    if method not in CAM_METHODS:
        raise XrayfmError(f"unknown CAM method {method!r}; choose one of {sorted(CAM_METHODS)}")
    tasks = {t.name: t for t in model.tasks if t.kind in CLASSIFICATION_KINDS}
    if not tasks:
        raise XrayfmError("the model has no classification task to explain")
    task = task or next(iter(tasks))
    if task not in tasks:
        raise XrayfmError(f"no classification task {task!r}; the model has {sorted(tasks)}")
    model.eval()
    wrapped = _TaskLogits(model, task)
    if class_index is None:
        with torch.no_grad():
            classes = wrapped(images).argmax(1).tolist()
    else:
        if not 0 <= class_index < tasks[task].num_classes:
            raise XrayfmError(f"class index {class_index} outside 0..{tasks[task].num_classes - 1}")
        classes = [class_index] * images.shape[0]
    layer, reshape = cam_target(model.backbone, tuple(images.shape[-2:]))
    with CAM_METHODS[method](model=wrapped, target_layers=[layer], reshape_transform=reshape) as cam:
        maps = cam(input_tensor=images, targets=[ClassifierOutputTarget(c) for c in classes])
    return np.asarray(maps, dtype=np.float32), classes
