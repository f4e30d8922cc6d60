"""Checkable explanations: heatmap energy inside a lung mask, and the model-randomisation sanity test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from xrayfm.errors import XrayfmError
from xrayfm.explain import checks, explain_batch
from xrayfm.explain.checks import (
    backbone_blocks,
    energy_in_mask,
    lung_energy_summary,
    map_correlations,
    mask_fraction,
    randomisation_test,
)
from xrayfm.explain.heatmap import HeatmapBatch
from xrayfm.explain.lungs import lung_channels, read_lung_mask
from xrayfm.models import create_model
from xrayfm.models.task_model import XrayModel
from xrayfm.tasks import TaskSpec

FINDINGS = TaskSpec("findings", "multilabel", ("a", "b"))


def lungs_mask(h: int = 64, w: int = 64) -> np.ndarray:
    mask = np.zeros((h, w), dtype=bool)
    mask[8:56, 6:28] = mask[8:56, 36:58] = True
    return mask


def test_energy_all_inside_is_one_and_uniform_is_the_area_share() -> None:
    mask = lungs_mask()
    assert energy_in_mask(mask.astype(np.float32), mask) == pytest.approx(1.0)
    assert energy_in_mask((~mask).astype(np.float32), mask) == pytest.approx(0.0)
    uniform = np.full((64, 64), 0.3, np.float32)
    assert energy_in_mask(uniform, mask) == pytest.approx(mask_fraction(mask)) == pytest.approx(mask.mean())
    assert np.isnan(energy_in_mask(np.zeros((64, 64), np.float32), mask))  # no energy: no share


def test_energy_resizes_the_map_to_the_mask_and_drops_negative_and_ignored_pixels() -> None:
    left = np.zeros((128, 128), dtype=bool)
    left[:, :64] = True
    coarse = np.zeros((8, 8), np.float32)
    coarse[:, :4] = 1.0  # the left half, 16 px per cell
    assert energy_in_mask(coarse, left) > 0.95 and energy_in_mask(coarse, ~left) < 0.05
    heat = np.where(lungs_mask(), 1.0, -5.0).astype(np.float32)  # negatives count as 0
    assert energy_in_mask(heat, lungs_mask()) == pytest.approx(1.0)
    valid = np.ones((64, 64), dtype=bool)
    valid[:, 32:] = False  # the right half ignored
    uniform = np.ones((64, 64), np.float32)
    assert energy_in_mask(uniform, lungs_mask(), valid=valid) == pytest.approx(lungs_mask()[:, :32].mean())
    with pytest.raises(XrayfmError, match="2-D"):
        energy_in_mask(np.ones((1, 8, 8)), lungs_mask())


def test_summary_says_what_a_user_reads_and_warns_when_most_energy_is_outside() -> None:
    good = lung_energy_summary([0.8, 0.6], [0.3, 0.3])
    assert good["energy_in_lungs"] == pytest.approx(0.7) and good["ratio"] == pytest.approx(0.7 / 0.3)
    assert good["message"].startswith("70% of the heatmap's energy lies in the lungs, which cover 30%")
    assert good["warning"] is None and good["below_half"] == 0.0
    bad = lung_energy_summary([0.35, float("nan"), 0.0], [0.3, 0.3, 0.0])  # a flat map, a mask without lungs
    assert bad["images"] == 1 and bad["skipped"] == 2 and "shortcut" in bad["warning"] and bad["below_half"] == 1.0
    assert lung_energy_summary([0.0], [0.0])["energy_in_lungs"] is None


def test_lung_mask_files_and_class_names(tmp_path) -> None:
    Image.fromarray(np.where(lungs_mask(), 255, 0).astype(np.uint8)).save(tmp_path / "bw.png")
    inside, valid = read_lung_mask(tmp_path / "bw.png")  # black and white: 255 is lung
    assert (inside == lungs_mask()).all() and valid.all()
    labels = lungs_mask().astype(np.uint8)
    labels[:4] = 255
    Image.fromarray(labels).save(tmp_path / "labels.png")
    inside, valid = read_lung_mask(tmp_path / "labels.png")  # 0 / 1 / 255: 255 is "ignore"
    assert (inside == lungs_mask()).all() and not valid[:4].any() and valid[4:].all()
    assert lung_channels(("lungs", "heart")) == [0]
    assert lung_channels(("left_lung", "heart", "Right_Lung")) == [0, 2]
    assert lung_channels(("mask",), "mask") == [0]
    with pytest.raises(XrayfmError, match="--lung-class"):
        lung_channels(("heart", "mask"))


def vit() -> XrayModel:
    torch.manual_seed(0)
    return XrayModel(create_model("eva_x_tiny_patch16", num_classes=0, img_size=48), [FINDINGS]).eval()


def test_blocks_follow_timm_for_each_family() -> None:
    cnn = create_model("resnet18", num_classes=0)
    assert [n for n, _ in backbone_blocks(cnn)] == ["layer1", "layer2", "layer3", "layer4"]  # act1 has no weights
    assert [n for n, _ in backbone_blocks(vit().backbone)][-2:] == ["blocks.10", "blocks.11"]
    with pytest.raises(XrayfmError, match="feature_info"):
        backbone_blocks(torch.nn.Linear(2, 2))


def test_maps_of_the_trained_model_match_themselves_and_randomised_ones_do_not() -> None:
    model, images = vit(), torch.rand(2, 1, 48, 48)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    maps = explain_batch(model, images, method="gradcam", class_index=0).maps
    spearman, pearson = map_correlations(maps, explain_batch(model, images, method="gradcam", class_index=0).maps)
    assert spearman == pytest.approx([1.0, 1.0]) and pearson == pytest.approx([1.0, 1.0])
    result = randomisation_test(model, images, 0, blocks=2)
    names = [s["randomised"] for s in result["stages"]]
    assert names == [["heads.findings"], ["heads.findings", "backbone.blocks.11"],
                     ["heads.findings", "backbone.blocks.11", "backbone.blocks.10"]]  # fmt: skip
    assert result["classes"] == [0, 0] and result["final_spearman"] < 0.5 and result["warning"] is None
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # a copy was randomised
    assert randomisation_test(model, images, 0, blocks=2)["stages"] == result["stages"]  # seeded
    with pytest.raises(XrayfmError, match="0 or more"):
        randomisation_test(model, images, blocks=-1)


def test_maps_that_ignore_the_weights_are_flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    def image_edges(model, images, **_kw) -> HeatmapBatch:  # a "method" showing the image, not the model
        return HeatmapBatch(images[:, 0].numpy(), [0] * len(images), None)

    monkeypatch.setattr(checks, "explain_batch", image_edges)
    result = randomisation_test(vit(), torch.rand(2, 1, 48, 48), blocks=1)
    assert result["final_spearman"] == pytest.approx(1.0)
    assert "barely depend on the learned weights" in result["warning"]
