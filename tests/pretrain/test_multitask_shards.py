"""A Foundation X recipe dataset can be a shard folder (``adapter: shards``): read by index, every sample in
its units, trained like an adapter's dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xrayfm.data.phantom_io import write_phantom_dataset
from xrayfm.data.shards import build_shards
from xrayfm.pretrain.multitask_data import build_recipe_datasets, unit_members
from xrayfm.pretrain.multitask_recipe import RecipeError, parse_recipe
from xrayfm.pretrain.multitask_run import run_multitask
from xrayfm.train import TrainConfig
from xrayfm.train.streaming import ShardSplit

FINDINGS = ["nodule", "effusion", "pneumothorax", "cardiomegaly", "consolidation"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    phantom = write_phantom_dataset(tmp_path_factory.mktemp("fx_shards") / "phantom", n=24, seed=0, size=48)
    build_shards([f"phantom:{phantom}"], phantom.parent / "shards", size=48, resize="square", part_size=8)
    return phantom.parent / "shards"


def _recipe(shards: Path, organs: list[str]) -> dict:
    return {
        "datasets": {"ph": {"adapter": "shards", "root": str(shards), "tasks": {
            "findings": {"kind": "multilabel", "classes": FINDINGS},
            "organs": {"kind": "segmentation", "classes": organs},
        }}},
        "cycle": [{"dataset": "ph", "task": "findings", "steps": 2},
                  {"dataset": "ph", "task": "organs", "steps": 2, "lock_fraction": 0.5}],
        "cycles": 1,
    }  # fmt: skip


def test_a_shard_folder_is_a_recipe_dataset_read_by_index_and_trained(shards: Path, tmp_path: Path) -> None:
    recipe = parse_recipe(_recipe(shards, ["lungs", "heart", "lesions"]))
    datasets = build_recipe_datasets(recipe)
    assert isinstance(datasets["ph"], ShardSplit)
    members = unit_members(recipe, datasets)
    assert members["ph/findings"] == members["ph/organs"] == list(range(len(datasets["ph"])))
    cfg = TrainConfig(batch_size=2, accelerator="cpu", precision="32-true", checkpoint_minutes=0)
    run_multitask(recipe, tmp_path / "run", cfg, arch="resnet18", img_size=32)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == summary["schedule_steps"] and summary["images"] == {"ph": len(datasets["ph"])}
    assert (tmp_path / "run" / "model" / "multitask.safetensors").is_file()


def test_recipe_classes_are_checked_against_the_shards_manifest(shards: Path) -> None:
    with pytest.raises(RecipeError, match=r"datasets\.ph\.tasks\.organs: the recipe says segmentation \['heart'"):
        build_recipe_datasets(parse_recipe(_recipe(shards, ["heart", "lungs", "lesions"])))
