"""Devices and parallelism of a run: the launched Fabric, and fully sharded data parallel (FSDP).

``strategy="fsdp"`` is PyTorch's FSDP2 (``fully_shard``) through Fabric's ``ModelParallelStrategy``:
each process keeps a shard of every parameter, gradient and optimiser state. Each transformer block
(an element of a ``blocks`` container, as in timm ViTs) is one unit, gathered only for its own
forward and backward; the remaining parameters form the root unit. It runs on GPUs (NCCL) and on
CPUs (gloo). Its checkpoints are folders holding one shard file per process
(:mod:`xrayfm.train.checkpoint`). Other strategy names go to Fabric unchanged.

:func:`check_devices` refuses, in one line, what this machine or the engine cannot run (a GPU that
is not there, a strategy that needs one, a device count or name Fabric does not take) before
anything is built; :func:`make_fabric` runs it first.
"""

from __future__ import annotations

import logging
from typing import Any, get_args

import torch
from lightning.fabric import Fabric
from lightning.fabric.connector import _PRECISION_INPUT
from lightning.fabric.strategies import (
    STRATEGY_REGISTRY,
    DataParallelStrategy,
    DDPStrategy,
    FSDPStrategy,
    ModelParallelStrategy,
)
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.fabric.utilities.rank_zero import rank_zero_only
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard

from xrayfm.errors import XrayfmError
from xrayfm.train.config import TrainConfig

log = logging.getLogger(__name__)
FSDP_PRECISIONS = ("32-true", "bf16-mixed", "bf16-true")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
#: ``--precision`` values: ``auto`` and the names Fabric takes (``16-mixed``, ``bf16-mixed``, ``32-true``...).
PRECISIONS = tuple(dict.fromkeys(["auto", *(str(v) for group in get_args(_PRECISION_INPUT) for v in get_args(group))]))
#: ``--strategy`` values: ``auto``, ``fsdp`` (FSDP2, see above) and Fabric's registered names.
STRATEGIES = ("auto", "fsdp", *sorted(set(STRATEGY_REGISTRY.available_strategies()) - {"fsdp"}))


def check_devices(cfg: TrainConfig) -> None:
    """Refuse in one line the device settings of ``cfg`` that this machine or the engine cannot run.

    Cheap (nothing is launched or built), so commands call it before reading data or models.

    Args:
        cfg: Settings; ``accelerator``, ``devices``, ``num_nodes``, ``strategy`` and ``precision`` are checked.

    Raises:
        XrayfmError: An unknown accelerator, strategy or precision; a GPU accelerator without a
            visible GPU; a device or node count below 1 or above the GPUs visible; a strategy that
            starts processes from a function (``ddp_spawn``, ``ddp_fork``, ``ddp_notebook``: the
            engine is launched as a script) or that needs GPUs on CPUs; ``fsdp`` with ``16-mixed``.
    """
    accelerator = _resolve_accelerator(cfg.accelerator)
    devices = cfg.devices
    if isinstance(devices, int) and not isinstance(devices, bool):
        if devices < 1:
            raise XrayfmError(f"--devices must be at least 1 (or 'auto' for all), got {devices}")
        if accelerator == "cuda" and devices > torch.cuda.device_count():
            raise XrayfmError(
                f"--devices {devices}: only {torch.cuda.device_count()} CUDA GPU(s) visible on this machine; "
                "use a smaller --devices or 'auto'"
            )
    if cfg.num_nodes < 1:
        raise XrayfmError(f"--num-nodes must be at least 1, got {cfg.num_nodes}")
    _check_strategy(cfg.strategy, accelerator)
    precision = str(cfg.precision)
    if precision not in PRECISIONS:
        names = ", ".join(p for p in PRECISIONS if p == "auto" or "-" in p)  # not the legacy 16 / 32 / bf16
        raise XrayfmError(f"--precision {precision} is unknown; use one of {names}")
    if cfg.strategy == "fsdp" and precision not in ("auto", *FSDP_PRECISIONS):
        raise XrayfmError(f"--strategy fsdp needs --precision {' or '.join(FSDP_PRECISIONS)}, not {precision}")


def _resolve_accelerator(name: str) -> str:
    """The accelerator Fabric would pick for ``name``: ``cpu``, ``cuda``, ``mps`` or ``tpu``."""
    if name not in ACCELERATORS:
        raise XrayfmError(f"--accelerator {name} is not one of {', '.join(ACCELERATORS)}")
    mps = torch.backends.mps.is_available()
    if name in ("gpu", "cuda") and not torch.cuda.is_available() and not (name == "gpu" and mps):
        raise XrayfmError(
            f"--accelerator {name}: no CUDA GPU is visible on this machine (torch.cuda.is_available() is False); "
            "use --accelerator cpu or auto"
        )
    if name == "mps" and not mps:
        raise XrayfmError("--accelerator mps: no Apple GPU (MPS) is available on this machine; use cpu or auto")
    if name == "gpu":  # Fabric's order: MPS first
        return "mps" if mps else "cuda"
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    return name


def _check_strategy(name: str, accelerator: str) -> None:
    """Refuse a strategy Fabric does not know, one the engine cannot launch, or one that needs GPUs on CPUs."""
    if name not in STRATEGIES:
        raise XrayfmError(f"--strategy {name} is unknown; use auto, ddp or fsdp (or another Lightning Fabric strategy)")
    if name in ("auto", "fsdp"):
        return
    entry = STRATEGY_REGISTRY[name]
    if entry["init_params"].get("start_method", "popen") != "popen":
        raise XrayfmError(
            f"--strategy {name} starts processes from a function, but xrayfm runs as a script; "
            "use --strategy ddp (one process per device, or under torchrun)"
        )
    # on CPUs Fabric runs dp as ddp; the others (FSDP1, XLA, DeepSpeed: a DDPStrategy subclass) need accelerators
    if accelerator == "cpu" and entry["strategy"] not in (DDPStrategy, DataParallelStrategy):
        raise XrayfmError(f"--strategy {name} needs GPUs, and this run is on CPUs; use --strategy ddp or fsdp")


def is_global_zero() -> bool:
    """Whether this process is rank 0 of its run (or runs alone): the one that reports.

    Fabric sets the rank when it launches; before that it comes from the launcher's environment
    (``RANK``, ``LOCAL_RANK``, ``SLURM_PROCID``).

    Returns:
        True on rank 0.
    """
    return rank_zero_only.rank == 0


def make_fabric(cfg: TrainConfig) -> Fabric:
    """Build and launch the Fabric of ``cfg`` (devices, strategy, precision, TensorBoard logger).

    Where Fabric runs DDP (``--strategy ddp``, or ``auto`` over several devices) and
    ``cfg.broadcast_buffers`` is False, DDP is built with ``forward_sync_buffers=False``: buffers
    are broadcast from rank 0 once, when the module is set up, not before every forward pass
    (see :attr:`~xrayfm.train.TrainConfig.broadcast_buffers`).

    Args:
        cfg: Settings; ``precision="auto"`` is ``bf16-mixed`` on GPUs and ``32-true`` on CPUs.

    Returns:
        The launched Fabric (with several devices, this process is one of the ranks).

    Raises:
        XrayfmError: Settings :func:`check_devices` refuses, or that Fabric refuses (e.g. a
            strategy whose package is not installed).
    """
    check_devices(cfg)
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16-mixed" if torch.cuda.is_available() and cfg.accelerator != "cpu" else "32-true"
    strategy: Any = ModelParallelStrategy(parallelize_fn=shard_blocks) if cfg.strategy == "fsdp" else cfg.strategy
    fabric = _build_fabric(cfg, strategy, precision)
    if not cfg.broadcast_buffers and type(fabric.strategy) is DDPStrategy:  # what "ddp" or "auto" chose
        name = cfg.strategy if cfg.strategy in STRATEGY_REGISTRY else "ddp"
        params = STRATEGY_REGISTRY[name]["init_params"]
        fabric = _build_fabric(cfg, DDPStrategy(**params, forward_sync_buffers=False), precision)
    fabric.launch()
    return fabric


def _build_fabric(cfg: TrainConfig, strategy: Any, precision: str) -> Fabric:
    """A Fabric of ``cfg``'s devices with ``strategy`` and ``precision``, not launched yet."""
    try:
        return Fabric(
            accelerator=cfg.accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes, strategy=strategy,
            precision=precision, loggers=_loggers(cfg.out_dir),
        )  # fmt: skip
    except (ValueError, TypeError, RuntimeError, ImportError, MisconfigurationException) as exc:
        first = next(iter(str(exc).strip().splitlines()), type(exc).__name__)
        raise XrayfmError(
            f"Lightning Fabric cannot run --accelerator {cfg.accelerator} --devices {cfg.devices} "
            f"--strategy {cfg.strategy} --precision {precision} --num-nodes {cfg.num_nodes}: {first}"
        ) from None


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


def full_state_dict(module: nn.Module, *, sharded: bool) -> dict[str, torch.Tensor]:
    """The whole state of ``module`` (parameters and persistent buffers) as CPU tensors of their own.

    Args:
        module: The module being trained; under sharding every rank must call (a collective gather).
        sharded: Its parameters are sharded (FSDP).

    Returns:
        Name -> a contiguous CPU copy (no two entries share memory, as safetensors requires); under
        sharding only rank 0's dict is filled.
    """
    if sharded:
        state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        state = module.state_dict()
    return {name: value.detach().to("cpu", copy=True).contiguous() for name, value in state.items()}


def share_rank_zero_buffers(fabric: Fabric, module: nn.Module) -> None:
    """Overwrite every buffer of ``module`` with rank 0's, on every rank (nothing to do on one process).

    Args:
        fabric: The run's Fabric (a collective call: every rank calls).
        module: The module whose buffers (e.g. BatchNorm running statistics kept per rank when
            :attr:`~xrayfm.train.TrainConfig.broadcast_buffers` is False) become rank 0's.
    """
    if fabric.world_size == 1:
        return
    for buffer in module.buffers():
        torch.distributed.broadcast(buffer.data, src=0)


def copy_full_weights(sharded: nn.Module, dest: nn.Module) -> None:
    """Gather the full state of a sharded module on every rank and load it into a plain one.

    Args:
        sharded: The module set up by a sharding strategy (a collective call: every rank calls).
        dest: A module of the same structure with ordinary tensors.
    """
    dest.load_state_dict(get_model_state_dict(sharded, options=StateDictOptions(full_state_dict=True)))
