"""A library fine-tuning run records its settings as ``xrayfm finetune`` options in ``OUT/config.yaml``."""

from __future__ import annotations

from pathlib import Path

import yaml

from xrayfm.cli import build_parser
from xrayfm.cli.finetune import finetune_config
from xrayfm.cli.recipes import parse_with_recipe
from xrayfm.data.phantom_io import write_phantom_dataset
from xrayfm.finetune.modes import LoraSettings
from xrayfm.finetune.run import FinetuneConfig, run_finetune
from xrayfm.train import TrainConfig


def test_run_finetune_writes_a_config_the_command_line_runs_again(tmp_path: Path) -> None:
    data = write_phantom_dataset(tmp_path / "ph", n=20, seed=0, size=48)
    cfg = FinetuneConfig(
        dataset="phantom", root=str(data), dataset_options={"missing": "skip"}, tasks=["labels"],
        img_size=32, mode="lora", lora=LoraSettings(rank=2, alpha=4.0), layer_decay=None, drop_path=0.0,
        allow_empty_classes=True, pos_weight="auto", flip=0.0, eval_splits=("test",), n_boot=5, threshold=0.4,
        train=TrainConfig(
            out_dir=str(tmp_path / "ft"), steps=1, batch_size=4, lr=2e-3, warmup_steps=1, clip_grad=0.0,
            accelerator="cpu", precision="32-true", checkpoint_every=1, log_every=1, seed=2,
        ),
    )  # fmt: skip
    run_finetune(cfg)
    path = tmp_path / "ft" / "config.yaml"
    saved = yaml.safe_load(path.read_text())
    assert saved["task"] == ["labels"] and saved["mode"] == "lora" and saved["layer_decay"] == 1.0
    assert "pretrained" not in saved and "decoder" not in saved  # None: the options' defaults

    args = parse_with_recipe(build_parser(), ["finetune", "--config", str(path), "phantom", str(data)])
    assert finetune_config(args) == cfg
