"""Engine settings: one check of every value, epochs resolved to steps, and the options round trip."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import pytest

from xrayfm.cli import args as cli_args
from xrayfm.cli.args import add_engine_args, add_run_args, train_config
from xrayfm.cli.recipes import parse_with_recipe
from xrayfm.errors import XrayfmError
from xrayfm.train import TrainConfig, resolve_steps
from xrayfm.train.config import (
    OPTIMIZERS,
    SCHEDULES,
    engine_options,
    resolve_accumulate,
    steps_per_epoch,
    write_run_config,
)


def test_defaults_are_todays_engine() -> None:
    cfg = TrainConfig()
    assert (cfg.optimizer, cfg.schedule, cfg.betas, cfg.steps, cfg.warmup_steps) == (
        "adamw",
        "cosine",
        (0.9, 0.98),
        1000,
        100,
    )
    assert (cfg.epochs, cfg.warmup_epochs, cfg.min_lr, cfg.poly_power) == (0.0, 0.0, 1e-6, 1.0)
    assert resolve_steps(cfg, 10) is cfg  # nothing in epochs: unchanged


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"optimizer": "adam"}, "optimizer must be one of adamw, sgd, got 'adam'"),
        ({"schedule": "step"}, "schedule must be one of cosine, constant, poly, got 'step'"),
        ({"betas": (0.9,)}, r"betas must be two numbers, got \(0.9,\)"),
        ({"betas": ("a", 0.9)}, "betas must be two numbers"),
        ({"betas": (0.9, 1.0)}, r"betas must be two numbers in \[0, 1\), got \(0.9, 1.0\)"),
        ({"steps": -1}, "steps must be at least 0"),
        ({"epochs": -2.0}, "epochs must be at least 0"),
        ({"warmup_epochs": -0.5}, "warmup_epochs must be at least 0"),
        ({"warmup_steps": -1}, "warmup_steps must be at least 0"),
        ({"batch_size": 0}, "batch_size must be at least 1, got 0"),
        ({"accumulate": 0}, "accumulate must be at least 1"),
        ({"lr": 0.0}, "lr must be positive, got 0.0"),
        ({"lr": 1e-3, "min_lr": 2e-3}, r"min_lr must be between 0 and lr \(0.001\), got 0.002"),
        ({"poly_power": 0.0}, "poly_power must be positive"),
        ({"momentum": -0.1}, "momentum must be at least 0"),
        ({"optimizer": "sgd", "momentum": 0.0, "nesterov": True}, "nesterov must be used with a positive momentum"),
        ({"weight_decay": -1.0}, "weight_decay must be at least 0"),
        ({"clip_grad": -1.0}, "clip_grad must be at least 0"),
        ({"checkpoint_every": 0}, "checkpoint_every must be at least 1"),
        ({"log_every": 0}, "log_every must be at least 1"),
    ],
)
def test_bad_settings_are_one_line_errors(settings: dict, message: str) -> None:
    with pytest.raises(XrayfmError, match=message) as info:
        TrainConfig(**settings)
    assert "\n" not in str(info.value)
    with pytest.raises(XrayfmError, match=message):  # replace() checks again
        replace(TrainConfig(), **settings)


def test_betas_become_a_float_tuple() -> None:
    assert TrainConfig(betas=[0.9, "0.999"]).betas == (0.9, 0.999)


def test_an_epoch_is_one_pass_of_the_step_sampler() -> None:
    cfg = TrainConfig(batch_size=4, accumulate=1)
    assert steps_per_epoch(cfg, 24) == 6 and steps_per_epoch(cfg, 25) == 7  # the last step is rounded up
    assert steps_per_epoch(replace(cfg, accumulate=3), 24) == 2
    assert steps_per_epoch(cfg, 24, world_size=2) == 3
    assert steps_per_epoch(cfg, 25, world_size=3) == 2  # each rank takes 25 // 3 = 8 samples of a pass
    with pytest.raises(XrayfmError, match="dataset of 3 samples is smaller than the 4 processes"):
        steps_per_epoch(cfg, 3, world_size=4)


def test_epochs_resolve_to_steps_with_accumulation_and_processes() -> None:
    cfg = TrainConfig(steps=1000, warmup_steps=100, batch_size=8, accumulate=2, epochs=3, warmup_epochs=0.5)
    one = resolve_steps(cfg, 1000)  # ceil(1000 / 16) = 63 steps an epoch
    assert (one.steps, one.warmup_steps) == (189, 32)
    four = resolve_steps(cfg, 1000, world_size=4)  # 250 samples a rank: ceil(250 / 16) = 16
    assert (four.steps, four.warmup_steps) == (48, 8)
    assert (four.epochs, four.warmup_epochs) == (3, 0.5) and resolve_steps(four, 1000, world_size=4) == four
    assert (cfg.steps, cfg.warmup_steps) == (1000, 100)  # the caller's config is left alone


def test_fractional_epochs_round_up_but_not_float_noise() -> None:
    cfg = TrainConfig(batch_size=1, epochs=1.1, warmup_epochs=0.1)
    resolved = resolve_steps(cfg, 100)
    assert 1.1 * 100 > 110 and (resolved.steps, resolved.warmup_steps) == (110, 10)
    assert resolve_steps(replace(cfg, epochs=0.001), 100).steps == 1  # at least one step
    assert resolve_steps(replace(cfg, epochs=0.015), 100).steps == 2  # a started step counts


def test_warmup_epochs_alone_keep_the_steps() -> None:
    resolved = resolve_steps(TrainConfig(steps=40, batch_size=5, warmup_epochs=1), 50)
    assert (resolved.steps, resolved.warmup_steps) == (40, 10)


def test_neither_steps_nor_epochs_is_an_error() -> None:
    with pytest.raises(XrayfmError, match="steps must be at least 1, or set epochs"):
        resolve_steps(TrainConfig(steps=0), 10)
    assert resolve_steps(TrainConfig(steps=0, epochs=1, batch_size=5), 10).steps == 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xrayfm train-test")
    add_run_args(p, out="runs/x")
    add_engine_args(p, steps=1000, batch=32, lr=3e-4, warmup=100, clip=3.0)
    return p


def test_cli_choices_are_the_engines() -> None:
    assert (cli_args.OPTIMIZERS, cli_args.SCHEDULES) == (OPTIMIZERS, SCHEDULES)


def test_engine_options_parse_to_the_config() -> None:
    argv = [
        "--optimizer", "sgd", "--momentum", "0.95", "--nesterov", "--schedule", "poly", "--poly-power", "0.9",
        "--min-lr", "0", "--epochs", "2.5", "--warmup-epochs", "0.5", "--betas", "0.9, 0.999", "--lr", "0.01",
    ]  # fmt: skip
    cfg = train_config(_parser().parse_args(argv))
    assert (cfg.optimizer, cfg.momentum, cfg.nesterov, cfg.schedule, cfg.poly_power) == ("sgd", 0.95, True, "poly", 0.9)
    assert (cfg.min_lr, cfg.epochs, cfg.warmup_epochs, cfg.betas, cfg.lr) == (0.0, 2.5, 0.5, (0.9, 0.999), 0.01)
    assert train_config(_parser().parse_args([])) == TrainConfig(out_dir="runs/x", steps=1000, clip_grad=3.0)


@pytest.mark.parametrize("betas", ["0.9", "0.9,0.99,0.999", "a,b", ""])
def test_malformed_betas_are_a_clear_error(betas: str) -> None:
    args = _parser().parse_args(["--betas", betas])
    with pytest.raises(XrayfmError, match=r"--betas must be two numbers B1,B2 such as 0.9,0.999, got '.*'"):
        train_config(args)


def test_out_of_range_values_from_the_command_line_are_xrayfm_errors() -> None:
    with pytest.raises(XrayfmError, match=r"betas must be two numbers in \[0, 1\)"):
        train_config(_parser().parse_args(["--betas", "0.9,1.5"]))
    with pytest.raises(XrayfmError, match="min_lr must be between 0 and lr"):
        train_config(_parser().parse_args(["--lr", "1e-7"]))


@pytest.mark.parametrize("flag", ["--optimizer", "--schedule"])
def test_unknown_optimizer_or_schedule_is_refused_by_the_parser(flag: str, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        _parser().parse_args([flag, "lamb"])
    assert info.value.code == 2 and f"argument {flag}: invalid choice: 'lamb'" in capsys.readouterr().err


def test_a_run_config_round_trips_through_config(tmp_path: Path) -> None:
    cfg = TrainConfig(
        out_dir=str(tmp_path / "run"), steps=0, epochs=4, warmup_epochs=1.5, optimizer="sgd", momentum=0.7,
        nesterov=True, schedule="poly", poly_power=0.9, min_lr=0.0, lr=0.02, betas=(0.85, 0.995), accumulate=2,
        weight_decay=1e-4, devices=2,
    )  # fmt: skip
    path = write_run_config(tmp_path / "config.yaml", engine_options(cfg))
    assert "betas:\n- 0.85\n- 0.995\n" in path.read_text()
    assert train_config(parse_with_recipe(_parser(), ["--config", str(path)])) == cfg
    assert train_config(parse_with_recipe(_parser(), ["--config", str(path), "--epochs", "1"])).epochs == 1


@pytest.mark.parametrize("text", ["betas: [0.9, 0.999]", 'betas: "0.9,0.999"', "betas: 0.9,0.999"])
def test_a_recipe_gives_betas_as_a_list_or_text(tmp_path: Path, text: str) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"{text}\nschedule: constant\nwarmup_epochs: 5\n")
    cfg = train_config(parse_with_recipe(_parser(), ["--config", str(recipe)]))
    assert (cfg.betas, cfg.schedule, cfg.warmup_epochs) == ((0.9, 0.999), "constant", 5.0)


def test_a_recipe_with_an_unknown_schedule_names_the_file(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("schedule: step\n")
    with pytest.raises(
        XrayfmError, match=r"recipe.yaml: schedule='step' is not one of \['cosine', 'constant', 'poly'\]"
    ):
        parse_with_recipe(_parser(), ["--config", str(recipe)])


def test_global_batch_sets_accumulation_for_the_world_size() -> None:
    cfg = TrainConfig(batch_size=32, global_batch=1024)
    assert resolve_accumulate(cfg, 1).accumulate == 32
    assert resolve_accumulate(cfg, 4).accumulate == 8
    once = resolve_accumulate(cfg, 4)
    assert resolve_accumulate(once, 4) == once  # a resumed run resolves to the same numbers
    # epochs count optimiser steps of the global batch: 2048 images -> 2 steps per epoch
    assert resolve_steps(TrainConfig(steps=0, epochs=3, batch_size=32, global_batch=1024), 2048, 2).steps == 6


def test_global_batch_errors_name_the_problem() -> None:
    with pytest.raises(XrayfmError, match="not a multiple of batch size 48"):
        resolve_accumulate(TrainConfig(batch_size=48, global_batch=1024), 1)
    with pytest.raises(XrayfmError, match="accumulate 3 contradicts global batch 1024"):
        resolve_accumulate(TrainConfig(batch_size=32, accumulate=3, global_batch=1024), 1)
    with pytest.raises(XrayfmError, match="global_batch"):
        TrainConfig(global_batch=-1)
