"""Deformable DETR localizer (transformers' encoder / decoder / matcher / loss) on xrayfm's feature pyramid."""

from __future__ import annotations

import pytest
import torch

from xrayfm.errors import XrayfmError
from xrayfm.evaluate.box_metrics import detection_metrics
from xrayfm.models import create_model
from xrayfm.models.features import FeaturePyramid
from xrayfm.models.heads.deformable_detr import DeformableDetrHead, DeformableEncoder, detr_config

TINY = {
    "d_model": 32, "encoder_layers": 1, "decoder_layers": 2, "encoder_attention_heads": 2,
    "decoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "num_queries": 8,
}  # fmt: skip
SIZE = 64


def _parts(num_classes: int = 2) -> tuple[torch.nn.Module, FeaturePyramid, DeformableEncoder, DeformableDetrHead]:
    torch.manual_seed(0)
    backbone = create_model("resnet18", num_classes=0)
    pyramid = FeaturePyramid(backbone)
    config = detr_config(TINY)
    return backbone, pyramid, DeformableEncoder(pyramid.out_channels, config), DeformableDetrHead(config, num_classes)


def _targets() -> list[dict[str, torch.Tensor]]:
    return [
        {"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[20.0, 30.0, 60.0, 50.0], [2.0, 4.0, 12.0, 20.0]]), "labels": torch.tensor([0, 1])},
    ]


def test_forward_backward_on_cpu_reaches_every_weight_and_unannotated_images_are_skipped() -> None:
    backbone, pyramid, encoder, head = _parts()
    images = torch.rand(3, 3, SIZE, SIZE)
    _, maps = pyramid(backbone, images)
    memory = encoder(maps)
    # strides 8, 16, 32 of the pyramid plus one extra stride-2 level
    assert memory.spatial_shapes_list == [(8, 8), (4, 4), (2, 2), (1, 1)] and memory.hidden.shape == (3, 85, 32)
    losses = head(memory, (SIZE, SIZE), [*_targets(), None])
    assert set(losses) == {"loss_detr"} and torch.isfinite(losses["loss_detr"]) and losses["loss_detr"] > 0
    losses["loss_detr"].backward()
    assert all(p.grad is not None for p in [*encoder.parameters(), *head.parameters(), *backbone.parameters()])
    only_two = head(memory.take(torch.tensor([0, 1])), (SIZE, SIZE), _targets())["loss_detr"]
    assert torch.allclose(losses["loss_detr"], only_two)  # the unannotated third image adds nothing


def test_a_batch_without_annotations_gives_a_zero_loss_that_still_reaches_the_head() -> None:
    backbone, pyramid, encoder, head = _parts()
    loss = head(encoder(pyramid(backbone, torch.rand(2, 3, SIZE, SIZE))[1]), (SIZE, SIZE), [None, None])
    (total,) = loss.values()
    total.backward()
    assert total.item() == 0.0 and all(p.grad is not None for p in head.parameters())


@pytest.mark.slow
def test_loss_decreases_when_overfitting_two_images() -> None:
    backbone, pyramid, encoder, head = _parts()
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():  # a frozen backbone keeps the test fast; encoder and decoder learn
        maps = pyramid(backbone.eval(), images)[1]
    optimizer = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=1e-3)
    losses = []
    for _ in range(30):
        loss = head(encoder(maps), (SIZE, SIZE), _targets())["loss_detr"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_eval_output_is_xyxy_pixels_in_the_image_and_box_metrics_score_it() -> None:
    backbone, pyramid, encoder, head = _parts()
    for m in (backbone, encoder, head):
        m.eval()
    with torch.no_grad():
        preds = head(encoder(pyramid(backbone, torch.rand(2, 3, SIZE, SIZE))[1]), (SIZE, SIZE))
    assert len(preds) == 2
    for p in preds:
        assert set(p) == {"boxes", "scores", "labels"}
        assert p["boxes"].shape == (8 * 2, 4)  # top-k over queries x classes
        assert (p["boxes"] >= 0).all() and (p["boxes"] <= SIZE).all()
        assert (p["boxes"][:, 2:] >= p["boxes"][:, :2]).all()
        assert p["labels"].min() >= 0 and p["labels"].max() <= 1
        assert (p["scores"][:-1] >= p["scores"][1:]).all()
    metrics = detection_metrics(preds, _targets(), ["a", "b"])
    assert metrics["n"] == 2 and 0.0 <= metrics["map"] <= metrics["map_50"] <= 1.0
    boxes = preds[0]["boxes"][:1]
    hit = [{"boxes": boxes, "scores": torch.ones(1), "labels": torch.tensor([0])}]
    assert detection_metrics(hit, [{"boxes": boxes, "labels": torch.tensor([0])}], ["a", "b"])["map_50"] == 1.0


def test_settings_are_checked() -> None:
    with pytest.raises(XrayfmError, match="unknown Deformable DETR settings"):
        detr_config({"d_modle": 32})
    with pytest.raises(XrayfmError, match="multiple of 32"):
        detr_config({"d_model": 48})
    with pytest.raises(XrayfmError, match="two_stage is not supported"):
        detr_config({"two_stage": True})


def _memory(refine: bool):  # noqa: ANN202
    torch.manual_seed(0)
    backbone = create_model("resnet18", num_classes=0)
    pyramid = FeaturePyramid(backbone)
    config = detr_config({**TINY, "decoder_layers": 3, "with_box_refine": refine})
    encoder, head = DeformableEncoder(pyramid.out_channels, config), DeformableDetrHead(config, 2)
    with torch.no_grad():
        torch.nn.init.normal_(head.bbox_embed.layers[-1].weight, std=0.05)  # box deltas that move the references
    return encoder(pyramid(backbone, torch.rand(2, 3, SIZE, SIZE))[1]), head


def _decoder_references(head: DeformableDetrHead, memory) -> torch.Tensor:  # noqa: ANN001
    """The reference points the decoder ended each layer with, (layers, N, Q, 2 or 4)."""
    seen = {}
    hook = head.decoder.register_forward_hook(lambda m, i, out: seen.update(refs=out.intermediate_reference_points))
    head.predict(memory)
    hook.remove()
    return seen["refs"].transpose(0, 1)


def test_box_refinement_moves_each_layers_boxes_from_the_layer_before() -> None:
    memory, head = _memory(refine=True)
    logits, boxes = head.predict(memory)
    refs = _decoder_references(head, memory)
    assert refs.shape[-1] == 4 and not torch.allclose(refs[0], refs[1])  # the references move layer by layer
    torch.testing.assert_close(boxes, refs)  # each layer's boxes are the references the next layer starts from
    assert not any("decoder.bbox_embed" in k for k in head.state_dict())  # the shared box head is stored once
    loss = head(memory, (SIZE, SIZE), _targets())["loss_detr"]
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in head.bbox_embed.parameters())


def test_without_refinement_every_layer_predicts_around_the_initial_reference() -> None:
    memory, head = _memory(refine=False)
    refs = _decoder_references(head, memory)
    assert refs.shape[-1] == 2 and torch.equal(refs[0], refs[-1])  # the decoder never moves them
    _, boxes = head.predict(memory)
    assert boxes.shape[:2] == (3, 2) and not torch.allclose(boxes[0], boxes[1])  # each layer's own delta


@pytest.mark.parametrize("arch", ["resnet18", "swin_tiny_patch4_window7_224"])
def test_one_small_image_trains_and_predicts_with_a_one_by_one_coarsest_level(arch: str) -> None:
    """64 px, batch 1: the extra level (and Swin's stride-32 map) is 1x1, a single value per GroupNorm group."""
    from xrayfm.pretrain.multitask_model import MultiTaskModel
    from xrayfm.tasks import TaskSpec

    torch.manual_seed(0)
    kwargs = {"img_size": SIZE, "window_size": 2, "embed_dim": 32, "depths": (1, 1, 1, 1)} if "swin" in arch else {}
    model = MultiTaskModel(create_model(arch, num_classes=0, **kwargs),
                           {"a": [TaskSpec("d", "detection", ("nodule",))]}, detr=TINY)  # fmt: skip
    image = torch.rand(1, 1, SIZE, SIZE)
    assert model.loc_encoder(model.pyramid(model.backbone, model.normalize(image))[1]).spatial_shapes_list[-1] == (1, 1)
    loss = model.train()(image, "a/d", [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([0])}])
    total = sum(loss.prediction.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.loc_encoder.input_proj[-1][0].weight.grad is not None
    with torch.no_grad():
        boxes = model.eval()(image, "a/d").prediction
    assert len(boxes) == 1 and boxes[0]["boxes"].shape[1] == 4


def test_input_norm_is_group_norm_and_a_single_value_group_gives_the_bias() -> None:
    from xrayfm.models.heads.deformable_detr import InputNorm

    norm, reference = InputNorm(32, 64), torch.nn.GroupNorm(32, 64)
    torch.nn.init.normal_(norm.bias), torch.nn.init.normal_(norm.weight)
    reference.load_state_dict(norm.state_dict())
    x = torch.randn(2, 64, 3, 3)
    assert torch.allclose(norm(x), reference(x))
    single = InputNorm(32, 32)
    torch.nn.init.normal_(single.bias)
    assert torch.allclose(single(torch.randn(1, 32, 1, 1)).flatten(), single.bias, atol=1e-3)
