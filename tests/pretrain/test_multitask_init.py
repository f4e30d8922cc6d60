"""``xrayfm pretrain multitask --init``: a run that starts from a Foundation X checkpoint.

The checkpoint is written from random weights of a small Swin under Swin-B's names (timm's layout; the
reference's old layout is covered by tests/models/test_foundation_x_weights.py); the run builds that small
Swin for ``--arch swin_base_patch4_window7_224`` through a ``create_model`` that adds its sizes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn

from xrayfm.cli import main
from xrayfm.data.phantom_io import write_phantom_dataset
from xrayfm.models import create_model
from xrayfm.models.export import export_backbone
from xrayfm.models.foundation_x_weights import FOUNDATION_X_ARCH
from xrayfm.models.preprocess import resolve_preprocess
from xrayfm.pretrain import multitask_export, multitask_run
from xrayfm.pretrain.multitask_export import load_multitask_model
from xrayfm.pretrain.multitask_run import run_multitask
from xrayfm.train import TrainConfig

#: Swin-B's names at a CPU size (stage 4 is one 2x2 window at 64 px, where always_partition matters).
SIZES = {"embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1), "window_size": 2}
CLASSES = ["nodule", "effusion", "pneumothorax", "cardiomegaly", "consolidation"]
ENGINE = ["--batch-size", "2", "--accelerator", "cpu", "--precision", "32-true", "--checkpoint-minutes", "0"]


@pytest.fixture(autouse=True)
def small_swin(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run and the model loader build Swin-B's names at :data:`SIZES`."""

    def small(name: str, *args: Any, **kwargs: Any) -> nn.Module:
        return create_model(name, *args, **{**SIZES, **kwargs})

    monkeypatch.setattr(multitask_run, "create_model", small)
    monkeypatch.setattr(multitask_export, "create_model", small)


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One classification unit on a dataset named as Foundation X's head 7 (nih_cxr14)."""
    folder = tmp_path_factory.mktemp("init")
    phantom = write_phantom_dataset(folder / "phantom", n=8, seed=0, size=64)
    data = {
        "datasets": {"nih_cxr14": {
            "adapter": "csv", "root": str(phantom), "options": {"label_columns": CLASSES, "boxes_file": None},
            "tasks": {"findings": {"kind": "multilabel", "classes": CLASSES}},
        }},
        "cycle": [{"dataset": "nih_cxr14", "task": "findings", "steps": 2}],
        "cycles": 1,
    }  # fmt: skip
    (folder / "recipe.yaml").write_text(yaml.safe_dump(data))
    return folder / "recipe.yaml"


def random_entry(seed: int) -> dict[str, torch.Tensor]:
    """A Foundation X entry: the Swin under ``backbone.0.`` and a head 7 of :data:`CLASSES`, all random."""
    swin = create_model(FOUNDATION_X_ARCH, num_classes=0, always_partition=True, img_size=64, **SIZES)
    torch.manual_seed(seed)
    state = {f"backbone.0.{k}": torch.randn_like(v) * 0.1 for k, v in swin.state_dict().items()}
    dim = swin.num_features
    state |= {"backbone.0.classification_heads.7.weight": torch.randn(len(CLASSES), dim),
              "backbone.0.classification_heads.7.bias": torch.randn(len(CLASSES))}  # fmt: skip
    return state


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fx") / "ckpt_E380_TH1.pth"
    torch.save({"model": random_entry(1), "teacher_model": random_entry(0), "optimizer": {}, "epoch": 380}, path)
    return path


@pytest.fixture
def starts(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, torch.Tensor]]:
    """Student and teacher weights as training begins (before a resumed run loads its checkpoint)."""
    seen: dict[str, dict[str, torch.Tensor]] = {}
    real = multitask_run.train

    def recording(objective: nn.Module, *args: Any, **kwargs: Any) -> dict[str, Any]:
        for role, model in (("student", objective.objective.model), ("teacher", objective.objective.teacher.model)):
            seen[role] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return real(objective, *args, **kwargs)

    monkeypatch.setattr(multitask_run, "train", recording)
    return seen


def expected(entry: dict[str, torch.Tensor], model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``entry`` under the multi-task model's names (backbone and the nih_cxr14 head)."""
    out = {f"backbone.{k.removeprefix('backbone.0.')}": v for k, v in entry.items() if "classification" not in k}
    head = "backbone.0.classification_heads.7"
    out |= {f"heads.nih_cxr14.findings.fc.{p}": entry[f"{head}.{p}"] for p in ("weight", "bias")}
    assert out.keys() <= model_state.keys()
    return out


def partitions(model: nn.Module) -> bool:
    return all(b.always_partition for layer in model.layers for b in layer.blocks)


def test_init_from_the_command_line_starts_student_and_teacher_and_the_outputs_rebuild_the_swin(
    recipe: Path, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], starts: dict
) -> None:
    out = tmp_path / "run"
    argv = ["pretrain", "multitask", str(recipe), "--out", str(out), "--arch", FOUNDATION_X_ARCH, "--img-size", "64"]
    assert main([*argv, *ENGINE, "--steps", "1", "--init", str(checkpoint)]) == 0
    for role in ("student", "teacher"):
        for name, value in expected(random_entry(0), starts[role]).items():
            assert torch.equal(starts[role][name], value), (role, name)
    logged = capsys.readouterr().err
    assert f"init: {checkpoint} [teacher_model]" in logged
    assert "init: loaded   backbone.0.classification_heads.7 (2) -> heads.nih_cxr14.findings" in logged
    assert (out / "init.txt").read_text().splitlines()[0] == f"{checkpoint} [teacher_model]"
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["init"] == str(checkpoint) and config["init_student"] is False
    for sidecar in (out / "export" / "backbone.json", out / "model" / "multitask.json"):
        assert json.loads(sidecar.read_text())["model_kwargs"]["always_partition"] is True, sidecar
    model, _ = load_multitask_model(out)
    exported = create_model(FOUNDATION_X_ARCH, pretrained=out, num_classes=0, **SIZES)
    assert partitions(model.backbone) and partitions(exported)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["init"] == str(checkpoint) and summary["init_weights"] == "teacher"


def test_a_resumed_run_continues_from_its_checkpoint_without_reading_init_again(
    recipe: Path, checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, starts: dict
) -> None:
    cfg = TrainConfig(batch_size=2, accelerator="cpu", precision="32-true", checkpoint_minutes=0)
    settings = {"arch": FOUNDATION_X_ARCH, "img_size": 64, "init": checkpoint, "init_student": True}
    run_multitask(recipe, tmp_path, cfg, max_steps=1, **settings)
    for name, value in expected(random_entry(1), starts["student"]).items():  # the checkpoint's student
        assert torch.equal(starts["student"][name], value) and torch.equal(starts["teacher"][name], value), name
    after_one = load_multitask_model(tmp_path)[0].state_dict()

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a resumed run read --init again")

    monkeypatch.setattr(multitask_run, "load_foundation_x", refuse)
    run_multitask(recipe, tmp_path, cfg, **settings)  # the rest of the schedule, from last.ckpt
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["resumed_from_checkpoint"] and summary["steps_this_call"] == 1 and summary["steps"] == 2
    resumed = load_multitask_model(tmp_path)[0]
    assert partitions(resumed.backbone)
    assert not torch.equal(resumed.state_dict()["backbone.norm.weight"], after_one["backbone.norm.weight"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--arch", "resnet18", "--init", "fx.pth"], "fx.pth: a Foundation X / Ark-6 checkpoint holds a Swin"),
     (["--init-student"], "give --init"),
     (["--init", "fx.pth", "--pretrained", "runs/mim"], "give either --init")],
)  # fmt: skip
def test_init_mistakes_are_refused_before_anything_is_written(
    recipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert main(["pretrain", "multitask", str(recipe), "--out", str(tmp_path / "out"), *ENGINE, *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_pretrained_starts_the_backbone_from_a_pretraining_export_and_the_heads_fresh(
    recipe: Path, tmp_path: Path, starts: dict
) -> None:
    torch.manual_seed(7)
    source = create_model(FOUNDATION_X_ARCH, num_classes=0, **SIZES)
    export_backbone(source, tmp_path / "pre" / "export", arch=FOUNDATION_X_ARCH,
                    preprocess=resolve_preprocess(source, img_size=64), info={"model_kwargs": {"img_size": 64}})  # fmt: skip
    out = tmp_path / "run"
    argv = ["pretrain", "multitask", str(recipe), "--out", str(out), "--arch", FOUNDATION_X_ARCH, "--img-size", "64"]
    assert main([*argv, *ENGINE, "--steps", "1", "--pretrained", str(tmp_path / "pre")]) == 0
    for name, value in source.state_dict().items():
        for role in ("student", "teacher"):
            assert torch.equal(starts[role][f"backbone.{name}"], value), (role, name)
    assert yaml.safe_load((out / "config.yaml").read_text())["pretrained"] == str(tmp_path / "pre")
