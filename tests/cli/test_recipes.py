"""YAML recipes: they replace defaults, command-line options override them, mistakes are named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import xrayfm
from xrayfm.cli import build_parser, main
from xrayfm.cli.recipes import find_recipe, list_recipes, parse_with_recipe, write_resolved_config
from xrayfm.errors import XrayfmError

RECIPES = Path(xrayfm.__file__).parent / "configs"


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


#: Multi-task recipes are the positional RECIPE of ``pretrain multitask``, not a ``--config`` file
#: (tests/cli/test_pretrain_multitask_cli.py runs the shipped one by name); pool recipes are a SOURCE of ``shards
#: build`` (tests/cli/test_pool_recipes.py).
CONFIG_RECIPES = sorted(p for p in RECIPES.glob("*.yaml") if not p.name.startswith(("foundation_x_", "pool_")))


@pytest.mark.parametrize("recipe", CONFIG_RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_parses_by_path_and_by_name(recipe: Path) -> None:
    command = (
        ["pretrain", "mim"] if "_mim_" in recipe.name
        else ["pretrain", "anatomy"] if recipe.name.startswith("adam_") else ["finetune"]
    )  # fmt: skip
    args = parse([*command, "--config", str(recipe), "phantom", "ROOT"])
    assert args.config == str(recipe)
    plain = {"config": None, "parser": None}
    by_name = parse([*command, "--config", recipe.stem, "phantom", "ROOT"])
    defaults = build_parser().parse_args([*command, "phantom", "ROOT"])
    assert vars(by_name) | plain == vars(args) | plain != vars(defaults) | plain
    assert f"--config {recipe.stem} " in recipe.read_text()  # its usage line names it as users type it


def test_recipes_ship_inside_the_package() -> None:
    assert set(list_recipes()) >= {"eva_x_mim_tiny", "eva_x_cls_chestxray14", "eva_x_seg_lungs"}
    assert find_recipe("eva_x_mim_tiny.yaml") == find_recipe("eva_x_mim_tiny") == RECIPES / "eva_x_mim_tiny.yaml"
    assert not (RECIPES.parents[2] / "configs").exists()  # moved, not copied: one copy to keep up to date


def test_a_file_wins_over_a_recipe_name(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("eva_x_mim_tiny").write_text("steps: 7\n")
    assert parse(["pretrain", "mim", "--config", "eva_x_mim_tiny", "phantom", "R"]).steps == 7


@pytest.mark.parametrize(
    "config, hint",
    [
        ("eva_x_mim_tin", "Did you mean eva_x_mim_tiny"),
        ("configs/eva_x_mim_tiny.yaml", "The shipped recipe of that name is --config eva_x_mim_tiny"),
    ],
)
def test_unknown_recipe_lists_the_names(config: str, hint: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(XrayfmError, match=f"config {config} does not exist: .*eva_x_seg_lungs.*{hint}"):
        parse(["pretrain", "mim", "--config", config, "phantom", "R"])


def test_recipes_command_lists_and_prints(capsys) -> None:
    assert main(["recipes"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in list_recipes()) and "--config NAME" in listing
    assert main(["recipes", "eva_x_mim_tiny"]) == 0
    assert capsys.readouterr().out == (RECIPES / "eva_x_mim_tiny.yaml").read_text()


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    args = parse(["pretrain", "mim", "--config", "eva_x_mim_tiny", "phantom", "R", "--steps", "5"])
    path = write_resolved_config(args, tmp_path)
    saved = yaml.safe_load(path.read_text())
    assert saved["steps"] == 5 and saved["mask_ratio"] == 0.3 and saved["recipe"] == "eva_x_mim_tiny"
    again = parse(["pretrain", "mim", "--config", str(path), "phantom", "R"])
    assert again.steps == 5 and again.lr == args.lr


@pytest.mark.parametrize(
    ("typed", "expect"),
    [
        ([], {"steps": 0, "epochs": 30.0, "warmup_steps": 50, "warmup_epochs": 5.0, "accumulate": 1}),
        (["--steps", "7"], {"steps": 7, "epochs": 0, "warmup_epochs": 5.0}),
        (["--ste=7", "--epochs", "2"], {"steps": 7, "epochs": 2.0}),  # both typed: epochs counts
        (["--warmup", "3"], {"warmup_steps": 3, "warmup_epochs": 0, "epochs": 30.0}),
        (["--accumulate", "2"], {"accumulate": 2, "global_batch": 0}),
    ],
)
def test_a_typed_duration_wins_over_the_recipes_other_form(typed: list[str], expect: dict, tmp_path: Path) -> None:
    from xrayfm.cli.args import train_config

    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: 30\nwarmup_epochs: 5\nglobal_batch: 64\nbatch_size: 16\n")
    cfg = train_config(parse(["finetune", "--config", str(recipe), "phantom", "ROOT", *typed]))
    assert {k: getattr(cfg, k) for k in expect} == expect


def test_typed_steps_round_trip_through_the_resolved_config(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: 30\nglobal_batch: 64\nbatch_size: 16\n")
    args = parse(["sweep", "--config", str(recipe), "phantom", "R", "--steps", "3"])
    again = parse(["sweep", "--config", str(write_resolved_config(args, tmp_path / "run")), "phantom", "R"])
    assert (again.steps, again.epochs, again.global_batch) == (3, 0, 64)
