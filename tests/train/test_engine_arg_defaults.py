"""Each training command's help states the optimiser and weight decay it really uses."""

from __future__ import annotations

import argparse

import pytest

from xrayfm.cli import build_parser
from xrayfm.cli.args import train_config


def _command(argv: list[str]) -> argparse.ArgumentParser:
    """The parser of the subcommand ``argv`` names (e.g. ``["pretrain", "anatomy"]``)."""
    parser = build_parser()
    for name in argv:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser


@pytest.mark.parametrize(
    ("argv", "optimizer", "weight_decay", "shown"),
    [
        (["pretrain", "anatomy"], "sgd", 1e-4, ("optimiser (default sgd)", "weight decay (default 0.0001)")),
        (["pretrain", "mim"], "adamw", 0.05, ("optimiser (default adamw)", "weight decay (default 0.05)")),
        (["finetune"], "adamw", 0.05, ("optimiser (default adamw)", "weight decay (default 0.05)")),
    ],
)
def test_help_shows_the_defaults_a_run_gets(argv: list[str], optimizer: str, weight_decay: float, shown) -> None:
    parser = _command(argv)
    text = " ".join(parser.format_help().split())  # argparse wraps lines
    assert all(s in text for s in shown), text
    assert (parser.get_default("optimizer"), parser.get_default("weight_decay")) == (optimizer, weight_decay)


def test_anatomy_runs_get_sgd_and_its_decay() -> None:
    cfg = train_config(build_parser().parse_args(["pretrain", "anatomy", "phantom", "R"]))
    assert (cfg.optimizer, cfg.weight_decay) == ("sgd", 1e-4)
