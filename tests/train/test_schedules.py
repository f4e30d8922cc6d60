"""Learning-rate schedule: warmup, cosine decay, and groups keeping their ratios."""

from __future__ import annotations

import pytest
import torch

from xrayfm.train import TrainConfig, cosine_lr
from xrayfm.train.schedules import cosine_scheduler


def test_cosine_schedule_shape() -> None:
    cfg = TrainConfig(steps=100, warmup_steps=10, lr=1e-3, min_lr=1e-5)
    assert cosine_lr(0, cfg) == pytest.approx(0.1) and cosine_lr(9, cfg) == pytest.approx(1.0)
    assert cosine_lr(10, cfg) == pytest.approx(1.0) and cosine_lr(100, cfg) == pytest.approx(0.01)
    assert cosine_lr(55, cfg) == pytest.approx(0.505, abs=1e-3)
    assert cosine_lr(500, cfg) == pytest.approx(0.01)  # stays at min_lr past the end


def test_no_warmup_starts_at_the_peak() -> None:
    cfg = TrainConfig(steps=10, warmup_steps=0, lr=1e-3, min_lr=0.0)
    assert cosine_lr(0, cfg) == pytest.approx(1.0) and cosine_lr(10, cfg) == pytest.approx(0.0)


def test_scheduler_scales_every_group_by_the_same_factor() -> None:
    cfg = TrainConfig(steps=20, warmup_steps=4, lr=1e-3, min_lr=1e-5)
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([{"params": [a], "lr": 1e-3}, {"params": [b], "lr": 1e-4}], lr=cfg.lr)
    scheduler = cosine_scheduler(optimizer, cfg)
    for step in range(12):
        lrs = [g["lr"] for g in optimizer.param_groups]
        assert lrs[0] == pytest.approx(1e-3 * cosine_lr(step, cfg)) and lrs[0] == pytest.approx(10 * lrs[1])
        optimizer.step()
        scheduler.step()
