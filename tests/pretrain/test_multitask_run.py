"""Foundation X on the engine: the phase walk of a real run, lock freezing, EMA at phase ends, exact resume,
the per-step data order, and datasets checked against the recipe."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

import xrayfm
from xrayfm.data.phantom_io import write_phantom_dataset
from xrayfm.errors import XrayfmError
from xrayfm.models import create_model
from xrayfm.pretrain import multitask_run
from xrayfm.pretrain.cyclic_schedule import expand_cycle
from xrayfm.pretrain.multitask_data import PhaseSampler, build_recipe_datasets, unit_members
from xrayfm.pretrain.multitask_export import load_multitask_model
from xrayfm.pretrain.multitask_recipe import RecipeError, parse_recipe
from xrayfm.pretrain.multitask_run import run_multitask
from xrayfm.train import TrainConfig

SHIPPED = Path(xrayfm.__file__).parent / "configs" / "foundation_x_phantom.yaml"
TINY = {"arch": "resnet18", "img_size": 32}


class Crash(RuntimeError):
    """Stands for the process being killed mid-run."""


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("fx") / "phantom", n=12, seed=0, size=64)


def _recipe(phantom: Path, **changes: Any) -> dict[str, Any]:
    """The shipped phantom recipe on ``phantom``, each unit a few steps long, one cycle."""
    data = yaml.safe_load(SHIPPED.read_text())
    for entry in data["datasets"].values():
        entry["root"] = str(phantom)
    data["cycle"] = [
        {"dataset": "findings", "task": "findings", "steps": 2},
        {"dataset": "lesions", "task": "lesions", "steps": 2, "lock_fraction": 0.5},
        {"dataset": "organs", "task": "organs", "steps": 2, "lock_fraction": 0.5},
    ]
    return {**data, "cycles": 1, **changes}


def _cfg(**settings: Any) -> TrainConfig:
    base = dict(
        batch_size=2, lr=1e-3, warmup_steps=0, clip_grad=0.0, accelerator="cpu", precision="32-true",
        checkpoint_every=100, checkpoint_minutes=0, log_every=1,
    )  # fmt: skip
    return TrainConfig(**{**base, **settings})


def _flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).clone() for t in module.state_dict().values() if t.is_floating_point()])


def _sums(module: torch.nn.Module) -> torch.Tensor:
    """A cheap fingerprint: one float64 sum per parameter (a large head is not copied every step)."""
    return torch.stack([p.detach().double().sum() for p in module.parameters()])


def test_a_run_walks_the_cycle_freezes_while_locked_and_moves_the_teacher_at_phase_ends(
    phantom: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, set[str]]] = []
    states: dict[int, dict[str, Any]] = {}
    real_forward, real_train = multitask_run.CyclicObjective.forward, multitask_run.train

    def forward(self, batch):
        seen.append((self.unit, {k for k in ("labels", "mask", "boxes") if k in batch}))
        return real_forward(self, batch)

    def recording_train(objective, dataset, cfg, *, on_step, **kwargs):
        model = objective.objective.model

        def hook(step: int) -> None:
            on_step(step)
            states[step] = {
                "backbone": _flat(model.backbone), "teacher": _flat(objective.objective.teacher.model.backbone),
                "heads": {k: _sums(model.head(k)) for k in model.tasks}, "locked": model.locked,
            }  # fmt: skip

        return real_train(objective, dataset, cfg, on_step=hook, **kwargs)

    monkeypatch.setattr(multitask_run.CyclicObjective, "forward", forward)
    monkeypatch.setattr(multitask_run, "train", recording_train)
    recipe = parse_recipe(_recipe(phantom, cycles=2))
    run_multitask(recipe, tmp_path, _cfg(), **TINY)

    rows = [r.split(",") for r in (tmp_path / "phases.csv").read_text().splitlines()[1:]]
    walk = [(unit, locked == "1") for _, _, unit, _, locked, _, _ in rows]
    one_cycle = [
        ("findings/findings", False), ("lesions/lesions", True), ("lesions/lesions", False),
        ("organs/organs", True), ("organs/organs", False),
    ]  # fmt: skip
    assert walk == one_cycle * 2
    per_step = [unit for _, _, unit, _, _, first, last in rows for _ in range(int(first), int(last) + 1)]
    assert [unit for unit, _ in seen] == per_step  # every step trained the unit its phase names
    targets = {"findings/findings": {"labels"}, "lesions/lesions": {"boxes"}, "organs/organs": {"mask"}}
    assert all(keys == targets[unit] for unit, keys in seen)  # ... on a batch of that unit's dataset only
    steps = len(per_step)
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == steps + 1
    for _, _, unit, _, locked, first, last in rows:
        start, end = int(first) - 1, int(last)
        before, after = states[start], states[end]
        moved = not torch.equal(before["backbone"], after["backbone"])
        assert moved != (locked == "1"), (unit, locked)  # frozen while locked, trained when released
        assert not torch.equal(before["heads"][unit], after["heads"][unit])
        assert (before["locked"] == unit) == (locked == "1")
        others = [k for k in before["heads"] if k != unit]
        assert all(torch.equal(before["heads"][k], after["heads"][k]) for k in others)
    ends = {int(r[6]) for r in rows}
    changed = {k for k in range(1, steps + 1) if not torch.equal(states[k - 1]["teacher"], states[k]["teacher"])}
    assert changed == ends  # ema.every: phase
    student, _ = load_multitask_model(tmp_path)
    backbone = create_model("resnet18", num_classes=0, pretrained=str(tmp_path))
    torch.testing.assert_close(backbone.state_dict(), student.backbone.state_dict(), rtol=0, atol=0)


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_student_and_teacher(
    phantom: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = parse_recipe(_recipe(phantom, ema={"momentum": 0.8, "every": "phase"}))
    run_multitask(recipe, tmp_path / "straight", _cfg(), **TINY)

    real_forward, calls = multitask_run.CyclicObjective.forward, {"n": 0}

    def crash_in_step_3(self, batch):  # the detection unit's locked step, just after the findings phase ended
        calls["n"] += 1
        if calls["n"] == 3:
            assert self.unit == "lesions/lesions" and self.objective.model.locked == "lesions/lesions"
            raise Crash
        return real_forward(self, batch)

    monkeypatch.setattr(multitask_run.CyclicObjective, "forward", crash_in_step_3)
    with pytest.raises(Crash):
        run_multitask(recipe, tmp_path / "killed", _cfg(checkpoint_every=2), **TINY)
    monkeypatch.setattr(multitask_run.CyclicObjective, "forward", real_forward)
    assert torch.load(tmp_path / "killed" / "last.ckpt", weights_only=True)["step"] == 2
    run_multitask(recipe, tmp_path / "killed", _cfg(checkpoint_every=2), **TINY)
    for name in ("multitask.safetensors", "teacher.safetensors"):
        straight, resumed = (load_file(str(tmp_path / run / "model" / name)) for run in ("straight", "killed"))
        torch.testing.assert_close(straight, resumed, rtol=0, atol=0)
    assert (tmp_path / "killed" / "phases.csv").read_text() == (tmp_path / "straight" / "phases.csv").read_text()
    steps = [r.split(",")[0] for r in (tmp_path / "killed" / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == [str(k) for k in range(1, 9)]


def test_each_step_reads_its_units_dataset_and_a_resumed_order_is_the_tail() -> None:
    recipe = parse_recipe(
        {
            "datasets": {
                d: {"adapter": "a", "root": "/r", "tasks": {"t": {"kind": "multilabel", "classes": ["x"]}}}
                for d in ("a", "b")
            },
            "cycle": [{"dataset": "a", "steps": 3}, {"dataset": "b", "steps": 2}],
            "cycles": 2,
        }
    )
    phases = expand_cycle(recipe)
    offsets, members = {"a": 0, "b": 7}, {"a/t": range(7), "b/t": range(5)}

    def order(rank: int = 0, world: int = 1, start: int = 0) -> list[int]:
        return list(PhaseSampler(phases, offsets, members, samples_per_step=2, seed=3, rank=rank, world=world,
                                 start=start))  # fmt: skip

    full = order()
    assert len(full) == 10 * 2
    per_step = [full[i : i + 2] for i in range(0, len(full), 2)]
    units = ["a"] * 3 + ["b"] * 2
    for indices, unit in zip(per_step, units * 2):
        assert all((i < 7) == (unit == "a") for i in indices)
    assert len(set(full[:6])) == 6  # no repeat within a pass over a (7 samples: 6 drawn)
    assert full[:6] != full[10:16]  # the next cycle's phase reshuffles
    assert order(start=6) == full[6:]
    rank0, rank1 = order(0, 2), order(1, 2)
    assert not set(rank0[:2]) & set(rank1[:2]) and len(rank0) == len(rank1) == 20
    with pytest.raises(XrayfmError, match="not a whole number of steps"):
        order(start=3)


def test_datasets_are_checked_against_the_recipe_naming_the_key(phantom: Path) -> None:
    good = _recipe(phantom)
    assert {n: len(d) for n, d in build_recipe_datasets(parse_recipe(good)).items()}.keys() == good["datasets"].keys()
    swapped = copy.deepcopy(good)
    swapped["datasets"]["organs"]["tasks"]["organs"]["classes"] = ["heart", "lungs"]
    with pytest.raises(RecipeError, match=r"datasets\.organs\.tasks\.organs: the recipe says segmentation \['heart'"):
        build_recipe_datasets(parse_recipe(swapped))
    no_masks = copy.deepcopy(good)
    no_masks["datasets"]["organs"]["options"]["mask_columns"] = []
    with pytest.raises(RecipeError, match="organs: the 'csv' adapter gives no segmentation targets"):
        build_recipe_datasets(parse_recipe(no_masks))
    relative = copy.deepcopy(good)
    relative["datasets"]["findings"]["root"] = phantom.name
    assert len(build_recipe_datasets(parse_recipe(relative), data_root=phantom.parent)["findings"]) > 0


def test_the_recipe_sets_the_length_and_fsdp_is_refused(phantom: Path, tmp_path: Path) -> None:
    recipe = parse_recipe(_recipe(phantom))
    with pytest.raises(XrayfmError, match="the recipe sets a multi-task run's length"):
        run_multitask(recipe, tmp_path, _cfg(epochs=1.0), **TINY)
    with pytest.raises(XrayfmError, match="not fsdp"):
        run_multitask(recipe, tmp_path, _cfg(strategy="fsdp"), **TINY)


def test_a_unit_reads_only_the_samples_annotated_for_its_task(phantom: Path) -> None:
    partial = _recipe(phantom)
    partial["datasets"]["lesions"]["options"]["boxes_complete"] = False  # images without box rows: not annotated
    recipe = parse_recipe(partial)
    datasets = build_recipe_datasets(recipe)
    members = unit_members(recipe, datasets)
    boxed = [i for i, rec in enumerate(datasets["lesions"].records) if rec.boxes is not None]
    assert members["lesions/lesions"] == boxed and 0 < len(boxed) < len(datasets["lesions"])
    assert members["findings/findings"] == list(range(len(datasets["findings"])))
    offsets = {"findings": 0, "lesions": 1000, "organs": 2000}
    order = list(PhaseSampler(expand_cycle(recipe), offsets, members, samples_per_step=2, seed=0, rank=0, world=1))
    drawn = [i - 1000 for i in order if 1000 <= i < 2000]
    steps = sum(p.steps for p in expand_cycle(recipe) if p.unit.key == "lesions/lesions")  # locked + released
    assert len(drawn) == 2 * steps and set(drawn) <= set(boxed)
    with pytest.raises(
        RecipeError,
        match=r"cycle unit findings/findings: \d+ of the \d+ samples of dataset .findings. .* fewer than the 99",
    ):
        unit_members(recipe, datasets, world=99)
