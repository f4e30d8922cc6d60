"""Foundation X objective: per-dataset routing, masked losses, EMA teacher, consistency gradient, optimiser coverage."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from xrayfm.errors import XrayfmError
from xrayfm.models import create_model
from xrayfm.pretrain.ema_teacher import EmaTeacher, consistency_loss
from xrayfm.pretrain.multitask import (
    MultiTaskObjective,
    check_optimizer_coverage,
    masked_bce,
    soft_dice_loss,
    untrained_parameters,
)
from xrayfm.pretrain.multitask_model import MultiTaskModel
from xrayfm.pretrain.multitask_recipe import load_recipe
from xrayfm.tasks import TaskSpec

RECIPE = Path(__file__).parent / "data" / "multitask_recipe.yaml"
TASKS = {
    "a": [TaskSpec("f", "multilabel", ("x", "y")), TaskSpec("m", "segmentation", ("lung",))],
    "b": [TaskSpec("f", "multiclass", ("p", "q", "r")), TaskSpec("d", "detection", ("nodule",))],
}


def _model() -> MultiTaskModel:
    torch.manual_seed(0)
    return MultiTaskModel(create_model("resnet18", num_classes=0), TASKS)


def _batch_a() -> dict:
    g = torch.Generator().manual_seed(1)
    return {
        "image": torch.rand(2, 1, 32, 32, generator=g),
        "labels": torch.tensor([[1.0, float("nan")], [0.0, 1.0]]),
        "mask": (torch.rand(2, 1, 32, 32, generator=g) > 0.5).to(torch.uint8),
        "meta": [{}, {}],
    }


def _batch_b() -> dict:
    g = torch.Generator().manual_seed(2)
    return {
        "image": torch.rand(2, 1, 64, 64, generator=g),
        "labels": torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]),
        "boxes": [torch.tensor([[8.0, 8.0, 40.0, 40.0]]), torch.zeros(0, 4)],
        "box_labels": [torch.tensor([0]), torch.zeros(0, dtype=torch.long)],
        "meta": [{}, {}],
    }


def _grads(module: torch.nn.Module) -> list[torch.Tensor | None]:
    return [p.grad for p in module.parameters()]


def test_the_model_builds_one_head_per_dataset_task_from_the_recipe_with_one_shared_segmentation_decoder() -> None:
    model = MultiTaskModel.from_recipe(load_recipe(RECIPE), create_model("resnet18", num_classes=0))
    assert sorted(model.tasks) == ["candid/ptx", "candid/ptx_mask", "nih/findings", "nih/lesions", "rsna/opacity"]
    assert model.head("rsna/opacity").fc.out_features == 3 and model.head("nih/findings").fc.out_features == 3
    assert model.seg_decoder is not None and model.head("candid/ptx_mask")[0].out_channels == 1
    out = model(torch.rand(2, 1, 64, 64), "candid/ptx_mask")
    assert out.prediction.shape == (2, 1, 64, 64) and set(out.features) == {"pooled", "decoder"}


@pytest.mark.parametrize(
    ("unit", "batch", "trained"), [("a/f", _batch_a, "a/f"), ("a/m", _batch_a, "a/m"), ("b/d", _batch_b, "b/d")]
)
def test_a_batch_trains_only_its_units_head(unit: str, batch, trained: str) -> None:
    objective = MultiTaskObjective(_model())
    objective.train()
    losses = objective.losses(batch(), unit)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    model = objective.model
    for key in model.tasks:
        grads = _grads(model.head(key))
        if key == trained:
            assert all(g is not None for g in grads), key
        else:
            assert all(g is None for g in grads), key  # other datasets' (and other tasks') heads untouched
    assert any(g is not None and g.abs().sum() > 0 for g in _grads(model.backbone))


def test_unknown_labels_are_masked_and_targets_must_fit_the_task() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    labels = torch.tensor([[1.0, float("nan")], [float("nan"), float("nan")]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[0, :1], labels[0, :1])
    assert torch.allclose(masked_bce(logits, labels), expected)
    assert masked_bce(logits, torch.full((2, 2), float("nan"))) == 0
    mask = torch.tensor([[[[1, 255], [0, 0]]]], dtype=torch.uint8)
    right = torch.tensor([[[[20.0, 20.0], [-20.0, -20.0]]]])  # right on known pixels, "wrong" on the ignored one
    assert soft_dice_loss(right, mask) < 1e-6
    assert soft_dice_loss(right, torch.tensor([[[[1, 0], [0, 0]]]], dtype=torch.uint8)) > 0.2  # counted if known
    objective = MultiTaskObjective(_model())
    with pytest.raises(XrayfmError, match="'b/f': 'labels' has 2 channels but the task has 3 classes"):
        objective.losses(_batch_a(), "b/f")
    with pytest.raises(XrayfmError, match="'a/m': its batch has no 'mask'"):
        objective.losses(_batch_b(), "a/m")
    with pytest.raises(XrayfmError, match="no head 'c/f'"):
        objective.losses(_batch_a(), "c/f")


def test_task_weights_and_the_consistency_mix_come_from_the_recipe() -> None:
    recipe = load_recipe(RECIPE)
    objective = MultiTaskObjective.from_recipe(
        recipe, MultiTaskModel.from_recipe(recipe, create_model("resnet18", num_classes=0))
    )
    assert objective.weights["nih/lesions"] == 2.0 and objective.weights["nih/findings"] == 1.0
    assert objective.consistency_weight == 0.5
    batch = {
        "image": torch.rand(2, 1, 64, 64),
        "labels": torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]),
        "meta": [{}, {}],
    }
    out = objective.losses(batch, "rsna/opacity")
    assert torch.allclose(out["loss"], 0.5 * out["task"] + 0.5 * out["consistency"])


def test_ema_update_mixes_parameters_and_float_buffers_and_copies_integer_buffers() -> None:
    student = _model()
    teacher = EmaTeacher(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    student.train()
    student(torch.rand(2, 1, 32, 32), "a/f")  # batch norm: new running stats, num_batches_tracked 0 -> 1
    t0 = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    s = student.state_dict()
    teacher.update(student, 0.8)
    bn = "backbone.bn1"
    assert not torch.equal(s[f"{bn}.running_mean"], t0[f"{bn}.running_mean"])  # the buffers really differ
    for key, value in teacher.model.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, 0.8 * t0[key] + 0.2 * s[key], atol=1e-6), key
        else:
            assert torch.equal(value, s[key]), key
    assert int(teacher.model.state_dict()[f"{bn}.num_batches_tracked"]) == 1
    mixed = teacher.model.backbone.conv1.weight.clone()
    teacher.update(student, 1.0)
    assert torch.equal(teacher.model.backbone.conv1.weight, mixed)
    teacher.update(student, 0.0)
    assert torch.equal(teacher.model.backbone.conv1.weight, student.backbone.conv1.weight)
    with pytest.raises(XrayfmError, match="momentum must be in"):
        teacher.update(student, 1.2)


def test_consistency_alone_sends_gradient_to_the_student_and_none_to_the_teacher() -> None:
    objective = MultiTaskObjective(_model(), consistency_weight=1.0)  # the loss is the consistency term only
    with torch.no_grad():
        for p in objective.model.parameters():
            p.mul_(1.1)  # student and teacher differ
    objective.train()
    assert not objective.teacher.model.training  # a loop's train() leaves the teacher in eval mode
    for unit, batch in (("a/f", _batch_a), ("a/m", _batch_a), ("b/d", _batch_b)):
        objective.model.zero_grad()
        out = objective.losses(batch(), unit)
        assert torch.equal(out["loss"], out["consistency"]) and out["consistency"] > 0
        out["loss"].backward()
        assert any(g is not None and g.abs().sum() > 0 for g in _grads(objective.model.backbone)), unit
        assert all(not p.requires_grad and p.grad is None for p in objective.teacher.parameters())


def test_consistency_compares_features_and_predictions() -> None:
    model = _model()
    teacher = EmaTeacher(model)
    x = torch.rand(2, 1, 32, 32)
    model.eval()
    with torch.no_grad():
        assert float(consistency_loss(model(x, "a/f"), teacher(x, "a/f"), "multilabel")) == 0.0
        model.head("a/f").fc.bias.add_(1.0)  # only the prediction moves
        assert float(consistency_loss(model(x, "a/f"), teacher(x, "a/f"), "multilabel")) > 0


def test_optimizer_coverage_finds_a_left_out_parameter_and_counts_locked_ones_as_trainable() -> None:
    objective = MultiTaskObjective(_model())
    model = objective.model
    full = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=1e-3)
    assert untrained_parameters(objective, full) == []  # the teacher's parameters are not trainable
    check_optimizer_coverage(objective, full)
    head = {id(p) for p in model.head("a/f").parameters()}
    partial = torch.optim.AdamW([p for p in model.parameters() if id(p) not in head], lr=1e-3)
    assert untrained_parameters(objective, partial) == ["model.heads.a.f.fc.weight", "model.heads.a.f.fc.bias"]
    with pytest.raises(XrayfmError, match=r"2 trainable parameters \(1,026 values\).*model\.heads\.a\.f\.fc\.weight"):
        check_optimizer_coverage(objective, partial)
    model.lock("a/m")
    only_trainable_now = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    left_out = untrained_parameters(model, only_trainable_now)
    assert "backbone.conv1.weight" in left_out and not any(n.startswith("heads.a.m.") for n in left_out)
