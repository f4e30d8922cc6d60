"""Class activation maps (Grad-CAM and its variants) for every xrayfm backbone.

The maps come from the ``grad-cam`` package; what xrayfm adds is the part every user otherwise
writes by hand: which layer to target and how to turn its output into a (N, C, h, w) map. A
ViT's last block is targeted through its first norm, with the prefix (class) tokens dropped
and the patch tokens laid back on their grid (non-square inputs included); a CNN's last stage
is used as it is; a Swin's NHWC stage output is permuted.

A batch of images is explained in one forward and backward pass, each image for its own class
(samples are independent in eval mode). The backward pass goes no further than it must: the
weights are frozen for the pass and the target layer's output is made a leaf, so no weight
gradient is computed and nothing before the target layer is differentiated; the maps are the
same as with a full backward pass. Without a class given, each image's class is its highest-
probability one, read from the same pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

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
from xrayfm.tasks import CLASSIFICATION_KINDS, probabilities

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
        return self.model(x, tasks=[self.task])[self.task]

    def train(self, mode: bool = True) -> _TaskLogits:
        """Only this wrapper's flag: :func:`cam_with_logits` puts the model in eval mode before grad-cam,
        which calls ``eval()`` on every use, would walk every module again."""
        self.training = mode
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Nothing to clear: the weights are frozen for the pass (:func:`_gradients_stop_at`), and
        gradients a caller's training left on them stay as they were."""


class _TopClass:
    """Grad-CAM target: the image's highest-probability class, read from the pass's own output."""

    def __init__(self, kind: str) -> None:
        self.kind, self.index = kind, -1

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        self.index = int(probabilities(self.kind, output.detach()[None].float()).argmax())
        return output[self.index]


@contextmanager
def _gradients_stop_at(model: nn.Module, layer: nn.Module | None) -> Iterator[None]:
    """For the ``with`` body, backward passes reach ``layer``'s output and no further.

    The weights are frozen (their flags restored afterwards) and ``layer``'s output is replaced by a
    detached copy that requires grad: the values are unchanged, the graph starts there. Without a
    layer nothing is differentiated at all.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)

    def as_leaf(_m: nn.Module, _i: object, out: object) -> object:
        return out.detach().requires_grad_(True) if isinstance(out, torch.Tensor) else None

    handle = None if layer is None else layer.register_forward_hook(as_leaf, prepend=True)  # before grad-cam's
    try:
        with torch.enable_grad():
            yield
    finally:
        if handle is not None:
            handle.remove()
        for p, flag in flags:
            p.requires_grad_(flag)


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
    class_index: int | Sequence[int] | None = None,
    method: str = "gradcam",
) -> tuple[np.ndarray, list[int]]:
    """Heatmaps (N, H, W) in [0, 1] at the input's size, for one class per image of a classification task.

    Args:
        model: A model with a classification head.
        images: Grey [0, 1] images (N, 1, H, W) as the model takes them.
        task: Classification task (default: the model's first).
        class_index: Class explained: one for every image, one per image, or None for each image's
            highest-probability class.
        method: One of :data:`CAM_METHODS`.

    Returns:
        The maps and the class index explained for each image.

    Raises:
        XrayfmError: Unknown method, no such classification task, a class index out of range or
            not one per image.
    """
    maps, classes, _ = cam_with_logits(model, images, task=task, class_index=class_index, method=method)
    return maps, classes


def cam_with_logits(
    model: XrayModel,
    images: torch.Tensor,
    *,
    task: str | None = None,
    class_index: int | Sequence[int] | None = None,
    method: str = "gradcam",
) -> tuple[np.ndarray, list[int], torch.Tensor]:
    """:func:`class_activation_map` and the task's logits (N, K) of the same forward pass."""
    if method not in CAM_METHODS:
        raise XrayfmError(f"unknown CAM method {method!r}; choose one of {sorted(CAM_METHODS)}")
    tasks = {t.name: t for t in model.tasks if t.kind in CLASSIFICATION_KINDS}
    if not tasks:
        raise XrayfmError("the model has no classification task to explain")
    task = task or next(iter(tasks))
    if task not in tasks:
        raise XrayfmError(f"no classification task {task!r}; the model has {sorted(tasks)}")
    n, k = images.shape[0], tasks[task].num_classes
    if class_index is None:
        targets: list = [_TopClass(tasks[task].kind) for _ in range(n)]
    else:
        chosen = [class_index] * n if isinstance(class_index, int) else [int(c) for c in class_index]
        if len(chosen) != n:
            raise XrayfmError(f"{len(chosen)} class indices for {n} images; give one, or one per image")
        if not all(0 <= c < k for c in chosen):
            raise XrayfmError(f"class index {[c for c in chosen if not 0 <= c < k][0]} outside 0..{k - 1}")
        targets = [ClassifierOutputTarget(c) for c in chosen]
    if any(m.training for m in model.modules()):
        model.eval()
    wrapped = _TaskLogits(model, task)
    layer, reshape = cam_target(model.backbone, tuple(images.shape[-2:]))
    cam_class = CAM_METHODS[method]
    with (
        cam_class(model=wrapped, target_layers=[layer], reshape_transform=reshape) as cam,
        _gradients_stop_at(model, layer if cam.uses_gradients else None),
    ):
        maps = cam(input_tensor=images, targets=targets)
        logits = cam.outputs.detach()
    if class_index is not None:
        classes = chosen
    elif cam.uses_gradients:
        classes = [t.index for t in targets]
    else:  # no target was evaluated (EigenCAM): the top class of the same logits
        classes = probabilities(tasks[task].kind, logits.float()).argmax(1).tolist()
    return np.asarray(maps, dtype=np.float32), classes, logits
