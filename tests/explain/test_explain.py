"""Heatmaps: Grad-CAM on every backbone family, attention rollout from timm's own softmax,
overlays, and heatmap -> box localization."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xrayfm.errors import XrayfmError
from xrayfm.explain import (
    attention_maps,
    attention_rollout,
    class_activation_map,
    overlay_heatmap,
    query_attention,
)
from xrayfm.explain.localization import heatmap_boxes, localization_scores
from xrayfm.models import create_model
from xrayfm.models.task_model import XrayModel
from xrayfm.tasks import TaskSpec

FINDINGS = TaskSpec("findings", "multilabel", ("a", "b"))


def vit_model() -> XrayModel:
    torch.manual_seed(0)
    return XrayModel(create_model("eva_x_tiny_patch16", num_classes=0, img_size=64, dynamic_img_size=True), [FINDINGS])


@pytest.mark.parametrize(
    "arch, size", [("eva_x_tiny_patch16", 64), ("resnet18", 64), ("swin_tiny_patch4_window7_224", 224)]
)
def test_cam_maps_at_input_size(arch: str, size: int) -> None:
    kw = {"img_size": size} if arch.startswith(("eva", "swin")) else {}
    model = XrayModel(create_model(arch, num_classes=0, **kw), [FINDINGS])
    maps, classes = class_activation_map(model, torch.rand(2, 1, size, size), class_index=1)
    assert maps.shape == (2, size, size) and classes == [1, 1]
    assert maps.min() >= 0 and maps.max() <= 1 + 1e-6


def test_vit_cam_on_a_non_square_input_and_method_choice() -> None:
    maps, _ = class_activation_map(vit_model(), torch.rand(1, 1, 64, 96), method="gradcam++")
    assert maps.shape == (1, 64, 96)
    with pytest.raises(XrayfmError, match="unknown CAM method"):
        class_activation_map(vit_model(), torch.rand(1, 1, 64, 64), method="magic")
    with pytest.raises(XrayfmError, match="no classification task 'lungs'"):
        class_activation_map(vit_model(), torch.rand(1, 1, 64, 64), task="lungs")


def test_attention_probabilities_are_timms_and_fused_path_is_restored() -> None:
    model = vit_model()
    maps = attention_maps(model, torch.rand(2, 1, 64, 64))
    assert len(maps) == 12 and maps[0].shape == (2, 3, 17, 17)
    assert torch.allclose(maps[3].sum(-1), torch.ones(2, 3, 17))  # softmax rows
    assert all(blk.attn.fused_attn for blk in model.backbone.blocks)
    # the explicit path gives the same output as the fused one
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        fused = model(x)["findings"]
        for blk in model.backbone.blocks:
            blk.attn.fused_attn = False
        explicit = model(x)["findings"]
    assert torch.allclose(fused, explicit, atol=1e-5)


def test_rollout_and_query_maps() -> None:
    model = vit_model()
    x = torch.rand(1, 1, 64, 96)
    roll = attention_rollout(model, x)
    assert roll.shape == (1, 64, 96) and float(roll.max()) == pytest.approx(1.0)
    q = query_attention(model, x, (0.1, 0.9))
    assert q.shape == (1, 64, 96)
    with pytest.raises(XrayfmError, match="must be"):
        query_attention(model, x, (1.5, 0.1))
    cnn = XrayModel(create_model("resnet18", num_classes=0), [FINDINGS])
    with pytest.raises(XrayfmError, match="need a ViT"):
        attention_rollout(cnn, torch.rand(1, 1, 64, 64))


def test_rollout_with_uniform_attention_is_flat() -> None:
    model = vit_model()
    for blk in model.backbone.blocks:  # zero queries -> uniform softmax everywhere
        torch.nn.init.zeros_(blk.attn.qkv.weight)
        blk.attn.q_bias.data.zero_()
    roll = attention_rollout(model, torch.rand(1, 1, 64, 64))
    assert float(roll.max() - roll.min()) < 1e-4  # no structure to show
    raw = attention_maps(model, torch.rand(1, 1, 64, 64))[0]
    assert torch.allclose(raw, torch.full_like(raw, 1 / 17), atol=1e-6)


def test_overlay_blends_and_checks_input() -> None:
    image = np.zeros((20, 30), np.float32)
    heat = np.zeros((10, 15), np.float32)
    heat[0, 0] = 1.0
    out = overlay_heatmap(image, heat, alpha=0.5)
    assert out.size == (30, 20) and out.mode == "RGB"
    px = np.asarray(out).astype(int)
    assert px[0, 0, 0] > px[0, 0, 2] and px[19, 29, 2] > px[19, 29, 0]  # hot = red end of jet, cold = blue
    with pytest.raises(XrayfmError, match="alpha"):
        overlay_heatmap(image, heat, alpha=2)


def test_heatmap_boxes_and_threshold_search() -> None:
    heat = np.zeros((50, 50), np.float32)
    heat[10:20, 10:30] = 1.0  # the true finding
    heat[40:45, 40:45] = 0.4  # a weaker blob
    boxes, scores = heatmap_boxes(heat, 0.3)
    assert boxes.tolist() == [[10, 10, 30, 20], [40, 40, 45, 45]] and scores.tolist() == pytest.approx([1.0, 0.4])
    assert heatmap_boxes(heat, 0.5)[0].tolist() == [[10, 10, 30, 20]]
    result = localization_scores([heat], [np.array([[10, 10, 30, 20]])], thresholds=(0.3, 0.5))
    assert result["best"]["accuracy"]["iou_0.5"] == 1.0
    assert result["per_threshold"]["0.5"]["ap_50"] == pytest.approx(1.0)
    missed = localization_scores([heat], [np.array([[0, 30, 8, 48]])], thresholds=(0.5,))
    assert missed["best"]["accuracy"]["iou_0.1"] == 0.0


def test_cli_method_names_match_the_library() -> None:
    from xrayfm.cli.explain import CAM_NAMES
    from xrayfm.explain.gradcam import CAM_METHODS

    assert tuple(CAM_METHODS) == CAM_NAMES
