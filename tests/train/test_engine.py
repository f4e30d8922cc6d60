"""The shared training loop: atomic checkpoints, exact resume, parameter groups, clear errors, progress."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from xrayfm.errors import XrayfmError
from xrayfm.models import create_model
from xrayfm.pretrain.mim import MaskedFeatureModeling
from xrayfm.progress import PROGRESS_LOGGER
from xrayfm.train import CHECKPOINT, TrainConfig, engine, lr_factor, train


class Crash(RuntimeError):
    """Stands for the process being killed mid-run."""


def _objective() -> MaskedFeatureModeling:
    torch.manual_seed(0)
    student = create_model("eva_x_tiny_patch16", num_classes=0, global_pool="token", img_size=64, depth=2)
    teacher = create_model("eva_x_tiny_patch16", num_classes=0, img_size=64, depth=2)
    return MaskedFeatureModeling(student, teacher)


def _data() -> TensorDataset:
    return TensorDataset(torch.randn(24, 3, 64, 64, generator=torch.Generator().manual_seed(5)))


def _cfg(out: Path) -> TrainConfig:
    return TrainConfig(
        out_dir=str(out), steps=6, batch_size=4, warmup_steps=2, lr=1e-3, accelerator="cpu",
        precision="32-true", checkpoint_every=1, log_every=1,
    )  # fmt: skip


def test_kill_and_resume_gives_the_same_weights(tmp_path: Path) -> None:
    ref = _objective()
    result = train(ref, _data(), _cfg(tmp_path / "straight"), batch_to_input=lambda b: b[0])
    assert result["step"] == 6 and (tmp_path / "straight" / CHECKPOINT).is_file()

    calls = {"n": 0}

    def crash_after_three(batch):
        calls["n"] += 1
        if calls["n"] == 4:
            raise Crash
        return batch[0]

    with pytest.raises(Crash):
        train(_objective(), _data(), _cfg(tmp_path / "killed"), batch_to_input=crash_after_three)
    assert torch.load(tmp_path / "killed" / CHECKPOINT, weights_only=False)["step"] == 3
    assert not [p for p in (tmp_path / "killed").iterdir() if p.name.startswith(".")], "temporary left behind"
    resumed = _objective()
    train(resumed, _data(), _cfg(tmp_path / "killed"), batch_to_input=lambda b: b[0])
    for (k, a), (_, b) in zip(ref.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"{k} differs after resume")
    rows = (tmp_path / "killed" / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,loss,lr,images_per_s" and [r.split(",")[0] for r in rows[1:]] == list("123456")
    assert list((tmp_path / "straight" / "tensorboard").glob("events.out.tfevents.*")), "no TensorBoard log"


def test_explicit_param_groups_keep_their_learning_rates(tmp_path: Path) -> None:
    objective = _objective()
    student = [p for p in objective.student.parameters() if p.requires_grad]
    rest = [p for n, p in objective.named_parameters() if not n.startswith("student.") and p.requires_grad]
    groups = [{"params": student, "lr": 1e-3, "weight_decay": 0.0}, {"params": rest, "lr": 1e-4, "weight_decay": 0.0}]
    cfg = _cfg(tmp_path)
    cfg.steps, cfg.warmup_steps = 1, 0
    train(objective, _data(), cfg, batch_to_input=lambda b: b[0], param_groups=groups)
    saved = torch.load(tmp_path / CHECKPOINT, weights_only=False)["optimizer"]["param_groups"]
    assert len(saved) == 2 and saved[0]["lr"] == pytest.approx(10 * saved[1]["lr"])


def test_training_nothing_is_a_clear_error(tmp_path: Path) -> None:
    objective = _objective()
    for p in objective.parameters():
        p.requires_grad = False
    with pytest.raises(XrayfmError, match="nothing to train"):
        train(objective, _data(), _cfg(tmp_path), batch_to_input=lambda b: b[0])


def test_a_sharded_checkpoint_folder_needs_fsdp(tmp_path: Path) -> None:
    (tmp_path / CHECKPOINT).mkdir()
    with pytest.raises(XrayfmError, match="sharded checkpoint folder"):
        train(_objective(), _data(), _cfg(tmp_path), batch_to_input=lambda b: b[0])


class _Collect(logging.Handler):
    """Every record of one logger, once each (whatever handlers an in-process CLI run left on it)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_without_a_bar_progress_is_a_line_every_log_every_steps(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CI", "true")  # CI, a pipe or a log file: no bar
    logger, collect = logging.getLogger(PROGRESS_LOGGER), _Collect()
    level = logger.level
    logger.setLevel(logging.INFO)  # setLevel, not the attribute: it clears the cache of an earlier run's level
    logger.addHandler(collect)
    cfg = _cfg(tmp_path)
    cfg.steps, cfg.log_every = 7, 3
    try:
        train(_objective(), _data(), cfg, batch_to_input=lambda b: b[0])
    finally:
        logger.removeHandler(collect)
        logger.setLevel(level)
    lines = collect.lines
    assert [line.split()[1] for line in lines] == ["3/7", "6/7", "7/7"]
    shape = r"step \d/7  loss \d+\.\d{4}  lr \d\.\de-0\d  \d+\.\d img/s  ETA \d:\d\d:\d\d"
    assert all(re.fullmatch(shape, line) for line in lines), lines
    assert lines[-1].endswith("ETA 0:00:00")
    rows = [r.split(",") for r in (tmp_path / "metrics.csv").read_text().splitlines()[1:]]
    assert [f"{float(r[1]):.4f}" for r in rows] == [line.split()[3] for line in lines]  # the metrics rows' losses


def test_with_a_bar_there_are_no_progress_lines(tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.setattr(engine, "progress_enabled", lambda: True)  # an interactive terminal
    monkeypatch.setattr(logging.getLogger(PROGRESS_LOGGER), "propagate", True)
    cfg = _cfg(tmp_path)
    cfg.steps = 2
    with caplog.at_level(logging.INFO, logger=PROGRESS_LOGGER):
        train(_objective(), _data(), cfg, batch_to_input=lambda b: b[0])
    assert not [r for r in caplog.records if r.name == PROGRESS_LOGGER]
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 3


class _Regression(torch.nn.Module):
    """A tiny objective: the squared error of a linear map."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(4, 1)

    def forward(self, batch: list[torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return (self.linear(x).squeeze(1) - y).pow(2).mean()


def _pairs(n: int = 10) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(n, 4, generator=g), torch.randn(n, generator=g))


def _epoch_cfg(out: Path, **settings) -> TrainConfig:
    base = dict(
        out_dir=str(out), steps=1000, epochs=2, warmup_epochs=0.5, batch_size=2, accumulate=2, lr=1e-2,
        accelerator="cpu", precision="32-true", checkpoint_every=1, log_every=1,
    )  # fmt: skip
    return TrainConfig(**{**base, **settings})


def test_epochs_set_the_number_of_steps(tmp_path: Path) -> None:
    cfg = _epoch_cfg(tmp_path)  # 10 samples in steps of 2 x 2: 3 steps an epoch
    result = train(_Regression(), _pairs(), cfg)
    assert (result["step"], result["steps"], result["warmup_steps"]) == (6, 6, 2)
    recorded = json.loads((tmp_path / "train_config.json").read_text())
    assert (recorded["steps"], recorded["warmup_steps"], recorded["epochs"]) == (6, 2, 2)
    rows = [r.split(",") for r in (tmp_path / "metrics.csv").read_text().splitlines()[1:]]
    assert [int(r[0]) for r in rows] == [1, 2, 3, 4, 5, 6]
    resolved = TrainConfig(**{**recorded, "betas": tuple(recorded["betas"])})
    assert [float(r[2]) for r in rows] == pytest.approx([1e-2 * lr_factor(s, resolved) for s in range(1, 7)], rel=1e-3)
    assert cfg.steps == 1000  # the caller's config is not changed


def test_an_epochs_run_resumes_to_the_same_weights(tmp_path: Path) -> None:
    ref = _Regression()
    train(ref, _pairs(), _epoch_cfg(tmp_path / "straight", schedule="poly", poly_power=0.9))

    calls = {"n": 0}

    def crash_in_step_four(batch):
        calls["n"] += 1
        if calls["n"] == 7:  # the first micro-batch of step 4
            raise Crash
        return batch

    killed = _epoch_cfg(tmp_path / "killed", schedule="poly", poly_power=0.9)
    with pytest.raises(Crash):
        train(_Regression(), _pairs(), killed, batch_to_input=crash_in_step_four)
    assert torch.load(tmp_path / "killed" / CHECKPOINT, weights_only=False)["step"] == 3
    resumed = _Regression()
    assert train(resumed, _pairs(), killed)["steps"] == 6
    torch.testing.assert_close(ref.state_dict(), resumed.state_dict(), rtol=0, atol=0)
    straight, again = ((tmp_path / d / "metrics.csv").read_text() for d in ("straight", "killed"))
    assert [r.split(",")[:3] for r in straight.splitlines()] == [r.split(",")[:3] for r in again.splitlines()]


def test_sgd_with_a_constant_schedule_trains(tmp_path: Path) -> None:
    model = _Regression()
    before = model(_pairs()[:]).item()
    cfg = _epoch_cfg(tmp_path, optimizer="sgd", momentum=0.9, schedule="constant", epochs=4, warmup_epochs=0)
    cfg.warmup_steps = 0
    result = train(model, _pairs(), cfg)
    saved = torch.load(tmp_path / CHECKPOINT, weights_only=False)["optimizer"]
    assert result["steps"] == 12 and [g["lr"] for g in saved["param_groups"]] == [1e-2, 1e-2]
    assert all(g["momentum"] == 0.9 and not g["nesterov"] for g in saved["param_groups"])
    assert all("momentum_buffer" in s for s in saved["state"].values())
    assert model(_pairs()[:]).item() < before
