"""Foundation X with the Deformable DETR localizer: one shared encoder, a decoder per dataset, lock, consistency."""

from __future__ import annotations

import pytest
import torch

from xrayfm.errors import XrayfmError
from xrayfm.models import create_model
from xrayfm.models.heads import DetectionHead
from xrayfm.models.heads.deformable_detr import DeformableDetrHead, DeformableEncoder
from xrayfm.pretrain.cyclic_schedule import lock, release
from xrayfm.pretrain.multitask import MultiTaskObjective
from xrayfm.pretrain.multitask_model import MultiTaskModel
from xrayfm.pretrain.multitask_recipe import RecipeError, parse_recipe
from xrayfm.tasks import TaskSpec

TINY = {
    "d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2,
    "decoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "num_queries": 6,
}  # fmt: skip
TASKS = {
    "a": [TaskSpec("f", "multilabel", ("x", "y")), TaskSpec("d", "detection", ("nodule",))],
    "b": [TaskSpec("d", "detection", ("ptx", "mass"))],
}


def _model(**kwargs) -> MultiTaskModel:
    torch.manual_seed(0)
    return MultiTaskModel(create_model("resnet18", num_classes=0), TASKS, detr=TINY, **kwargs)


def _batch(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.rand(2, 1, 64, 64, generator=g),
        "boxes": [torch.tensor([[8.0, 8.0, 40.0, 40.0]]), torch.zeros(0, 4)],
        "box_labels": [torch.tensor([0]), torch.zeros(0, dtype=torch.long)],
        "meta": [{}, {}],
    }


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    return {k for k, v in module.state_dict().items() if not torch.equal(before[k], v)}


def test_detection_datasets_share_one_encoder_outside_the_heads_and_have_their_own_decoders() -> None:
    model = _model()
    assert model.localizer == "deformable_detr" and isinstance(model.loc_encoder, DeformableEncoder)
    assert model.shared_modules()["loc_encoder"] is model.loc_encoder
    da, db = model.head("a/d"), model.head("b/d")
    assert isinstance(da, DeformableDetrHead) and isinstance(db, DeformableDetrHead) and da.decoder is not db.decoder
    assert da.class_embed.out_features == 1 and db.class_embed.out_features == 2
    assert not any(isinstance(m, DeformableEncoder) for m in model.heads.modules())
    assert model.loc_encoder.config.d_model == 32 and len(da.decoder.layers) == 1
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, 64, 64), "b/d")
    assert set(out.features) == {"pooled", "pyramid", "loc_encoder"}
    assert out.features["loc_encoder"].shape[:2] == (2, 32)
    assert len(out.prediction) == 2 and {"boxes", "scores", "labels"} <= set(out.prediction[0])


def test_a_detection_batch_trains_the_shared_encoder_and_only_its_own_decoder() -> None:
    objective = MultiTaskObjective(_model())
    objective.train()
    losses = objective.losses(_batch(1), "b/d")
    assert torch.isfinite(losses["task"]) and losses["consistency"].requires_grad
    losses["loss"].backward()
    model = objective.model
    assert all(p.grad is not None for p in model.loc_encoder.parameters())
    assert all(p.grad is not None for p in model.head("b/d").parameters())
    assert all(p.grad is None for p in model.head("a/d").parameters())
    assert all(p.grad is None for p in objective.teacher.parameters())


def test_consistency_alone_reaches_the_shared_encoder() -> None:
    objective = MultiTaskObjective(_model(), consistency_weight=1.0)
    objective.train()
    with torch.no_grad():  # make the student differ from its teacher
        for p in objective.model.loc_encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    objective(_batch(1), "a/d").backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in objective.model.loc_encoder.parameters())


def test_a_locked_detection_unit_trains_only_its_decoder_and_release_trains_the_encoder_again() -> None:
    model = _model()
    objective = MultiTaskObjective(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    objective.train()
    optimizer.zero_grad(set_to_none=False)
    objective(_batch(1), "a/d").backward()  # every shared weight gets a grad and Adam state
    optimizer.step()
    lock(model, "b/d")
    objective.train()
    assert not model.loc_encoder.training and not model.backbone.training and model.head("b/d").training
    assert all(not p.requires_grad and p.grad is None for p in model.loc_encoder.parameters())
    encoder, backbone, other, own = (_state(m) for m in (model.loc_encoder, model.backbone, model.heads["a"],
                                                          model.head("b/d")))  # fmt: skip
    for seed in (2, 3):
        optimizer.zero_grad()
        objective(_batch(seed), "b/d").backward()
        optimizer.step()
    assert _changed(encoder, model.loc_encoder) == set() and _changed(backbone, model.backbone) == set()
    assert _changed(other, model.heads["a"]) == set()
    assert _changed(own, model.head("b/d"))
    release(model)
    objective.train()
    optimizer.zero_grad()
    objective(_batch(4), "b/d").backward()
    optimizer.step()
    assert _changed(encoder, model.loc_encoder)


def test_the_recipe_picks_the_localizer_and_faster_rcnn_keeps_a_detector_per_dataset() -> None:
    data = {"datasets": {"n": {"adapter": "a", "root": "/r", "tasks": {"d": {"kind": "detection", "classes": ["x"]}}}}}
    assert parse_recipe(data).localizer == "deformable_detr"
    recipe = parse_recipe({**data, "localizer": "faster_rcnn"})
    model = MultiTaskModel.from_recipe(recipe, create_model("resnet18", num_classes=0))
    assert model.loc_encoder is None and isinstance(model.head("n/d"), DetectionHead)
    assert "loc_encoder" not in model.shared_modules()
    with pytest.raises(RecipeError, match="localizer"):
        parse_recipe({**data, "localizer": "dino"})
    with pytest.raises(XrayfmError, match="unknown localizer"):
        _model(localizer="yolo")


@pytest.mark.parametrize("localizer", ["deformable_detr", "faster_rcnn"])
def test_a_saved_model_reloads_with_its_localizer_and_detr_settings(localizer: str, tmp_path) -> None:
    from copy import deepcopy

    from xrayfm.pretrain.multitask_export import load_multitask_model, save_multitask_model

    model = _model(localizer=localizer).eval()
    save_multitask_model(model, deepcopy(model), tmp_path, arch="resnet18", model_kwargs={},
                         preprocess=model.preprocess, info={})  # fmt: skip
    loaded, meta = load_multitask_model(tmp_path)
    assert loaded.localizer == meta["localizer"] == localizer
    if localizer == "deformable_detr":
        assert meta["detr"] == TINY and loaded.loc_encoder.config.d_model == 32
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        a, b = model(x, "a/f"), loaded(x, "a/f")
    torch.testing.assert_close(a.prediction, b.prediction)


def test_the_recipe_sizes_detr_and_a_bad_setting_names_the_key() -> None:
    base = {"datasets": {"a": {"adapter": "phantom", "root": "r", "tasks": {"d": {"kind": "detection",
                                                                                "classes": ["nodule"]}}}}}  # fmt: skip
    recipe = parse_recipe({**base, "detr": TINY})
    model = MultiTaskModel.from_recipe(recipe, create_model("resnet18", num_classes=0))
    assert model.loc_encoder.config.d_model == 32 and model.head("a/d").class_embed.out_features == 1
    with pytest.raises(RecipeError, match=r"detr: unknown Deformable DETR settings \['d_modle'\]"):
        parse_recipe({**base, "detr": {"d_modle": 32}})


def test_box_refinement_survives_the_teacher_copy_and_a_save_and_reload(tmp_path) -> None:
    """With DINO's iterative refinement each decoder refines with its own head's box MLP: the EMA teacher's deep
    copy and a reloaded model refine with theirs, and the shared MLP is saved once."""
    from copy import deepcopy

    from xrayfm.pretrain.multitask_export import load_multitask_model, save_multitask_model

    torch.manual_seed(0)
    detr = {**TINY, "decoder_layers": 2, "with_box_refine": True}
    model = MultiTaskModel(create_model("resnet18", num_classes=0), TASKS, detr=detr).eval()
    teacher = deepcopy(model)
    for m in (model, teacher):
        head = m.head("b/d")
        assert all(e is head.bbox_embed for e in head.decoder.bbox_embed)
    save_multitask_model(model, teacher, tmp_path, arch="resnet18", model_kwargs={}, preprocess=model.preprocess,
                         info={})  # fmt: skip
    loaded, meta = load_multitask_model(tmp_path)
    assert meta["detr"]["with_box_refine"] is True
    head = loaded.head("b/d")
    assert all(e is head.bbox_embed for e in head.decoder.bbox_embed)
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        a, b = model(x, "b/d"), loaded(x, "b/d")
    torch.testing.assert_close(a.prediction[0]["boxes"], b.prediction[0]["boxes"])
    loss = MultiTaskObjective(model.train(), consistency_weight=0.5).losses(_batch(1), "b/d")["loss"]
    loss.backward()
    assert torch.isfinite(loss)
