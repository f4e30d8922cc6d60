"""Learning-rate schedules: linear warmup, then cosine decay to ``min_lr``."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from xrayfm.train.config import TrainConfig


def cosine_lr(step: int, cfg: TrainConfig) -> float:
    """Learning-rate multiplier of ``step``: linear warmup, then cosine to ``min_lr``.

    Args:
        step: Optimiser steps done.
        cfg: Settings (``steps``, ``warmup_steps``, ``lr``, ``min_lr``).

    Returns:
        The factor applied to every parameter group's base learning rate: ``(step + 1) /
        warmup_steps`` during warmup, then from 1 down to ``min_lr / lr`` at ``steps``.
    """
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    floor = cfg.min_lr / cfg.lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def cosine_scheduler(optimizer: Optimizer, cfg: TrainConfig) -> LambdaLR:
    """Scheduler applying :func:`cosine_lr` to each parameter group's own learning rate.

    Groups keep their ratios (e.g. layer-wise lr decay): each is scaled by the same factor.

    Args:
        optimizer: The optimiser whose groups hold their peak learning rates.
        cfg: Settings of the schedule.

    Returns:
        A ``LambdaLR`` to step once per optimiser step.
    """
    return LambdaLR(optimizer, lambda step: cosine_lr(step, cfg))
