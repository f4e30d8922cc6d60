"""Learning-rate schedules: a linear warmup, then ``cosine``, ``constant`` or ``poly``.

One factor per optimiser step multiplies every parameter group's own peak learning rate, so groups
keep their ratios (layer-wise lr decay). The shapes follow the sources the recipes cite:

- ``cosine``: from the peak at the end of the warmup down to ``min_lr`` at ``steps`` (EVA-X
  pretraining and classification, ``classification/utils/lr_sched.py``);
- ``constant``: the peak after the warmup (that file's ``--fixed_lr``);
- ``poly``: mmseg's poly policy, ``min_lr + (lr - min_lr) * (1 - step / steps) ** poly_power``
  over the whole run, the warmup scaling it (as mmcv's ``PolyLrUpdaterHook`` with linear warmup).

The warmup factor of step ``s`` is ``(s + 1) / warmup_steps``: it reaches the peak on the last
warmup step (the official code starts from 0, or mmseg's ``warmup_ratio`` 1e-6, one step earlier).
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from xrayfm.train.config import TrainConfig


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Learning-rate multiplier of ``step`` under ``cfg.schedule``.

    Args:
        step: Optimiser steps done.
        cfg: Settings (``schedule``, ``steps``, ``warmup_steps``, ``lr``, ``min_lr``, ``poly_power``).

    Returns:
        The factor applied to every parameter group's peak learning rate: ``min(1, (step + 1) /
        warmup_steps)`` times the schedule's decay, which ends at ``min_lr / lr`` at ``steps`` and
        stays there (``cosine``, ``poly``) or stays 1 (``constant``).
    """
    warmup = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    floor = cfg.min_lr / cfg.lr
    if cfg.schedule == "constant":
        return warmup
    if cfg.schedule == "poly":
        t = min(1.0, step / max(1, cfg.steps))
        return warmup * (floor + (1 - floor) * (1 - t) ** cfg.poly_power)
    if step < cfg.warmup_steps:
        return warmup
    t = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))


def build_scheduler(optimizer: Optimizer, cfg: TrainConfig) -> LambdaLR:
    """Scheduler applying :func:`lr_factor` to each parameter group's own learning rate.

    Args:
        optimizer: The optimiser whose groups hold their peak learning rates.
        cfg: Settings of the schedule (steps already resolved, see :func:`~xrayfm.train.config.resolve_steps`).

    Returns:
        A ``LambdaLR`` to step once per optimiser step.
    """
    return LambdaLR(optimizer, lambda step: lr_factor(step, cfg))
