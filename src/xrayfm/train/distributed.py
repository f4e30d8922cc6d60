"""Devices and parallelism of a run: the launched Fabric, and fully sharded data parallel (FSDP).

``strategy="fsdp"`` is PyTorch's FSDP2 (``fully_shard``) through Fabric's ``ModelParallelStrategy``:
each process keeps a shard of every parameter, gradient and optimiser state. Each transformer block
(an element of a ``blocks`` container, as in timm ViTs) is one unit, gathered only for its own
forward and backward; the remaining parameters form the root unit. It runs on GPUs (NCCL) and on
CPUs (gloo). Its checkpoints are folders holding one shard file per process
(:mod:`xrayfm.train.checkpoint`). Other strategy names go to Fabric unchanged.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from lightning.fabric import Fabric
from lightning.fabric.strategies import FSDPStrategy, ModelParallelStrategy
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard

from xrayfm.errors import XrayfmError
from xrayfm.train.config import TrainConfig

log = logging.getLogger(__name__)
FSDP_PRECISIONS = ("32-true", "bf16-mixed", "bf16-true")


def make_fabric(cfg: TrainConfig) -> Fabric:
    """Build and launch the Fabric of ``cfg`` (devices, strategy, precision, TensorBoard logger).

    Args:
        cfg: Settings; ``precision="auto"`` is ``bf16-mixed`` on GPUs and ``32-true`` on CPUs.

    Returns:
        The launched Fabric (with several devices, this process is one of the ranks).

    Raises:
        XrayfmError: ``strategy="fsdp"`` with a precision FSDP cannot use (``16-mixed``).
    """
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16-mixed" if torch.cuda.is_available() and cfg.accelerator != "cpu" else "32-true"
    strategy: Any = cfg.strategy
    if cfg.strategy == "fsdp":
        if precision not in FSDP_PRECISIONS:
            raise XrayfmError(f"--strategy fsdp needs --precision {' or '.join(FSDP_PRECISIONS)}, not {precision}")
        strategy = ModelParallelStrategy(parallelize_fn=shard_blocks)
    fabric = Fabric(
        accelerator=cfg.accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes, strategy=strategy,
        precision=precision, loggers=_loggers(cfg.out_dir),
    )  # fmt: skip
    fabric.launch()
    return fabric


def _loggers(out_dir: str) -> list[Any]:
    """TensorBoard logger writing under ``out_dir/tensorboard`` (none when tensorboard is absent)."""
    try:
        from lightning.fabric.loggers import TensorBoardLogger

        return [TensorBoardLogger(root_dir=out_dir, name="tensorboard", version="")]
    except ModuleNotFoundError:  # tensorboard / tensorboardX not installed
        log.warning("tensorboard is not installed; logging to metrics.csv only")
        return []


def shard_blocks(module: nn.Module, mesh: DeviceMesh) -> nn.Module:
    """Apply FSDP2 to ``module`` over all processes: one unit per transformer block, one for the rest.

    Args:
        module: The module to shard in place (every element of a ``blocks`` ``ModuleList`` /
            ``Sequential`` must be called through its ``forward``, as timm ViTs do).
        mesh: Fabric's device mesh; its processes, flattened, form the one data-parallel dimension.

    Returns:
        ``module``, its parameters now sharded ``DTensor``s.
    """
    world = init_device_mesh(mesh.device_type, (mesh.size(),))
    containers = [
        child
        for name, child in module.named_modules()
        if name.rsplit(".", 1)[-1] == "blocks" and isinstance(child, (nn.ModuleList, nn.Sequential))
    ]
    for block in (b for container in containers for b in container):
        fully_shard(block, mesh=world)
    fully_shard(module, mesh=world)
    return module


def is_sharded(fabric: Fabric) -> bool:
    """Whether ``fabric`` shards parameters (FSDP): they change in place and checkpoints are folders.

    Args:
        fabric: A Fabric.

    Returns:
        True for Fabric's FSDP and model-parallel strategies.
    """
    return isinstance(fabric.strategy, (FSDPStrategy, ModelParallelStrategy))


def copy_full_weights(sharded: nn.Module, dest: nn.Module) -> None:
    """Gather the full state of a sharded module on every rank and load it into a plain one.

    Args:
        sharded: The module set up by a sharding strategy (a collective call: every rank calls).
        dest: A module of the same structure with ordinary tensors.
    """
    dest.load_state_dict(get_model_state_dict(sharded, options=StateDictOptions(full_state_dict=True)))
