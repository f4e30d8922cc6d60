"""Backbone + heads: feature pyramid, head shapes per backbone family, saving and loading."""

from __future__ import annotations

import json

import pytest
import torch

from xrayfm.errors import XrayfmError
from xrayfm.models import create_model
from xrayfm.models.features import FeaturePyramid, default_layers, features
from xrayfm.models.preprocess import Preprocess
from xrayfm.models.task_checkpoint import load_task_model, save_task_model
from xrayfm.models.task_model import XrayModel
from xrayfm.tasks import TaskSpec

FINDINGS = TaskSpec("findings", "multilabel", ("a", "b", "c"))
KIND = TaskSpec("kind", "multiclass", ("x", "y"))
LUNGS = TaskSpec("lungs", "segmentation", ("left", "right"))


def vit(size: int = 64, **kw):
    return create_model("eva_x_tiny_patch16", num_classes=0, img_size=size, **kw)


def test_default_layers_follow_evax_and_beit() -> None:
    assert default_layers(vit()) == [3, 5, 7, 11]
    assert default_layers(create_model("resnet18", num_classes=0)) == [0, 1, 2, 3, 4]


def test_features_api_returns_maps_at_the_layers_asked() -> None:
    maps = features(vit(), torch.rand(2, 3, 64, 64), layers=[1, 11])
    assert [tuple(m.shape) for m in maps] == [(2, 192, 4, 4)] * 2


def test_vit_pyramid_has_strides_4_to_32() -> None:
    bb = vit()
    pyr = FeaturePyramid(bb)
    final, maps = pyr(bb, torch.rand(2, 3, 64, 64))
    assert pyr.strides == [4, 8, 16, 32]
    assert [m.shape[-1] for m in maps] == [16, 8, 4, 2]
    assert final.shape == (2, 1 + 16, 192)  # class token + 4x4 patches


@pytest.mark.parametrize("arch", ["eva_x_tiny_patch16", "resnet18"])
def test_heads_output_shapes(arch: str) -> None:
    bb = create_model(arch, num_classes=0, **({"img_size": 64} if "eva" in arch else {}))
    model = XrayModel(bb, [FINDINGS, LUNGS])
    out = model(torch.rand(2, 1, 64, 64))
    assert out["findings"].shape == (2, 3)
    assert out["lungs"].shape == (2, 2, 64, 64)
    assert model.head_config()["decoder"] == ("upernet" if "eva" in arch else "unet")


def test_multiclass_head_and_non_square_input() -> None:
    model = XrayModel(vit(dynamic_img_size=True), [KIND])
    assert model(torch.rand(3, 1, 64, 96))["kind"].shape == (3, 2)


def test_model_normalises_inside_and_refuses_wrong_channels() -> None:
    model = XrayModel(vit(), [FINDINGS], preprocess=Preprocess(64, mean=0.5, std=0.25)).eval()
    x = torch.rand(1, 1, 64, 64)
    assert torch.allclose(model.normalize(x), ((x - 0.5) / 0.25).expand(-1, 3, -1, -1))
    with pytest.raises(XrayfmError, match="expected images"):
        model(torch.rand(1, 2, 64, 64))


def test_save_and_load_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    model = XrayModel(vit(), [FINDINGS, LUNGS], preprocess=Preprocess(64, mean=0.49, std=0.28)).eval()
    save_task_model(model, tmp_path / "model", arch="eva_x_tiny_patch16", model_kwargs={"img_size": 64}, info={"x": 1})
    loaded, meta = load_task_model(tmp_path)  # a run folder: the model sits in run/model
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert meta["tasks"][0]["classes"] == ["a", "b", "c"] and meta["preprocess"]["mean"] == pytest.approx(0.49)


def test_load_refuses_weights_of_another_architecture(tmp_path) -> None:
    model = XrayModel(vit(), [FINDINGS])
    save_task_model(model, tmp_path, arch="eva_x_tiny_patch16", model_kwargs={"img_size": 64}, info={})
    meta = json.loads((tmp_path / "model.json").read_text())
    meta["arch"] = "eva_x_small_patch16"
    (tmp_path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(XrayfmError, match="do not fit eva_x_small_patch16"):
        load_task_model(tmp_path)


def test_load_refuses_corrupt_weights_and_missing_folders(tmp_path) -> None:
    with pytest.raises(XrayfmError, match="no fine-tuned model"):
        load_task_model(tmp_path)
    save_task_model(
        XrayModel(vit(), [FINDINGS]), tmp_path, arch="eva_x_tiny_patch16", model_kwargs={"img_size": 64}, info={}
    )
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(XrayfmError, match="cannot read weights"):
        load_task_model(tmp_path)


@pytest.mark.parametrize("arch", ["eva_x_tiny_patch16", "resnet18"])
def test_detection_head_trains_and_predicts_on_both_backbone_families(arch: str, tmp_path) -> None:
    lesions = TaskSpec("lesions", "detection", ("nodule", "mass"))
    kw = {"img_size": 64} if "eva" in arch else {}
    model = XrayModel(create_model(arch, num_classes=0, **kw), [FINDINGS, lesions])
    targets = {"lesions": [{"boxes": torch.tensor([[4.0, 4.0, 30.0, 40.0]]), "labels": torch.tensor([1])},
                           {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]}  # fmt: skip
    losses = model.train()(torch.rand(2, 1, 64, 64), targets)["lesions"]
    assert {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"} <= set(losses)
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, 64, 64))
    assert out["findings"].shape == (2, 3) and len(out["lesions"]) == 2
    assert out["lesions"][0]["boxes"].shape[1] == 4 and (out["lesions"][0]["labels"] < 2).all()
    save_task_model(model, tmp_path, arch=arch, model_kwargs=kw, info={})
    loaded, _ = load_task_model(tmp_path)
    assert isinstance(loaded.heads["lesions"], type(model.heads["lesions"]))


@pytest.mark.parametrize(
    "arch, kw, size",
    [("resnet18", {}, 64), ("swin_tiny_patch4_window7_224", {"img_size": 224}, 224), ("convnext_atto", {}, 64)],
)
def test_every_head_on_cnn_and_hierarchical_backbones(arch: str, kw: dict, size: int) -> None:
    tasks = [FINDINGS, LUNGS, TaskSpec("lesions", "detection", ("nodule",))]
    model = XrayModel(create_model(arch, num_classes=0, **kw), tasks).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 1, size, size))
    assert out["findings"].shape == (1, 3) and out["lungs"].shape == (1, 2, size, size)
    assert len(out["lesions"]) == 1 and model.pyramid.strides[-4:] == [4, 8, 16, 32]
    assert model.head_config()["decoder"] == "unet"


def test_head_init_scale_shrinks_the_new_classifier_as_evax_does() -> None:
    from xrayfm.models.heads import ClassificationHead

    torch.manual_seed(0)
    plain = ClassificationHead(384, 14)
    torch.manual_seed(0)
    scaled = ClassificationHead(384, 14, init_scale=0.001)  # hustvl/EVA-X models_eva.py:478, 558-560
    assert torch.allclose(scaled.fc.weight, plain.fc.weight * 0.001) and not scaled.fc.bias.any()
    assert 1e-5 < float(scaled.fc.weight.detach().std()) < 3e-5
    model = XrayModel(vit(), [FINDINGS], head_init_scale=0.001)
    assert float(model.heads["findings"].fc.weight.abs().max()) < 1e-4


@pytest.mark.parametrize("arch", ["eva_x_tiny_patch16", "eva_x_small_patch16"])
@pytest.mark.parametrize("size", [224, pytest.param(512, marks=pytest.mark.slow)])
def test_last_feature_upernet_as_evax_segmentation(arch: str, size: int) -> None:
    bb = create_model(arch, num_classes=0, img_size=size)
    model = XrayModel(bb, [LUNGS], decoder_dropout=0.1).eval()
    assert model.pyramid.layers == [11] and model.pyramid.strides == [4, 8, 16, 32]
    assert model.heads["lungs"].kind == "upernet" and model.heads["lungs"].dropout.p == 0.1
    with torch.no_grad():
        _, maps = model.pyramid(bb, torch.rand(1, 3, size, size))
        out = model(torch.rand(1, 1, size, size))["lungs"]
    assert [m.shape[-1] for m in maps] == [size // 4, size // 8, size // 16, size // 32]
    assert out.shape == (1, 2, size, size)
    assert model.head_config()["layers"] == [11]


def test_last_feature_levels_come_from_one_block_and_the_pyramid_option_is_unchanged(tmp_path) -> None:
    from xrayfm.models.features import dense_layers

    bb = vit()
    assert dense_layers(bb, "last") == [11] and dense_layers(bb, "pyramid") == [3, 5, 7, 11]
    assert dense_layers(create_model("resnet18", num_classes=0), "last") == [0, 1, 2, 3, 4]
    with pytest.raises(XrayfmError, match="unknown feature mode"):
        dense_layers(bb, "middle")
    x = torch.rand(2, 3, 64, 64)
    last = FeaturePyramid(bb, [11]).eval()
    (block,) = features(bb, x, layers=[11])
    with torch.no_grad():
        _, maps = last(bb, x)
        assert torch.allclose(maps[2], block) and torch.allclose(maps[3], torch.nn.functional.max_pool2d(block, 2))
    pyramid = XrayModel(bb, [LUNGS], features="pyramid")
    assert pyramid.pyramid.layers == [3, 5, 7, 11] and len(pyramid.pyramid.adapters) == 4
    save_task_model(pyramid, tmp_path / "m", arch="eva_x_tiny_patch16", model_kwargs={"img_size": 64}, info={})
    loaded, _ = load_task_model(tmp_path / "m")  # a saved model reloads with the layers it trained with
    assert loaded.pyramid.layers == [3, 5, 7, 11]
