"""`xrayfm pretrain mim` as a user runs it: pixel target, then the result as the next teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_runner import run

from xrayfm.models import create_model


@pytest.mark.slow  # minutes on 2 cores; the README pretraining blocks run pixel and teacher MIM by default
def test_pixel_then_distilled_pretraining_and_export(tmp_path: Path) -> None:
    data, run1, run2 = tmp_path / "ph", tmp_path / "run1", tmp_path / "run2"
    assert run("phantom", str(data), "-n", "24", "--size", "64").returncode == 0
    common = ["--img-size", "64", "--batch-size", "4", "--warmup", "2", "--log-every", "1", "--checkpoint-every", "3"]
    res = run("pretrain", "mim", "phantom", str(data), "--out", str(run1), "--steps", "6", *common)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "exported backbone" in res.stdout
    sidecar = json.loads((run1 / "export" / "backbone.json").read_text())
    assert sidecar["arch"] == "eva_x_tiny_patch16" and sidecar["provenance"]["target"] == "pixel"
    assert sidecar["preprocess"]["mean"] == 0.49185243 and sidecar["preprocess"]["input_size"] == 64
    res = run(
        "pretrain", "mim", "phantom", str(data), "--out", str(run2), "--steps", "3", "--teacher", str(run1), *common
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((run2 / "export" / "backbone.json").read_text())["provenance"]["target"] == "teacher"
    rows = (run2 / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,loss,lr,images_per_s" and len(rows) == 4
    model = create_model("eva_x_tiny_patch16", pretrained=run2, num_classes=3).eval()
    ckpt = torch.load(run2 / "last.ckpt", weights_only=False)["objective"]
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight, ckpt["student.blocks.0.attn.qkv.weight"])
    torch.testing.assert_close(model.fc_norm.weight, ckpt["student.norm.weight"])  # MIM norm -> fine-tune fc_norm
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 3)


def test_bad_dataset_is_one_clear_line(tmp_path: Path) -> None:
    res = run("pretrain", "mim", "phantom", str(tmp_path / "nope"), "--out", str(tmp_path / "r"))
    assert res.returncode == 2 and "Traceback" not in res.stderr and "not a directory" in res.stderr
