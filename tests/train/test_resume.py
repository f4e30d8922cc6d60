"""Resume as a user meets it: time-based and signal checkpoints, "resumed from step N", metrics once per step,
and a corrupt or unsafe checkpoint refused in one line."""

from __future__ import annotations

import logging
import os
import pickle
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from toy_runs import Crash, NoisyPairs

from xrayfm.cli import build_parser
from xrayfm.cli.args import train_config
from xrayfm.errors import XrayfmError
from xrayfm.progress import PROGRESS_LOGGER
from xrayfm.train import CHECKPOINT, TrainConfig, TrainingInterrupted, engine, train
from xrayfm.train.config import engine_options


class Regression(torch.nn.Module):
    """A linear map with dropout: the forward pass draws random numbers too."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear, self.drop = torch.nn.Linear(4, 1), torch.nn.Dropout(0.2)

    def forward(self, batch: list[torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return (self.linear(self.drop(x)).squeeze(1) - y).pow(2).mean()


@pytest.fixture(autouse=True)
def default_signal_handlers() -> Iterator[None]:
    """Python's own SIGINT / SIGTERM handlers during each test: a suite started in the background
    (``cmd &``) inherits SIGINT ignored, which the engine rightly leaves alone."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    for s, handler in previous.items():
        signal.signal(s, handler)


def _cfg(out: Path, **settings: Any) -> TrainConfig:
    base = dict(
        out_dir=str(out), steps=6, batch_size=2, warmup_steps=1, lr=1e-2, accelerator="cpu", precision="32-true",
        checkpoint_every=100, checkpoint_minutes=1e-9, log_every=1,
    )  # fmt: skip
    return TrainConfig(**{**base, **settings})


def _crash_in_step(step: int, action=None):
    """``batch_to_input`` that runs ``action`` (default: raise Crash) when the batch of ``step`` (1-based) comes."""
    calls = {"n": 0}

    def pick(batch):
        calls["n"] += 1
        if calls["n"] == step:
            if action is None:
                raise Crash
            action()
        return batch

    return pick


def _steps(out: Path) -> list[int]:
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,loss,lr,images_per_s"
    return [int(r.split(",")[0]) for r in rows[1:]]


@contextmanager
def _progress_lines() -> Iterator[list[str]]:
    """The messages of the progress logger while in the block (whatever handlers an in-process CLI run left)."""
    logger, lines = logging.getLogger(PROGRESS_LOGGER), []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _saved_step(out: Path) -> int:
    return torch.load(out / CHECKPOINT, weights_only=True)["step"]


@pytest.mark.parametrize("workers", [0, 2])
def test_time_based_checkpoint_resumes_a_killed_run_to_the_same_weights(
    tmp_path: Path, workers: int, monkeypatch
) -> None:
    straight = Regression()
    done = train(straight, NoisyPairs(), _cfg(tmp_path / "straight", num_workers=workers))
    assert done["resumed"] is None and done["start_step"] == 0

    killed = _cfg(tmp_path / "killed", num_workers=workers)
    with pytest.raises(Crash):  # checkpoint_every 100: only the clock saves steps 1 to 3
        train(Regression(), NoisyPairs(), killed, batch_to_input=_crash_in_step(4))
    assert _saved_step(tmp_path / "killed") == 3

    resumed = Regression()
    monkeypatch.setattr(engine, "progress_enabled", lambda: True)  # a terminal with a bar: the notice still shows
    with _progress_lines() as lines:
        result = train(resumed, NoisyPairs(), killed)
    assert result["start_step"] == 3 and result["resumed"] == "resumed from step 3 of 6"
    assert f"resumed from step 3 of 6 ({tmp_path / 'killed' / CHECKPOINT})" in lines
    torch.testing.assert_close(straight.state_dict(), resumed.state_dict(), rtol=0, atol=0)
    assert _steps(tmp_path / "killed") == [1, 2, 3, 4, 5, 6]


def test_without_the_clock_only_every_n_steps_and_the_last_are_saved(tmp_path: Path, monkeypatch) -> None:
    saved: list[int] = []
    original = engine.save_checkpoint

    def record(fabric, path, state, *, sharded):
        saved.append(state["step"])
        original(fabric, path, state, sharded=sharded)

    monkeypatch.setattr(engine, "save_checkpoint", record)
    train(Regression(), NoisyPairs(), _cfg(tmp_path, steps=5, checkpoint_every=2, checkpoint_minutes=0))
    assert saved == [2, 4, 5]


def test_metrics_hold_each_step_once_after_resume(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, checkpoint_every=2, checkpoint_minutes=0)
    with pytest.raises(Crash):  # rows 1-3 written, the checkpoint holds step 2
        train(Regression(), NoisyPairs(), cfg, batch_to_input=_crash_in_step(4))
    with open(tmp_path / "metrics.csv", "a") as fh:
        fh.write("4,0.12")  # a row cut short by the kill
    assert _steps(tmp_path)[:3] == [1, 2, 3] and _saved_step(tmp_path) == 2
    assert train(Regression(), NoisyPairs(), cfg)["start_step"] == 2
    assert _steps(tmp_path) == [1, 2, 3, 4, 5, 6]


def test_sigterm_saves_the_step_and_stops_with_a_one_line_error(tmp_path: Path) -> None:
    straight = Regression()
    train(straight, NoisyPairs(), _cfg(tmp_path / "straight"))
    before = signal.getsignal(signal.SIGTERM)
    cfg = _cfg(tmp_path / "stopped", checkpoint_minutes=0)  # only the signal makes it save
    term = _crash_in_step(3, lambda: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(TrainingInterrupted) as info:
        train(Regression(), NoisyPairs(), cfg, batch_to_input=term)
    assert isinstance(info.value, XrayfmError) and info.value.signum == signal.SIGTERM
    assert str(info.value) == (
        f"stopped by SIGTERM after step 3 of 6, saved in {tmp_path / 'stopped' / CHECKPOINT}; "
        "run the same command again to resume"
    )
    assert _saved_step(tmp_path / "stopped") == 3 and signal.getsignal(signal.SIGTERM) is before
    resumed = Regression()
    assert train(resumed, NoisyPairs(), cfg)["resumed"] == "resumed from step 3 of 6"
    torch.testing.assert_close(straight.state_dict(), resumed.state_dict(), rtol=0, atol=0)


def test_a_second_sigint_during_the_save_does_not_break_the_checkpoint(tmp_path: Path, monkeypatch) -> None:
    original = engine.save_checkpoint

    def interrupted_save(fabric, path, state, *, sharded):
        os.kill(os.getpid(), signal.SIGINT)  # the impatient second Ctrl-C
        original(fabric, path, state, sharded=sharded)

    monkeypatch.setattr(engine, "save_checkpoint", interrupted_save)
    cfg = _cfg(tmp_path, checkpoint_minutes=0)
    with pytest.raises(TrainingInterrupted, match="stopped by SIGINT after step 2 of 6"):
        train(Regression(), NoisyPairs(), cfg, batch_to_input=_crash_in_step(2, lambda: os.kill(os.getpid(), 2)))
    assert _saved_step(tmp_path) == 2 and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_second_signal_before_the_save_stops_at_once(tmp_path: Path) -> None:
    def twice() -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(KeyboardInterrupt):
        train(Regression(), NoisyPairs(), _cfg(tmp_path, checkpoint_minutes=0), batch_to_input=_crash_in_step(2, twice))
    assert not (tmp_path / CHECKPOINT).exists() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_handlers_are_restored_when_training_fails(tmp_path: Path) -> None:
    with pytest.raises(Crash):
        train(Regression(), NoisyPairs(), _cfg(tmp_path), batch_to_input=_crash_in_step(1))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


class RunsCode:
    """A pickle that runs a shell command when loaded without ``weights_only``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "it is empty (0 bytes)"),
        (os.urandom(4096), "it is corrupt, not a checkpoint, or from another model or settings ("),
        ("truncated", "it is truncated or corrupt"),
        ("torch.save", "refused: the file asks to run code (posix.system)"),
        ("pickle", "refused: the file asks to run code (posix.system)"),
    ],
)
def test_a_bad_checkpoint_is_one_line_and_runs_no_code(tmp_path: Path, monkeypatch, content, problem: str) -> None:
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # an environment that flips torch.load's default
    out, marker = tmp_path / "run", tmp_path / "ran"
    out.mkdir()
    ckpt = out / CHECKPOINT
    if content == "truncated":
        train(Regression(), NoisyPairs(), _cfg(out, steps=1))
        ckpt.write_bytes(ckpt.read_bytes()[:300])
    elif content == "torch.save":
        torch.save({"step": RunsCode(marker)}, ckpt)
    elif content == "pickle":
        ckpt.write_bytes(pickle.dumps({"step": RunsCode(marker)}))
    else:
        ckpt.write_bytes(content)
    with pytest.raises(XrayfmError) as info:
        train(Regression(), NoisyPairs(), _cfg(out))
    message = str(info.value)
    assert message.startswith(f"cannot resume from {ckpt}: {problem}") and "\n" not in message
    assert message.endswith("; delete it to start again from step 0, or use a new --out")
    assert not marker.exists(), "the checkpoint ran code"


def test_a_checkpoint_of_another_model_is_one_line(tmp_path: Path) -> None:
    train(Regression(), NoisyPairs(), _cfg(tmp_path, steps=1))

    class Wider(Regression):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(4, 2)

    with pytest.raises(XrayfmError, match=r"from another model or settings \(RuntimeError: Error\(s\) in loading"):
        train(Wider(), NoisyPairs(), _cfg(tmp_path))


def test_checkpoint_minutes_is_checked() -> None:
    with pytest.raises(XrayfmError, match="checkpoint_minutes must be at least 0"):
        TrainConfig(checkpoint_minutes=-1)
    with pytest.raises(XrayfmError, match="seed must be between 0 and 2"):
        TrainConfig(seed=-1)


def test_checkpoint_minutes_is_a_command_line_option_recorded_with_the_run(tmp_path: Path) -> None:
    args = build_parser().parse_args(["pretrain", "mim", "phantom", str(tmp_path), "--checkpoint-minutes", "2.5"])
    cfg = train_config(args)
    assert cfg.checkpoint_minutes == 2.5 and engine_options(cfg)["checkpoint_minutes"] == 2.5
    assert build_parser().parse_args(["pretrain", "mim", "phantom", str(tmp_path)]).checkpoint_minutes == 5.0
