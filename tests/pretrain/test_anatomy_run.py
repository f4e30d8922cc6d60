"""Adam stages on the engine: chaining, the command line, exact resume after a kill, the paper recipe."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import xrayfm
from xrayfm.cli import build_parser, main
from xrayfm.cli.args import train_config
from xrayfm.cli.pretrain import parse_stages
from xrayfm.cli.recipes import parse_with_recipe
from xrayfm.data.phantom_io import write_phantom_dataset
from xrayfm.errors import XrayfmError
from xrayfm.models import create_model
from xrayfm.pretrain import anatomy_run
from xrayfm.pretrain.anatomy_run import STAGE_WEIGHTS, run_anatomy
from xrayfm.train import TrainConfig

TINY = {"arch": "resnet18", "img_size": 32, "queue_size": 16, "moco_dim": 8, "split_bn": 2}


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("ph") / "data", n=12, seed=0, size=64)


def _cfg(out: Path, steps: int = 2) -> TrainConfig:
    return TrainConfig(
        out_dir=str(out), steps=steps, batch_size=4, optimizer="sgd", lr=0.03, weight_decay=1e-4, warmup_steps=0,
        clip_grad=0.0, accelerator="cpu", precision="32-true", checkpoint_every=1, log_every=1,
    )  # fmt: skip


def test_each_stage_starts_from_the_previous_stage_selected_state(
    phantom: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry: dict[str, dict[str, torch.Tensor]] = {}
    real_train = anatomy_run.train

    def recording_train(objective, dataset, cfg, **kwargs):
        entry[Path(cfg.out_dir).name] = {k: v.clone() for k, v in objective.state_dict().items()}
        assert objective.prune_threshold == (None if cfg.out_dir.endswith("n0") else 0.8)
        return real_train(objective, dataset, cfg, **kwargs)

    monkeypatch.setattr(anatomy_run, "train", recording_train)
    run_anatomy("phantom", phantom, stages=(0, 2), carry_queue=True, train_config=_cfg(tmp_path, steps=1), **TINY)
    final_n0 = load_file(str(tmp_path / "stage_n0" / STAGE_WEIGHTS))
    assert set(entry) == {"stage_n0", "stage_n2"}
    for key, value in final_n0.items():  # encoders, heads, queue and pointer carried over
        assert torch.equal(entry["stage_n2"][key], value), key
    assert not torch.equal(entry["stage_n0"]["encoder_q.conv1.weight"], final_n0["encoder_q.conv1.weight"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [s["granularity"] for s in summary["stages"]] == [0, 2] and summary["steps"] == 2
    assert all(s["val_loss"] is not None and s["val_loss"] > 0 for s in summary["stages"])


def test_without_carry_queue_a_stage_starts_with_a_fresh_queue(phantom: Path, tmp_path: Path, monkeypatch) -> None:
    queues: list[torch.Tensor] = []
    real_train = anatomy_run.train

    def recording_train(objective, dataset, cfg, **kwargs):
        queues.append(objective.queue.clone())
        assert int(objective.queue_ptr) == 0
        return real_train(objective, dataset, cfg, **kwargs)

    monkeypatch.setattr(anatomy_run, "train", recording_train)
    run_anatomy("phantom", phantom, stages=(0, 2), train_config=_cfg(tmp_path, steps=1), **TINY)
    assert not torch.equal(load_file(str(tmp_path / "stage_n0" / STAGE_WEIGHTS))["queue"], queues[1])


@pytest.mark.slow
def test_command_line_runs_two_stages_and_writes_a_config_it_runs_again(phantom: Path, tmp_path: Path) -> None:
    out = tmp_path / "adam"
    argv = ["pretrain", "anatomy", "phantom", str(phantom), "--out", str(out), "--stages", "0,2", "--arch",
            "resnet18", "--img-size", "32", "--queue-size", "16", "--moco-dim", "8", "--split-bn", "2", "--grid",
            "pow2", "--steps", "2", "--batch-size", "4", "--accelerator", "cpu", "--precision", "32-true",
            "--checkpoint-every", "2", "--validate-every", "1", "--log-every", "1"]  # fmt: skip
    assert main(argv) == 0
    for stage in ("stage_n0", "stage_n2"):
        assert {"last.ckpt", "metrics.csv", "stage.json", STAGE_WEIGHTS, "export"} <= {
            p.name for p in (out / stage).iterdir()
        }
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stages"][1]["grid"] == "pow2" and summary["stages"][1]["prune_threshold"] == 0.8
    model = create_model("resnet18", pretrained=out, num_classes=0)
    stage = create_model("resnet18", pretrained=out / "stage_n2", num_classes=0)
    for a, b in zip(model.state_dict().values(), stage.state_dict().values()):
        assert torch.equal(a, b)  # the run's export is the last stage's
    args = parse_with_recipe(build_parser(), ["pretrain", "anatomy", "--config", str(out / "config.yaml"), "phantom",
                                              str(phantom)])  # fmt: skip
    assert parse_stages(args.stages) == (0, 2) and args.grid == "pow2" and args.split_bn == 2
    assert args.validate_every == 1 and summary["stages"][0]["best_step"] in (1, 2)
    assert len((out / "stage_n0" / "val_metrics.csv").read_text().splitlines()) == 1 + 2  # validated every step
    assert train_config(args).optimizer == "sgd" and train_config(args).weight_decay == 1e-4
    assert main(argv) == 0  # a rerun skips the finished stages
    assert json.loads((out / "summary.json").read_text())["stages"] == summary["stages"]


@pytest.mark.slow
def test_a_run_killed_mid_stage_resumes_to_the_same_weights(phantom: Path, tmp_path: Path, monkeypatch) -> None:
    run_anatomy("phantom", phantom, stages=(0, 2), train_config=_cfg(tmp_path / "straight", steps=3), **TINY)

    class Crash(RuntimeError):
        pass

    calls = {"n": 0}
    real_views = anatomy_run._views

    def crash_in_stage_two(batch):
        calls["n"] += 1
        if calls["n"] == 9:  # stage n=0: 3 steps of a training and a validation batch; n=2 dies after its first step
            raise Crash
        return real_views(batch)

    monkeypatch.setattr(anatomy_run, "_views", crash_in_stage_two)
    with pytest.raises(Crash):
        run_anatomy("phantom", phantom, stages=(0, 2), train_config=_cfg(tmp_path / "killed", steps=3), **TINY)
    monkeypatch.setattr(anatomy_run, "_views", real_views)
    assert (tmp_path / "killed" / "stage_n0" / "stage.json").is_file()
    assert not (tmp_path / "killed" / "stage_n2" / "stage.json").exists()
    run_anatomy("phantom", phantom, stages=(0, 2), train_config=_cfg(tmp_path / "killed", steps=3), **TINY)
    stage = json.loads((tmp_path / "killed" / "stage_n2" / "stage.json").read_text())
    assert stage["resumed_from_checkpoint"] and stage["steps_this_call"] == 2
    ref = load_file(str(tmp_path / "straight" / "stage_n2" / STAGE_WEIGHTS))
    got = load_file(str(tmp_path / "killed" / "stage_n2" / STAGE_WEIGHTS))
    for key in ref:  # query and key encoders, heads, queue and pointer
        assert torch.equal(ref[key], got[key]), f"{key} differs after resume"


def test_bad_stages_and_fsdp_are_refused(phantom: Path, tmp_path: Path) -> None:
    with pytest.raises(XrayfmError, match="stages"):
        run_anatomy("phantom", phantom, stages=(0, 0), train_config=_cfg(tmp_path))
    with pytest.raises(XrayfmError, match="fsdp"):
        run_anatomy("phantom", phantom, train_config=TrainConfig(out_dir=str(tmp_path), strategy="fsdp"))
    with pytest.raises(XrayfmError, match="--stages"):
        parse_stages("0,two")


RECIPE = Path(xrayfm.__file__).parent / "configs" / "adam_resnet50.yaml"
#: The official values: option -> (value as the command parses it, citation its line must hold).
PINS = {
    "stages": ((0, 2, 4), "Adam-v1/run.sh:3,5,8"),
    "arch": ("resnet50", "Adam-v1/main.py:36"),
    "img_size": (224, "Adam-v1/data_loader.py:21"),
    "grid": ("nxn", "Adam-v1/data_loader.py:58-62"),
    "moco_dim": (128, "Adam-v1/main.py:54"),
    "queue_size": (65536, "Adam-v1/main.py:55"),
    "momentum_key": (0.999, "Adam-v1/main.py:56"),
    "temperature": (0.2, "Adam-v1/run.sh:3 --moco-t 0.2"),
    "prune_threshold": (0.8, "Adam-v1/run.sh:3 --sim_threshold 0.8"),
    "carry_queue": (True, "Adam-v1/main.py:139-146"),
    "split_bn": (64, "xrayfm:"),
    "brightness": (0.4, "Adam-v1/data_loader.py:23"),
    "contrast": (0.4, "Adam-v1/data_loader.py:23"),
    "jitter_p": (0.8, "Adam-v1/data_loader.py:22-24"),
    "epochs": (200.0, "Adam-v1/run.sh:3 --epochs 200"),
    "global_batch": (256, "Adam-v1/main.py:40"),
    "batch_size": (256, "xrayfm:"),
    "optimizer": ("sgd", "Adam-v1/main.py:183-185"),
    "lr": (0.03, "Adam-v1/main.py:41"),
    "momentum": (0.9, "Adam-v1/main.py:44"),
    "weight_decay": (1e-4, "Adam-v1/main.py:42"),
    "schedule": ("cosine", "Adam-v1/run.sh:3 --cos"),
    "min_lr": (0.0, "Adam-v1/utils.py:52"),
    "warmup": (0, "Adam-v1/utils.py:48-57"),
    "clip_grad": (0.0, "Adam-v1/engine.py:37-39"),
    "precision": ("auto", "xrayfm:"),
    "checkpoint_every": (1000, "xrayfm:"),
    "log_every": (50, "xrayfm:"),
}


def test_the_adam_recipe_holds_the_official_values_with_their_citations() -> None:
    lines = dict(re.findall(r"^([a-z_]+):.*?#\s*(.+)$", RECIPE.read_text(), flags=re.MULTILINE))
    assert set(lines) == set(PINS)
    args = parse_with_recipe(build_parser(), ["pretrain", "anatomy", "--config", "adam_resnet50", "nih_cxr14", "R"])
    for key, (value, citation) in PINS.items():
        assert citation in lines[key], f"{key}: {lines[key]!r} lacks {citation!r}"
        got = parse_stages(getattr(args, key)) if key == "stages" else getattr(args, key)
        assert got == pytest.approx(value) if isinstance(value, float) else got == value, key
    cfg = train_config(args)
    assert (cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.global_batch, cfg.warmup_steps) == ("sgd", 0.03, 1e-4, 256, 0)
    assert yaml.safe_load(RECIPE.read_text())["stages"] == "0,2,4"
