"""The training loop shared by pretraining objectives, on Lightning Fabric.

The loop stays explicit (objectives differ: MIM, anatomy-contrastive, multi-task); Fabric
supplies devices, DDP / FSDP, mixed precision and multi-node launch from one set of arguments,
so the same call runs on a laptop CPU and a GPU cluster. Runs are exactly resumable: the data
order is a seeded permutation per epoch sharded by rank, the global RNG is re-seeded from
``(seed, step, micro-batch, rank)`` before every forward pass, and checkpoints (model,
optimizer, scheduler, step) are written to a temporary file and renamed, so a kill at any
moment leaves the last complete checkpoint intact.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.fabric import Fabric
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from xrayfm.errors import XrayfmError
from xrayfm.progress import progress

log = logging.getLogger(__name__)
CHECKPOINT = "last.ckpt"


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
        strategy: ``auto``, ``ddp``, ``fsdp``...
        seed: Seed of data order, masks and init.
        num_workers: DataLoader workers (0 for bit-exact resume when transforms are random).
        checkpoint_every: Steps between checkpoints.
        log_every: Steps between metric rows.
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


class StepSampler(Sampler[int]):
    """Endless seeded permutations, sharded by rank, starting at a given sample offset."""

    def __init__(self, n: int, *, seed: int, rank: int, world: int, start: int = 0) -> None:
        if n < world:
            raise XrayfmError(f"dataset of {n} samples is smaller than the {world} processes")
        self.n, self.seed, self.rank, self.world, self.start = n, seed, rank, world, start

    def __iter__(self) -> Iterator[int]:
        per_rank = self.n // self.world
        epoch, offset = divmod(self.start, per_rank)
        while True:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(self.n, generator=g)[self.rank : per_rank * self.world : self.world]
            yield from order[offset:].tolist()
            epoch, offset = epoch + 1, 0


def cosine_lr(step: int, cfg: TrainConfig) -> float:
    """Learning-rate multiplier of ``step``: linear warmup, then cosine to ``min_lr``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    floor = cfg.min_lr / cfg.lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def _loggers(out_dir: str) -> list[Any]:
    """TensorBoard logger writing under ``out_dir/tensorboard`` (none when tensorboard is absent)."""
    try:
        from lightning.fabric.loggers import TensorBoardLogger

        return [TensorBoardLogger(root_dir=out_dir, name="tensorboard", version="")]
    except ModuleNotFoundError:  # tensorboard / tensorboardX not installed
        log.warning("tensorboard is not installed; logging to metrics.csv only")
        return []


def _atomic_save(fabric: Fabric, path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fabric.save(tmp, state)
    fabric.barrier()
    if fabric.global_rank == 0:
        os.replace(tmp, path)
    fabric.barrier()


def train(
    objective: nn.Module,
    dataset: Dataset,
    cfg: TrainConfig,
    *,
    batch_to_input: Callable[[Any], Any] = lambda batch: batch,
    collate_fn: Callable | None = None,
    fabric: Fabric | None = None,
    param_groups: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Optimise ``objective`` (a module whose forward returns the loss) on ``dataset``.

    Resumes from ``out_dir/last.ckpt`` when it exists. Loss, learning rate and throughput go
    to ``metrics.csv`` and to TensorBoard (``out_dir/tensorboard``).

    Args:
        objective: Module whose forward maps a batch (after ``batch_to_input``) to the loss.
        dataset: Training samples.
        cfg: Settings.
        batch_to_input: Picks the objective's input from a collated batch.
        collate_fn: DataLoader collation.
        fabric: A launched Fabric (default: one built from ``cfg``).
        param_groups: AdamW parameter groups (each with its ``lr`` and ``weight_decay``, e.g.
            layer-wise lr decay); default: every trainable parameter at ``cfg.lr``, no decay on
            biases and norms.

    Returns:
        ``step``, ``loss`` and ``checkpoint`` path.
    """
    if fabric is None:
        precision = cfg.precision
        if precision == "auto":
            precision = "bf16-mixed" if torch.cuda.is_available() else "32-true"
        fabric = Fabric(
            accelerator=cfg.accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes,
            strategy=cfg.strategy, precision=precision, loggers=_loggers(cfg.out_dir),
        )  # fmt: skip
        fabric.launch()
    out = Path(cfg.out_dir)
    if fabric.global_rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str))
    fabric.seed_everything(cfg.seed, verbose=False)
    if param_groups is None:
        params = [p for p in objective.parameters() if p.requires_grad]
        param_groups = [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]
    if not any(p.requires_grad for g in param_groups for p in g["params"]):
        raise XrayfmError("nothing to train: every parameter is frozen")
    optimizer = torch.optim.AdamW(param_groups, lr=cfg.lr, betas=cfg.betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_lr(s, cfg))
    objective, optimizer = fabric.setup(objective, optimizer)
    state: dict[str, Any] = {"objective": objective, "optimizer": optimizer, "step": 0, "scheduler": {}}
    ckpt = out / CHECKPOINT
    if ckpt.is_file():
        fabric.load(ckpt, state)
        scheduler.load_state_dict(state["scheduler"])
        log.info("resumed from %s at step %d", ckpt, state["step"])
    step = int(state["step"])
    micro = cfg.batch_size
    sampler = StepSampler(
        len(dataset), seed=cfg.seed, rank=fabric.global_rank, world=fabric.world_size,
        start=step * cfg.accumulate * micro,
    )  # fmt: skip
    loader = DataLoader(dataset, batch_size=micro, sampler=sampler, num_workers=cfg.num_workers, collate_fn=collate_fn)
    loader = fabric.setup_dataloaders(loader, use_distributed_sampler=False)
    batches = iter(loader)
    metrics = out / "metrics.csv"
    if fabric.global_rank == 0 and not metrics.exists():
        metrics.write_text("step,loss,lr,images_per_s\n")
    loss_value = float("nan")
    t0, seen = time.perf_counter(), 0
    objective.train()
    for step in progress(range(step, cfg.steps), desc="pretraining", total=cfg.steps - step, unit="step"):
        total = 0.0
        for k in range(cfg.accumulate):
            inputs = batch_to_input(next(batches))
            # after fetching: a fresh DataLoader iterator draws its base seed from the global RNG
            torch.manual_seed(((cfg.seed * 1_000_003 + step) * 64 + k) * 4096 + fabric.global_rank)
            with fabric.no_backward_sync(objective, enabled=k < cfg.accumulate - 1):
                loss = objective(inputs) / cfg.accumulate
                fabric.backward(loss)
            total += loss.detach()
            seen += micro
        if cfg.clip_grad:
            fabric.clip_gradients(objective, optimizer, max_norm=cfg.clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        loss_value = float(fabric.all_reduce(total, reduce_op="mean"))
        if not math.isfinite(loss_value):
            raise XrayfmError(f"loss became {loss_value} at step {step}; lower the learning rate or check the data")
        done = step + 1
        if fabric.global_rank == 0 and (done % cfg.log_every == 0 or done == cfg.steps):
            rate = seen * fabric.world_size / (time.perf_counter() - t0)
            lr_now = max(scheduler.get_last_lr())
            with open(metrics, "a") as fh:
                fh.write(f"{done},{loss_value:.6f},{lr_now:.3e},{rate:.2f}\n")
            fabric.log_dict({"train/loss": loss_value, "train/lr": lr_now, "train/images_per_s": rate}, step=done)
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            state.update(step=done, scheduler=scheduler.state_dict())
            _atomic_save(fabric, ckpt, state)
    for logger in fabric.loggers:
        logger.finalize("success")
    return {"step": cfg.steps, "loss": loss_value, "checkpoint": str(ckpt)}
