"""A library MIM run records its settings as ``xrayfm pretrain mim`` options in ``OUT/config.yaml``."""

from __future__ import annotations

from pathlib import Path

import yaml

from xrayfm.cli import build_parser
from xrayfm.cli.args import train_config
from xrayfm.cli.recipes import parse_options, parse_with_recipe
from xrayfm.data.phantom_io import write_phantom_dataset
from xrayfm.pretrain.mim_run import run_mim
from xrayfm.train import TrainConfig


def test_run_mim_writes_a_config_the_command_line_runs_again(tmp_path: Path) -> None:
    data = write_phantom_dataset(tmp_path / "ph", n=12, seed=0, size=48)
    cfg = TrainConfig(
        out_dir=str(tmp_path / "mim"), steps=2, batch_size=4, lr=2e-4, warmup_steps=1, clip_grad=1.5, seed=3,
        accelerator="cpu", precision="32-true", checkpoint_every=2, log_every=1,
    )  # fmt: skip
    run_mim(
        "phantom", data, img_size=32, mask_ratio=0.4, std=0.25, dataset_options={"missing": "skip"}, train_config=cfg
    )
    path = tmp_path / "mim" / "config.yaml"
    saved = yaml.safe_load(path.read_text())
    assert saved["mask_ratio"] == 0.4 and saved["img_size"] == 32 and saved["warmup"] == 1 and "mean" not in saved

    args = parse_with_recipe(build_parser(), ["pretrain", "mim", "--config", str(path), "phantom", str(data)])
    assert train_config(args) == cfg
    assert parse_options(args.option) == {"missing": "skip"}
    assert (args.arch, args.img_size, args.mask_ratio, args.mean, args.std, args.teacher, args.grad_checkpointing) == (
        "eva_x_tiny_patch16", 32, 0.4, None, 0.25, None, False,
    )  # fmt: skip
