"""Learning-rate schedules: warmup, then cosine, constant or poly; groups keep their ratios."""

from __future__ import annotations

import pytest
import torch

from xrayfm.train import TrainConfig, lr_factor
from xrayfm.train.schedules import build_scheduler


def test_cosine_schedule_shape() -> None:
    cfg = TrainConfig(steps=100, warmup_steps=10, lr=1e-3, min_lr=1e-5)
    assert lr_factor(0, cfg) == pytest.approx(0.1) and lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(1.0) and lr_factor(100, cfg) == pytest.approx(0.01)
    assert lr_factor(55, cfg) == pytest.approx(0.505, abs=1e-3)
    assert lr_factor(500, cfg) == pytest.approx(0.01)  # stays at min_lr past the end


def test_no_warmup_starts_at_the_peak() -> None:
    cfg = TrainConfig(steps=10, warmup_steps=0, lr=1e-3, min_lr=0.0)
    assert lr_factor(0, cfg) == pytest.approx(1.0) and lr_factor(10, cfg) == pytest.approx(0.0)


def test_constant_schedule_holds_the_peak_after_the_warmup() -> None:
    cfg = TrainConfig(steps=50, warmup_steps=4, lr=1e-3, min_lr=1e-5, schedule="constant")
    assert [lr_factor(s, cfg) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert all(lr_factor(s, cfg) == 1.0 for s in range(4, 80))  # min_lr plays no part


@pytest.mark.parametrize("power", [1.0, 0.9, 2.0])
def test_poly_schedule_decays_over_the_whole_run_as_mmseg(power: float) -> None:
    cfg = TrainConfig(steps=100, warmup_steps=10, lr=1e-3, min_lr=1e-4, schedule="poly", poly_power=power)
    floor = 0.1
    for step in (10, 25, 50, 99):
        assert lr_factor(step, cfg) == pytest.approx(floor + (1 - floor) * (1 - step / 100) ** power)
    # the warmup scales the decayed rate (mmcv's linear warmup of the poly policy)
    assert lr_factor(4, cfg) == pytest.approx(0.5 * (floor + (1 - floor) * 0.96**power))
    assert lr_factor(100, cfg) == pytest.approx(floor) and lr_factor(300, cfg) == pytest.approx(floor)


def test_linear_poly_without_min_lr_falls_to_zero_in_a_straight_line() -> None:
    cfg = TrainConfig(steps=8, warmup_steps=0, lr=1e-3, min_lr=0.0, schedule="poly")
    assert [lr_factor(s, cfg) for s in range(9)] == pytest.approx([1 - s / 8 for s in range(9)])


@pytest.mark.parametrize("schedule", ["cosine", "poly"])
def test_decaying_schedules_never_go_below_min_lr(schedule: str) -> None:
    cfg = TrainConfig(steps=30, warmup_steps=5, lr=2e-3, min_lr=5e-4, schedule=schedule, poly_power=3.0)
    after_warmup = [lr_factor(s, cfg) for s in range(5, 60)]
    assert min(after_warmup) == pytest.approx(0.25) and all(f >= 0.25 - 1e-12 for f in after_warmup)
    assert all(a >= b for a, b in zip(after_warmup, after_warmup[1:]))  # non-increasing


@pytest.mark.parametrize("schedule", ["cosine", "constant", "poly"])
def test_scheduler_scales_every_group_by_the_same_factor(schedule: str) -> None:
    cfg = TrainConfig(steps=20, warmup_steps=4, lr=1e-3, min_lr=1e-5, schedule=schedule)
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([{"params": [a], "lr": 1e-3}, {"params": [b], "lr": 1e-4}], lr=cfg.lr)
    scheduler = build_scheduler(optimizer, cfg)
    for step in range(24):
        lrs = [g["lr"] for g in optimizer.param_groups]
        assert lrs[0] == pytest.approx(1e-3 * lr_factor(step, cfg)) and lrs[0] == pytest.approx(10 * lrs[1])
        optimizer.step()
        scheduler.step()
