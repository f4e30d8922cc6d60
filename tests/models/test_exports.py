"""Exported backbones and task models: the input sizes a loaded export takes, and file modes."""

from __future__ import annotations

import stat
from pathlib import Path

import torch

from xrayfm.models import create_model
from xrayfm.models.export import export_backbone
from xrayfm.models.preprocess import Preprocess
from xrayfm.models.task_checkpoint import save_task_model
from xrayfm.models.task_model import XrayModel
from xrayfm.tasks import TaskSpec


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_run_export_takes_any_multiple_of_the_patch_and_the_callers_img_size(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("eva_x_tiny_patch16", num_classes=0, img_size=64).eval()
    export_backbone(model, tmp_path, arch="eva_x_tiny_patch16", preprocess=Preprocess(64),
                    info={"model_kwargs": {"img_size": 64}})  # fmt: skip
    loaded = create_model("eva_x_tiny_patch16", pretrained=tmp_path, num_classes=0).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)  # the run's size: the run's weights
        assert loaded(torch.rand(1, 3, 224, 224)).shape == (1, 192)  # another size works too
    resized = create_model("eva_x_tiny_patch16", pretrained=tmp_path, num_classes=0, img_size=96)
    assert resized.patch_embed.img_size == (96, 96) and resized.pos_embed.shape[1] == 1 + 6 * 6


def test_saved_weights_follow_the_umask(tmp_path: Path, umask_022: None) -> None:
    backbone = create_model("eva_x_tiny_patch16", num_classes=0, img_size=32)
    export_backbone(backbone, tmp_path / "export", arch="eva_x_tiny_patch16", preprocess=Preprocess(32),
                    info={"model_kwargs": {"img_size": 32}})  # fmt: skip
    model = XrayModel(backbone, [TaskSpec("findings", "multilabel", ("a", "b"))])
    save_task_model(model, tmp_path / "model", arch="eva_x_tiny_patch16", model_kwargs={"img_size": 32}, info={})
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"backbone.safetensors", "model.safetensors", "model.json"}
    assert {p.name: mode(p) for p in files} == {p.name: 0o644 for p in files}
