"""Batched heatmaps: one pass for a batch, each image for its own class, equal to one image at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from xrayfm.errors import XrayfmError
from xrayfm.explain import CAM_METHODS, class_activation_map, explain_batch
from xrayfm.explain.gradcam import cam_target
from xrayfm.models import create_model
from xrayfm.models.task_model import XrayModel
from xrayfm.tasks import TaskSpec

FINDINGS = TaskSpec("findings", "multilabel", ("a", "b", "c"))


def build(arch: str, size: int) -> XrayModel:
    torch.manual_seed(0)
    kw = {"img_size": size, "dynamic_img_size": True} if arch.startswith("eva") else {}
    model = XrayModel(create_model(arch, num_classes=0, **kw), [FINDINGS])
    for m in model.modules():  # batch-norm statistics that are not the identity, so eval mode matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module", params=[("resnet18", 64), ("eva_x_tiny_patch16", 48)], ids=["cnn", "vit"])
def model_and_images(request: pytest.FixtureRequest) -> tuple[XrayModel, torch.Tensor]:
    arch, size = request.param
    return build(arch, size), torch.rand(3, 1, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("method", list(CAM_METHODS))
def test_batched_cams_equal_one_by_one(model_and_images: tuple[XrayModel, torch.Tensor], method: str) -> None:
    model, x = model_and_images
    classes = [2, 0, 1]  # a different class per image
    maps, explained = class_activation_map(model, x, class_index=classes, method=method)
    assert explained == classes and maps.shape == (3, *x.shape[-2:])
    for i, k in enumerate(classes):
        single, _ = class_activation_map(model, x[i : i + 1], class_index=k, method=method)
        np.testing.assert_allclose(maps[i], single[0], atol=1e-4)
    if method != "eigencam":  # the class matters: another class gives another map
        other, _ = class_activation_map(model, x, class_index=[1, 2, 0], method=method)
        assert np.abs(other - maps).max() > 1e-2


def test_truncated_backward_gives_grad_cams_own_maps(model_and_images: tuple[XrayModel, torch.Tensor]) -> None:
    """Stopping the backward pass at the target layer changes nothing: grad-cam on the whole graph agrees."""
    model, x = model_and_images
    layer, reshape = cam_target(model.backbone, tuple(x.shape[-2:]))

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.inner(images)["findings"]

    with CAM_METHODS["gradcam"](model=Logits(), target_layers=[layer], reshape_transform=reshape) as cam:
        reference = cam(input_tensor=x, targets=[ClassifierOutputTarget(k) for k in (2, 0, 1)])
    ours, _ = class_activation_map(model, x, class_index=[2, 0, 1])
    np.testing.assert_allclose(ours, reference, atol=1e-4)
    assert all(p.requires_grad for p in model.parameters())  # the freeze is undone


def test_no_weight_gradient_is_computed_nor_cleared(model_and_images: tuple[XrayModel, torch.Tensor]) -> None:
    model, x = model_and_images
    model.zero_grad(set_to_none=True)
    class_activation_map(model, x, class_index=0)
    assert all(p.grad is None for p in model.parameters()) and all(p.requires_grad for p in model.parameters())
    head = next(model.heads["findings"].parameters())
    head.grad = torch.ones_like(head)  # a caller's training step in progress
    class_activation_map(model, x, class_index=1, method="layercam")
    assert torch.equal(head.grad, torch.ones_like(head))
    head.grad = None


def test_default_class_is_each_images_top_class_from_the_same_pass(
    model_and_images: tuple[XrayModel, torch.Tensor],
) -> None:
    model, x = model_and_images
    batch = explain_batch(model, x, method="gradcam++", task="findings")
    with torch.no_grad():
        logits = model(x)["findings"]
    torch.testing.assert_close(batch.logits, logits, atol=1e-5, rtol=1e-5)
    assert batch.classes == logits.argmax(1).tolist()
    maps, _ = class_activation_map(model, x, class_index=batch.classes, method="gradcam++")
    np.testing.assert_allclose(batch.maps, maps, atol=1e-5)
    eigen = explain_batch(model, x, method="eigencam")  # no target is evaluated: classes from the logits
    assert eigen.classes == batch.classes


def test_batched_attention_maps_equal_one_by_one() -> None:
    model = build("eva_x_tiny_patch16", 48)
    x = torch.rand(3, 1, 48, 48, generator=torch.Generator().manual_seed(2))
    for method in ("rollout", "attention"):
        batch = explain_batch(model, x, method=method, task="findings", point=(0.3, 0.7))
        assert batch.classes is None and batch.logits is not None and batch.logits.shape == (3, 3)
        for i in range(3):
            single = explain_batch(model, x[i : i + 1], method=method, point=(0.3, 0.7))
            assert single.logits is None
            np.testing.assert_allclose(batch.maps[i], single.maps[0], atol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(batch.logits, model(x)["findings"], atol=1e-5, rtol=1e-5)


def test_class_indices_are_checked() -> None:
    model, x = build("resnet18", 32), torch.rand(2, 1, 32, 32)
    with pytest.raises(XrayfmError, match="3 class indices for 2 images"):
        class_activation_map(model, x, class_index=[0, 1, 2])
    with pytest.raises(XrayfmError, match="class index 5 outside 0..2"):
        class_activation_map(model, x, class_index=[0, 5])
    with pytest.raises(XrayfmError, match="no task 'lungs'"):
        explain_batch(build("eva_x_tiny_patch16", 32), x, method="rollout", task="lungs")
