"""A library MIM run records its settings as ``xrayfm pretrain mim`` options in ``OUT/config.yaml``,
and says truthfully what it trained: method, target, teacher, steps and seconds."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml

from xrayfm.cli import build_parser
from xrayfm.cli.args import train_config
from xrayfm.cli.recipes import parse_options, parse_with_recipe
from xrayfm.data.phantom_io import write_phantom_dataset
from xrayfm.models import Preprocess, create_model
from xrayfm.models.export import export_backbone
from xrayfm.pretrain.mim_run import EVA_X_MIM, PIXEL_BASELINE, run_mim
from xrayfm.train import TrainConfig


def test_run_mim_writes_a_config_the_command_line_runs_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = write_phantom_dataset(tmp_path / "ph", n=12, seed=0, size=48)
    cfg = TrainConfig(
        out_dir=str(tmp_path / "mim"), steps=2, batch_size=4, lr=2e-4, warmup_steps=1, clip_grad=1.5, seed=3,
        accelerator="cpu", precision="32-true", checkpoint_every=2, log_every=1,
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="xrayfm"):
        run_mim(
            "phantom", data, img_size=32, mask_ratio=0.4, std=0.25, dataset_options={"missing": "skip"},
            train_config=cfg,
        )  # fmt: skip
    assert any(r.levelno == logging.WARNING and PIXEL_BASELINE in r.getMessage() for r in caplog.records)
    path = tmp_path / "mim" / "config.yaml"
    saved = yaml.safe_load(path.read_text())
    assert saved["mask_ratio"] == 0.4 and saved["img_size"] == 32 and saved["warmup"] == 1 and "mean" not in saved

    args = parse_with_recipe(build_parser(), ["pretrain", "mim", "--config", str(path), "phantom", str(data)])
    assert train_config(args) == cfg
    assert parse_options(args.option) == {"missing": "skip"}
    assert (args.arch, args.img_size, args.mask_ratio, args.mean, args.std, args.teacher, args.grad_checkpointing) == (
        "eva_x_tiny_patch16", 32, 0.4, None, 0.25, None, False,
    )  # fmt: skip
    assert (args.teacher_layout, args.teacher_img_size) == ("auto", None)

    summary = json.loads((tmp_path / "mim" / "summary.json").read_text())
    sidecar = json.loads((tmp_path / "mim" / "export" / "backbone.json").read_text())["provenance"]
    for facts in (summary, sidecar):
        assert (facts["method"], facts["target"], facts["teacher"]) == (PIXEL_BASELINE, "pixel", None)
        assert facts["steps"] == 2 and facts["seconds"] > 0 and facts["resumed_from_checkpoint"] is False


def test_teacher_run_records_its_teacher_and_the_steps_its_epochs_became(tmp_path: Path) -> None:
    data = write_phantom_dataset(tmp_path / "ph", n=12, seed=0, size=48)
    teacher = create_model("eva_x_tiny_patch16", num_classes=0, img_size=48, depth=1)
    export_backbone(teacher, tmp_path / "t", arch="eva_x_tiny_patch16", preprocess=Preprocess(48, mean=0.3, std=0.2),
                    info={"model_kwargs": {"img_size": 48, "depth": 1}})  # fmt: skip
    out = tmp_path / "s"
    cfg = TrainConfig(out_dir=str(out), steps=0, epochs=1, batch_size=4, warmup_steps=1, accelerator="cpu",
                      precision="32-true", log_every=1)  # fmt: skip
    run_mim("phantom", data, img_size=32, teacher=str(tmp_path / "t"), train_config=cfg)

    summary = json.loads((out / "summary.json").read_text())
    last_step = int((out / "metrics.csv").read_text().splitlines()[-1].split(",")[0])
    assert summary["steps"] == last_step >= 1  # the engine's steps from the epoch, not cfg.steps (0)
    assert (summary["method"], summary["target"]) == (EVA_X_MIM, "teacher") and summary["seconds"] > 0
    assert summary["teacher"] == {
        "source": str(tmp_path / "t"), "layout": "xrayfm", "arch": "eva_x_tiny_patch16", "input_size": 48,
        "channels": 3, "interpolation": "bilinear", "mean": [0.3] * 3, "std": [0.2] * 3,
    }  # fmt: skip
    sidecar = json.loads((out / "export" / "backbone.json").read_text())["provenance"]
    assert sidecar["teacher"] == summary["teacher"] and sidecar["steps"] == last_step
