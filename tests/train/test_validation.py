"""The engine's validation hook: best weights selected on validation values, kept across a resume, and training
left exactly as it would be without validation."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from toy_runs import Crash, NoisyPairs

from xrayfm.errors import XrayfmError
from xrayfm.train import CHECKPOINT, TrainConfig, train
from xrayfm.train.engine import BEST, VAL_METRICS


class Regression(torch.nn.Module):
    """A linear map with dropout (training draws random numbers) and a buffer (saved with the best weights)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear, self.drop = torch.nn.Linear(4, 1), torch.nn.Dropout(0.2)
        self.register_buffer("seen", torch.zeros(()))

    def forward(self, batch: list[torch.Tensor]) -> torch.Tensor:
        x, y = batch
        if self.training:
            self.seen += len(y)
        return (self.linear(self.drop(x)).squeeze(1) - y).pow(2).mean()


def _cfg(out: Path, **settings: Any) -> TrainConfig:
    base = dict(
        out_dir=str(out), steps=6, batch_size=2, warmup_steps=1, lr=1e-2, accelerator="cpu", precision="32-true",
        checkpoint_every=100, checkpoint_minutes=0, log_every=1, validate_every=1,
    )  # fmt: skip
    return TrainConfig(**{**base, **settings})


def _scripted(losses: Sequence[float], first_step: int = 1, snapshots: dict | None = None) -> Callable:
    """A ``validate`` returning ``losses[step - 1]`` at each call from ``first_step`` on, recording the weights."""
    steps = iter(range(first_step, len(losses) + 1))

    def validate(module: torch.nn.Module) -> dict[str, float]:
        step = next(steps)
        if snapshots is not None:
            snapshots[step] = {k: v.clone() for k, v in module.state_dict().items()}
        return {"loss": losses[step - 1], "other": float(step)}

    return validate


def _val_rows(out: Path) -> list[list[str]]:
    return [row.split(",") for row in (out / VAL_METRICS).read_text().splitlines()]


def _crash_in_step(step: int) -> Callable:
    calls = {"n": 0}

    def pick(batch):
        calls["n"] += 1
        if calls["n"] == step:
            raise Crash
        return batch

    return pick


def _jitter(batch: list[torch.Tensor]) -> list[torch.Tensor]:
    """``batch_to_input`` drawing from the global RNG between steps, where a validation runs."""
    x, y = batch
    return [x + 0.01 * torch.randn_like(x), y]


def test_validation_changes_neither_weights_nor_random_streams(tmp_path: Path) -> None:
    plain = Regression()
    # with a worker reading the samples, nothing reseeds this process between a step's forward and the next batch
    train(plain, NoisyPairs(), _cfg(tmp_path / "plain", num_workers=1), batch_to_input=_jitter)
    modes: list[bool] = []

    def greedy(module: torch.nn.Module) -> dict[str, float]:  # draws from every RNG and runs the module
        modes.append(module.training or module.drop.training)
        noise = torch.rand(()) + np.random.rand() + random.random()
        x, y = NoisyPairs()[0]
        return {"loss": float(module([x[None], y[None]])) + 0 * float(noise)}

    validated = Regression()
    cfg = _cfg(tmp_path / "validated", num_workers=1)
    result = train(validated, NoisyPairs(), cfg, batch_to_input=_jitter, validate=greedy)
    torch.testing.assert_close(plain.state_dict(), validated.state_dict(), rtol=0, atol=0)
    assert modes == [False] * 6 and validated.training and validated.drop.training  # eval inside, train after
    assert result["last_validation"]["loss"] == float(_val_rows(tmp_path / "validated")[-1][1])  # written in full


def test_best_weights_are_those_of_the_best_step(tmp_path: Path) -> None:
    losses, snapshots = [3.0, 2.0, 1.5, 2.5, 4.0, 5.0], {}
    model = Regression()
    result = train(model, NoisyPairs(), _cfg(tmp_path), validate=_scripted(losses, snapshots=snapshots))
    assert result["best_step"] == 3 and result["best"] == {"loss": 1.5, "other": 3.0}
    assert result["last_validation"] == {"loss": 5.0, "other": 6.0}
    best = load_file(str(tmp_path / BEST))
    assert set(best) == {"linear.weight", "linear.bias", "seen"}  # buffers too
    torch.testing.assert_close(best, snapshots[3], rtol=0, atol=0)
    assert not torch.equal(best["linear.weight"], model.linear.weight.detach())  # not the last step's
    assert float(best["seen"]) == 3 * 2
    with safe_open(str(tmp_path / BEST), "pt") as fh:
        assert fh.metadata()["step"] == "3" and float(fh.metadata()["loss"]) == 1.5
    rows = _val_rows(tmp_path)
    assert rows[0] == ["step", "loss", "other"] and [int(r[0]) for r in rows[1:]] == [1, 2, 3, 4, 5, 6]
    assert [float(r[1]) for r in rows[1:]] == losses


def test_select_mode_max_and_another_metric(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, select_metric="other", select_mode="max", validate_every=2)
    result = train(Regression(), NoisyPairs(), cfg, validate=_scripted([9.0] * 6))
    assert result["best_step"] == 6 and [int(r[0]) for r in _val_rows(tmp_path)[1:]] == [2, 4, 6]


def test_default_cadence_is_the_checkpoint_steps_and_the_last(tmp_path: Path) -> None:
    seen: list[int] = []

    def count(module: torch.nn.Module) -> dict[str, float]:
        seen.append(int(module.seen) // 2)
        return {"loss": 1.0}

    train(Regression(), NoisyPairs(), _cfg(tmp_path, steps=5, validate_every=0, checkpoint_every=2), validate=count)
    assert seen == [2, 4, 5]


def test_a_killed_run_resumes_with_the_same_best(tmp_path: Path) -> None:
    losses = [3.0, 2.0, 1.0, 2.5, 2.2, 2.1]  # best at step 3, after the checkpoint of step 2
    straight = train(Regression(), NoisyPairs(), _cfg(tmp_path / "straight"), validate=_scripted(losses))
    cfg = _cfg(tmp_path / "killed", checkpoint_every=2)
    with pytest.raises(Crash):
        train(Regression(), NoisyPairs(), cfg, validate=_scripted(losses), batch_to_input=_crash_in_step(5))
    assert torch.load(tmp_path / "killed" / CHECKPOINT, weights_only=True)["validation"]["best_step"] == 3
    resumed = train(Regression(), NoisyPairs(), cfg, validate=_scripted(losses, first_step=5))
    assert resumed["start_step"] == 4 and resumed["best_step"] == straight["best_step"] == 3
    torch.testing.assert_close(
        load_file(str(tmp_path / "killed" / BEST)), load_file(str(tmp_path / "straight" / BEST)), rtol=0, atol=0
    )
    assert _val_rows(tmp_path / "killed") == _val_rows(tmp_path / "straight")  # each step once


def test_rows_beyond_the_checkpoint_are_cut_on_resume(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, checkpoint_every=2)
    losses = [3.0, 2.0, 1.0, 0.5, 0.4, 0.3]
    with pytest.raises(Crash):  # validated steps 1-3, saved step 2
        train(Regression(), NoisyPairs(), cfg, validate=_scripted(losses), batch_to_input=_crash_in_step(4))
    assert [int(r[0]) for r in _val_rows(tmp_path)[1:]] == [1, 2, 3]
    result = train(Regression(), NoisyPairs(), cfg, validate=_scripted(losses, first_step=3))
    assert [int(r[0]) for r in _val_rows(tmp_path)[1:]] == [1, 2, 3, 4, 5, 6] and result["best_step"] == 6


def test_a_checkpoint_without_a_validation_record_still_resumes(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, steps=2, checkpoint_every=1)
    with pytest.raises(Crash):
        train(Regression(), NoisyPairs(), cfg, batch_to_input=_crash_in_step(2))
    older = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    del older["validation"]  # as written before the engine validated
    torch.save(older, tmp_path / CHECKPOINT)
    result = train(Regression(), NoisyPairs(), cfg, validate=_scripted([1.0, 2.0], first_step=2))
    assert result["start_step"] == 1 and result["best_step"] == 2


def test_a_validation_without_the_selected_metric_is_refused(tmp_path: Path) -> None:
    with pytest.raises(XrayfmError, match="without select_metric 'auc'"):
        train(Regression(), NoisyPairs(), _cfg(tmp_path, select_metric="auc"), validate=_scripted([1.0] * 6))


def test_validation_settings_are_checked() -> None:
    with pytest.raises(XrayfmError, match="select_mode must be one of min, max"):
        TrainConfig(select_mode="lowest")
    with pytest.raises(XrayfmError, match="validate_every must be at least 0"):
        TrainConfig(validate_every=-1)
