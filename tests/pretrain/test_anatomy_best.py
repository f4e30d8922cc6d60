"""Adam stages select their weights on the validation loss: the best step is exported and handed on, survives a
kill, and validating changes nothing of the training state."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from xrayfm.data.phantom_io import write_phantom_dataset
from xrayfm.models import create_model
from xrayfm.pretrain import anatomy_run
from xrayfm.pretrain.anatomy_run import STAGE_WEIGHTS, run_anatomy
from xrayfm.train import TrainConfig

TINY = {"arch": "resnet18", "img_size": 32, "queue_size": 16, "moco_dim": 8, "split_bn": 2}
State = dict[str, torch.Tensor]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("ph") / "data", n=12, seed=0, size=64)


def _cfg(out: Path, steps: int = 3) -> TrainConfig:
    return TrainConfig(
        out_dir=str(out), steps=steps, batch_size=4, optimizer="sgd", lr=0.03, weight_decay=1e-4, warmup_steps=0,
        clip_grad=0.0, accelerator="cpu", precision="32-true", checkpoint_every=1, log_every=1,
    )  # fmt: skip


def _state(module: torch.nn.Module) -> State:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_same(a: State, b: State) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _scripted(monkeypatch: pytest.MonkeyPatch, losses: Iterator[float], snapshots: list[State]) -> None:
    """Stage validations return the next of ``losses`` and record the objective they saw."""

    def validation(moco, **kwargs) -> dict[str, float]:
        snapshots.append(_state(moco))
        return {"loss": next(losses)}

    monkeypatch.setattr(anatomy_run, "_validation_values", validation)


def test_each_stage_exports_and_hands_on_its_best_step(phantom: Path, tmp_path: Path, monkeypatch) -> None:
    snapshots: list[State] = []
    _scripted(monkeypatch, iter([3.0, 1.0, 2.0, 5.0, 0.5, 6.0]), snapshots)  # best: step 2 of each stage
    entry: dict[str, State] = {}
    real_train = anatomy_run.train

    def recording_train(objective, dataset, cfg, **kwargs):
        entry[Path(cfg.out_dir).name] = _state(objective)
        return real_train(objective, dataset, cfg, **kwargs)

    monkeypatch.setattr(anatomy_run, "train", recording_train)
    run_anatomy("phantom", phantom, stages=(0, 2), carry_queue=True, train_config=_cfg(tmp_path), **TINY)
    n0_best, n2_best = snapshots[1], snapshots[4]
    _assert_same(load_file(str(tmp_path / "stage_n0" / STAGE_WEIGHTS)), n0_best)  # queue and key encoder too
    assert not torch.equal(snapshots[2]["encoder_q.conv1.weight"], n0_best["encoder_q.conv1.weight"])
    _assert_same(entry["stage_n2"], n0_best)  # stage n=2 starts from n=0's best, not its last step
    encoder = {k.removeprefix("encoder_q."): v for k, v in n2_best.items() if k.startswith("encoder_q.")}
    for folder in (tmp_path / "stage_n2", tmp_path):  # the stage's export and the run's
        _assert_same(_state(create_model("resnet18", pretrained=folder, num_classes=0)), encoder)
    last = torch.load(tmp_path / "stage_n2" / "last.ckpt", weights_only=True)
    assert last["step"] == 3 and torch.equal(
        last["objective"]["encoder_q.conv1.weight"], snapshots[5]["encoder_q.conv1.weight"]
    )
    stages = json.loads((tmp_path / "summary.json").read_text())["stages"]
    assert [(s["best_step"], s["best_val_loss"], s["val_loss"], s["exported_step"]) for s in stages] == [
        (2, 1.0, 2.0, 2),
        (2, 0.5, 6.0, 2),
    ]
    rows = (tmp_path / "stage_n0" / "val_metrics.csv").read_text().splitlines()
    assert rows == ["step,loss", "1,3.0", "2,1.0", "3,2.0"]


def test_a_killed_stage_resumes_with_its_best(phantom: Path, tmp_path: Path, monkeypatch) -> None:
    class Crash(RuntimeError):
        pass

    snapshots: list[State] = []
    _scripted(monkeypatch, iter([3.0, 1.0, 2.0]), snapshots)  # validations of steps 1-3; step 4 dies
    calls = {"n": 0}
    real_views = anatomy_run._views

    def crash_in_step_four(batch):
        calls["n"] += 1
        if calls["n"] == 4:
            raise Crash
        return real_views(batch)

    monkeypatch.setattr(anatomy_run, "_views", crash_in_step_four)
    with pytest.raises(Crash):
        run_anatomy("phantom", phantom, stages=(0,), train_config=_cfg(tmp_path, steps=5), **TINY)
    monkeypatch.setattr(anatomy_run, "_views", real_views)
    _scripted(monkeypatch, iter([4.0, 1.5]), [])  # steps 4 and 5: worse than step 2
    run_anatomy("phantom", phantom, stages=(0,), train_config=_cfg(tmp_path, steps=5), **TINY)
    stage = json.loads((tmp_path / "stage_n0" / "stage.json").read_text())
    assert stage["resumed_from_checkpoint"] and (stage["best_step"], stage["best_val_loss"]) == (2, 1.0)
    _assert_same(load_file(str(tmp_path / "stage_n0" / STAGE_WEIGHTS)), snapshots[1])


def test_validating_leaves_the_training_state_bit_identical(phantom: Path, tmp_path: Path, monkeypatch) -> None:
    real = anatomy_run._validation_values
    losses: list[float] = []

    def checked(moco, **kwargs) -> dict[str, float]:
        before = _state(moco)
        values = real(moco, **kwargs)
        _assert_same(_state(moco), before)  # queue, pointer, key encoder, BatchNorm statistics
        losses.append(values["loss"])
        return values

    monkeypatch.setattr(anatomy_run, "_validation_values", checked)
    run_anatomy("phantom", phantom, stages=(2,), train_config=_cfg(tmp_path, steps=2), **TINY)
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
