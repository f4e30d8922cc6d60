"""Cyclic & Lock-Release: phase expansion, and a lock that really freezes the shared weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from xrayfm.errors import XrayfmError
from xrayfm.models import create_model
from xrayfm.pretrain.cyclic_schedule import enter_phase, expand_cycle, lock, phase_at, release, total_steps
from xrayfm.pretrain.multitask import MultiTaskObjective, untrained_parameters
from xrayfm.pretrain.multitask_model import MultiTaskModel
from xrayfm.pretrain.multitask_recipe import load_recipe, parse_recipe
from xrayfm.tasks import TaskSpec

RECIPE = Path(__file__).parent / "data" / "multitask_recipe.yaml"


def test_the_cycle_unrolls_into_lock_then_release_phases_and_classification_units_have_no_lock() -> None:
    recipe = load_recipe(RECIPE)
    phases = expand_cycle(recipe, {"nih/findings": 4, "candid/ptx": 3, "rsna/opacity": 5})
    one_cycle = [(p.key, p.locked, p.steps) for p in phases if p.cycle == 0]
    assert one_cycle == [
        ("nih/findings", False, 4),
        ("nih/lesions", True, 5),  # half of its 10 steps locked, then all 10 released
        ("nih/lesions", False, 10),
        ("candid/ptx", False, 6),  # 2 epochs of 3 steps
        ("candid/ptx_mask", True, 2),  # floor(0.3 * 7), as the reference's len(loader) // 2
        ("candid/ptx_mask", False, 7),
        ("rsna/opacity", False, 5),
    ]
    assert [(p.key, p.locked, p.steps) for p in phases if p.cycle == 1] == one_cycle
    assert all(a.end == b.start for a, b in zip(phases, phases[1:])) and phases[0].start == 0
    assert total_steps(phases) == 2 * sum(s for _, _, s in one_cycle)
    assert phase_at(phases, 0) == (0, 0)
    assert phase_at(phases, 4) == (1, 0) and phase_at(phases, 8) == (1, 4) and phase_at(phases, 9) == (2, 0)
    assert phase_at(phases, total_steps(phases) - 1) == (len(phases) - 1, 4)
    with pytest.raises(XrayfmError, match="outside the schedule"):
        phase_at(phases, total_steps(phases))


def test_a_unit_in_epochs_needs_its_loader_length_and_a_tiny_lock_is_skipped() -> None:
    recipe = load_recipe(RECIPE)
    with pytest.raises(XrayfmError, match="'candid/ptx' is 2.0 epoch"):
        expand_cycle(recipe, {"nih/findings": 4, "rsna/opacity": 5})
    tiny = parse_recipe(
        {
            "datasets": {
                "d": {"adapter": "a", "root": "/r", "tasks": {"m": {"kind": "segmentation", "classes": ["x"]}}}
            },
            "cycle": [{"dataset": "d", "task": "m", "steps": 1}],
        }
    )
    assert [(p.locked, p.steps) for p in expand_cycle(tiny)] == [(False, 1)]  # floor(0.5 * 1) = 0: no locked phase


def _model(arch: str = "resnet18") -> MultiTaskModel:
    torch.manual_seed(0)
    kwargs = {"img_size": 32} if arch.startswith("eva") else {}
    backbone = create_model(arch, num_classes=0, **kwargs)
    tasks = {
        "a": [TaskSpec("f", "multilabel", ("x", "y")), TaskSpec("m", "segmentation", ("lung",))],
        "b": [TaskSpec("m", "segmentation", ("lung", "heart"))],
    }
    return MultiTaskModel(backbone, tasks)


def _batch(masks: int) -> dict:
    g = torch.Generator().manual_seed(1)
    return {
        "image": torch.rand(2, 1, 32, 32, generator=g),
        "labels": torch.tensor([[1.0, 0.0], [float("nan"), 1.0]]),
        "mask": (torch.rand(2, masks, 32, 32, generator=g) > 0.5).to(torch.uint8),
        "meta": [{}, {}],
    }


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    return {k for k, v in module.state_dict().items() if not torch.equal(before[k], v)}


@pytest.mark.parametrize("arch", ["resnet18", "eva_x_tiny_patch16"])  # U-Net on stages; UperNet on a ViT pyramid
def test_lock_freezes_backbone_and_shared_decoder_across_adamw_steps_and_release_lets_them_train(arch: str) -> None:
    model = _model(arch)
    objective = MultiTaskObjective(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    objective.train()
    for unit, batch in (("a/f", _batch(1)), ("a/m", _batch(1))):  # every shared weight gets a grad and Adam state
        optimizer.zero_grad(set_to_none=False)
        objective(batch, unit).backward()
        optimizer.step()
    assert all(p.grad is not None for p in model.backbone.parameters())  # stale grads a lock must clear

    recipe = parse_recipe(
        {
            "datasets": {
                "b": {"adapter": "a", "root": "/r", "tasks": {"m": {"kind": "segmentation", "classes": ["l", "h"]}}}
            },
            "cycle": [{"dataset": "b", "task": "m", "steps": 4}],
        }
    )
    locked_phase, released_phase = expand_cycle(recipe)
    assert locked_phase.locked and not released_phase.locked
    enter_phase(model, locked_phase)
    assert model.locked == "b/m" and untrained_parameters(model, optimizer) == []
    assert all(p.grad is None and not p.requires_grad for p in model.backbone.parameters())
    objective.train()  # a loop's train() must not wake the frozen batch norms
    assert not model.backbone.training and not model.seg_decoder.training and model.heads["b"]["m"].training
    shared = {name: _state(m) for name, m in model.shared_modules().items()}
    other_heads = _state(model.heads["a"])
    head = _state(model.heads["b"]["m"])
    for _ in range(2):
        optimizer.zero_grad()
        objective(_batch(2), "b/m").backward()
        optimizer.step()
    for name, module in model.shared_modules().items():
        assert _changed(shared[name], module) == set(), name  # weights and batch-norm statistics alike
    assert _changed(other_heads, model.heads["a"]) == set()
    assert _changed(head, model.heads["b"]["m"])  # the unit's own head trained

    enter_phase(model, released_phase)
    assert model.locked is None and all(p.requires_grad for p in model.parameters())
    objective.train()
    assert model.backbone.training
    optimizer.zero_grad()
    objective(_batch(2), "b/m").backward()
    optimizer.step()
    for name, module in model.shared_modules().items():
        assert _changed(shared[name], module) or not shared[name], name  # a CNN's pyramid has no weights


def test_adamw_with_weight_decay_leaves_a_parameter_without_grad_alone() -> None:
    frozen, trained = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([frozen, trained], lr=0.1, weight_decay=0.5)
    trained.grad = torch.zeros(3)  # a zero gradient still decays: the check below can fail
    optimizer.step()
    assert torch.equal(frozen, torch.ones(3))
    assert not torch.equal(trained, torch.ones(3))


def test_only_detection_and_segmentation_units_lock_and_a_second_lock_needs_a_release() -> None:
    model = _model()
    with pytest.raises(XrayfmError, match="'a/f' is a multilabel unit"):
        lock(model, "a/f")
    with pytest.raises(XrayfmError, match="no head 'c/m'"):
        lock(model, "c/m")
    lock(model, "a/m")
    assert "heads.a.m.0.weight" not in model.frozen_names and "backbone.conv1.weight" in model.frozen_names
    with pytest.raises(XrayfmError, match="release it before locking 'b/m'"):
        lock(model, "b/m")
    release(model)
    lock(model, "b/m")
    assert model.locked == "b/m"


def test_release_keeps_parameters_the_user_froze_before_the_lock() -> None:
    model = _model()
    model.backbone.conv1.weight.requires_grad_(False)
    lock(model, "a/m")
    release(model)
    assert not model.backbone.conv1.weight.requires_grad
    assert model.backbone.layer1[0].conv1.weight.requires_grad
