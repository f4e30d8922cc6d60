"""Settings of a training run: optimisation, schedule, devices and checkpoint cadence."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainConfig:
    """Optimisation and runtime settings (paper defaults of EVA-X MIM where they apply).

    Attributes:
        out_dir: Run folder (config, checkpoints, metrics.csv).
        steps: Total optimiser steps.
        batch_size: Per-device batch size.
        lr: Peak learning rate (cosine schedule after linear warmup).
        min_lr: Final learning rate.
        warmup_steps: Linear warmup length.
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        accumulate: Gradient accumulation (micro-batches per optimiser step).
        clip_grad: Max gradient norm (0 = off).
        precision: Fabric precision (``32-true``, ``bf16-mixed``, ``16-mixed``); ``auto`` picks
            bf16-mixed on GPU and 32-true on CPU.
        accelerator: ``auto``, ``cpu``, ``gpu``.
        devices: Devices per node (int or ``auto``).
        num_nodes: Number of nodes.
        strategy: ``auto``, ``ddp`` (or another Fabric strategy name), or ``fsdp``: PyTorch FSDP2
            over all processes, on GPUs or CPUs, with sharded checkpoint folders (see
            :mod:`xrayfm.train.distributed`).
        seed: Seed of data order, masks and init.
        num_workers: DataLoader workers (0 for bit-exact resume when transforms are random).
        checkpoint_every: Steps between checkpoints.
        log_every: Steps between metric rows.
        extra: Free-form settings of the method that runs the loop (saved with the run).
    """

    out_dir: str = "runs/pretrain"
    steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-4
    min_lr: float = 1e-6
    warmup_steps: int = 100
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.98)
    accumulate: int = 1
    clip_grad: float = 3.0
    precision: str = "auto"
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    seed: int = 0
    num_workers: int = 0
    checkpoint_every: int = 100
    log_every: int = 10
    extra: dict[str, Any] = field(default_factory=dict)
