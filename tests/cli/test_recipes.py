"""YAML recipes: they replace defaults, command-line options override them, mistakes are named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from xrayfm.cli import build_parser
from xrayfm.cli.recipes import parse_with_recipe, write_resolved_config
from xrayfm.errors import XrayfmError

REPO = Path(__file__).resolve().parents[2]


def parse(argv: list[str]):
    return parse_with_recipe(build_parser(), argv)


def test_recipe_sets_values_and_the_command_line_overrides(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("lr: 1.0e-4\nbatch-size: 7\nmode: lora\noption: {policy: ones, views: frontal}\n")
    args = parse(["finetune", "--config", str(recipe), "chexpert", "ROOT", "--batch-size", "9"])
    assert args.lr == 1e-4 and args.batch_size == 9 and args.mode == "lora"
    assert sorted(args.option) == ["policy=ones", "views=frontal"]
    assert parse(["finetune", "chexpert", "ROOT"]).lr == 1e-3  # defaults untouched by the earlier parse


def test_unknown_key_and_bad_values_are_named(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("learning_rate: 1\n")
    with pytest.raises(XrayfmError, match="unknown setting 'learning_rate'"):
        parse(["finetune", "--config", str(recipe), "phantom", "R"])
    recipe.write_text("mode: partial\n")
    with pytest.raises(XrayfmError, match="mode='partial' is not one of"):
        parse(["finetune", "--config", str(recipe), "phantom", "R"])
    recipe.write_text("steps: many\n")
    with pytest.raises(XrayfmError, match="steps='many' is invalid"):
        parse(["finetune", "--config", str(recipe), "phantom", "R"])
    recipe.write_text("- a list\n")
    with pytest.raises(XrayfmError, match="expected a mapping"):
        parse(["finetune", "--config", str(recipe), "phantom", "R"])
    with pytest.raises(XrayfmError, match="does not exist"):
        parse(["finetune", "--config", str(tmp_path / "none.yaml"), "phantom", "R"])


@pytest.mark.parametrize("recipe", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_parses(recipe: Path) -> None:
    command = ["pretrain", "mim"] if "_mim_" in recipe.name else ["finetune"]
    args = parse([*command, "--config", str(recipe), "phantom", "ROOT"])
    assert args.config == str(recipe)


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    args = parse(
        ["pretrain", "mim", "--config", str(REPO / "configs/eva_x_mim_tiny.yaml"), "phantom", "R", "--steps", "5"]
    )
    path = write_resolved_config(args, tmp_path)
    saved = yaml.safe_load(path.read_text())
    assert saved["steps"] == 5 and saved["mask_ratio"] == 0.3 and saved["recipe"].endswith("eva_x_mim_tiny.yaml")
    again = parse(["pretrain", "mim", "--config", str(path), "phantom", "R"])
    assert again.steps == 5 and again.lr == args.lr
