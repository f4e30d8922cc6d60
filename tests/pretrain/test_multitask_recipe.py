"""Foundation X recipes: parsing, the default cycle, and errors that name the bad key."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from xrayfm.errors import XrayfmError
from xrayfm.pretrain.multitask_recipe import RecipeError, load_recipe, parse_recipe

RECIPE = Path(__file__).parent / "data" / "multitask_recipe.yaml"


def _data() -> dict[str, Any]:
    return yaml.safe_load(RECIPE.read_text())


def test_the_example_recipe_loads_with_its_datasets_tasks_and_units() -> None:
    r = load_recipe(RECIPE)
    assert list(r.datasets) == ["nih", "candid", "rsna"]
    nih = r.datasets["nih"]
    assert (nih.adapter, nih.root, nih.options) == ("nih_cxr14", "/data/nih", {"views": ["PA"], "val_fraction": 0.1})
    assert nih.tasks["findings"].spec.classes == ("Atelectasis", "Effusion", "Nodule")
    assert r.task("nih/lesions").weight == 2.0 and r.task("nih/findings").weight == 1.0
    assert [u.key for u in r.cycle] == ["nih/findings", "nih/lesions", "candid/ptx", "candid/ptx_mask", "rsna/opacity"]
    by_key = {u.key: u for u in r.cycle}
    assert by_key["nih/lesions"].kind == "detection"  # named by kind in the YAML
    assert (by_key["nih/lesions"].steps, by_key["nih/lesions"].lock_fraction) == (10, 0.5)  # paper's default half
    assert (by_key["candid/ptx"].epochs, by_key["candid/ptx"].lock_fraction) == (2.0, 0.0)
    assert by_key["candid/ptx_mask"].lock_fraction == 0.3
    assert (r.cycles, r.ema.momentum, r.ema.every, r.consistency_weight) == (2, 0.8, "phase", 0.5)
    assert [t.name for t in r.task_specs()["candid"]] == ["ptx", "ptx_mask"]


def test_without_a_cycle_every_task_is_a_unit_classification_then_detection_then_segmentation() -> None:
    data = _data()
    del data["cycle"]
    data["datasets"]["candid"]["tasks"] = {
        "ptx_mask": {"kind": "segmentation", "classes": ["p"]},
        "ptx_box": {"kind": "detection", "classes": ["p"]},
        "ptx": {"kind": "multilabel", "classes": ["p"]},
    }
    r = parse_recipe(data)
    assert [u.key for u in r.cycle] == [
        "nih/findings", "nih/lesions", "candid/ptx", "candid/ptx_box", "candid/ptx_mask", "rsna/opacity",
    ]  # fmt: skip
    assert [u.lock_fraction for u in r.cycle] == [0.0, 0.5, 0.0, 0.5, 0.5, 0.0]
    assert all(u.epochs == 1.0 and u.steps is None for u in r.cycle)


def test_adding_a_dataset_is_a_config_entry() -> None:
    data = _data()
    del data["cycle"]
    data["datasets"]["shenzhen"] = {
        "adapter": "shenzhen",
        "root": "/d",
        "tasks": {"tb": {"kind": "multilabel", "classes": ["TB"]}},
    }
    assert parse_recipe(data).cycle[-1].key == "shenzhen/tb"


def _broken(path: str, value: Any) -> dict[str, Any]:
    """The example recipe with the value at a dotted path replaced (``...`` deletes it)."""
    data = copy.deepcopy(_data())
    *parents, last = path.split(".")
    node: Any = data
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if value is ...:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("cycle.0", "chexpert/findings", "cycle[0].dataset: unknown dataset 'chexpert'"),
        ("cycle.1", {"dataset": "nih", "task": "segmentation"}, "cycle[1].task: dataset 'nih' has no task"),
        ("datasets.nih.tasks.findings.kind", "regression", "datasets.nih.tasks.findings.kind: unknown task kind"),
        ("cycle.3", {"dataset": "candid", "task": "ptx_mask", "lock_fraction": 1.0}, "cycle[3].lock_fraction: 1.0"),
        ("cycle.3", {"dataset": "candid", "task": "ptx_mask", "lock_fraction": -0.1}, "cycle[3].lock_fraction"),
        ("cycle.0", {"dataset": "nih", "task": "findings", "lock_fraction": 0.5}, "multilabel units have no lock"),
        ("cycle.0", {"dataset": "nih", "task": "findings", "steps": 3, "epochs": 1}, "not both"),
        ("cycle.0", {"dataset": "nih", "task": "findings", "steps": 0}, "cycle[0].steps"),
        ("cycle.0", {"dataset": "nih", "task": "findings", "epochs": 0}, "cycle[0].epochs"),
        ("cycle.0", {"dataset": "nih", "tsk": "findings"}, "cycle[0]: unknown key(s) ['tsk']"),
        ("ema.momentum", 1.5, "ema.momentum: 1.5 is outside [0, 1]"),
        ("ema.every", "epoch", "ema.every: unknown value 'epoch'"),
        ("consistency_weight", "half", "consistency_weight: expected a number"),
        ("cycles", 0, "cycles: expected an integer >= 1"),
        ("datasets.nih.adapter", ..., "datasets.nih.adapter: missing"),
        ("datasets.nih.tasks", {}, "datasets.nih.tasks: a dataset needs at least one task"),
        ("datasets.nih.tasks.findings.classes", [], "datasets.nih.tasks.findings.classes"),
        ("datasets.nih.tasks.findings.classes", ["a", "a"], "duplicate class names"),
        ("datasets.nih.tasks.findings.weight", -1, "datasets.nih.tasks.findings.weight: must be >= 0"),
        ("datasets.nih.tasks.lesions.kind", "multiclass", "'findings' and 'lesions' are both classification"),
        ("datasets.nih.tasks", {"bad.name": {"kind": "multilabel", "classes": ["a"]}}, "must be letters, digits"),
        ("datasets.nih.labels", "x.csv", "datasets.nih: unknown key(s) ['labels']"),
        ("optimizer", "adamw", "unknown key(s) ['optimizer']"),
        ("datasets", {}, "'datasets' is missing or empty"),
    ],
)
def test_a_bad_recipe_is_refused_with_the_key_named(path: str, value: Any, message: str) -> None:
    with pytest.raises(RecipeError) as info:
        parse_recipe(_broken(path, value))
    assert message in str(info.value)
    assert isinstance(info.value, XrayfmError)


def test_a_file_that_is_not_yaml_or_missing_is_a_recipe_error(tmp_path: Path) -> None:
    bad = tmp_path / "r.yaml"
    bad.write_text("datasets: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="cannot read"):
        load_recipe(tmp_path / "missing.yaml")
