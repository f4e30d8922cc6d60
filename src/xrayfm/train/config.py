"""Settings of a training run: optimisation, schedule, devices and checkpoint cadence."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
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
        accelerator: ``auto``, ``cpu``, ``gpu`` (also ``cuda``, ``mps``).
        devices: Devices per node (int of at least 1, or ``auto``).
        num_nodes: Number of nodes.
        strategy: ``auto``, ``ddp`` (or another Fabric strategy name the engine can launch, see
            :func:`~xrayfm.train.distributed.check_devices`), or ``fsdp``: PyTorch FSDP2 over all
            processes, on GPUs or CPUs, with sharded checkpoint folders (see :mod:`xrayfm.train.distributed`).
        seed: Seed of data order, masks and init.
        num_workers: DataLoader workers (0 for bit-exact resume when transforms are random).
        checkpoint_every: Steps between checkpoints.
        log_every: Steps between metric rows (and progress lines where no bar is shown).
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


#: TrainConfig fields that are command-line options, and the option's name where it differs.
_CLI_NAMES = {"out_dir": "out", "warmup_steps": "warmup", "num_workers": "workers"}
_CLI_FIELDS = (
    "out_dir", "steps", "batch_size", "lr", "weight_decay", "warmup_steps", "clip_grad", "accumulate", "precision",
    "accelerator", "devices", "num_nodes", "strategy", "seed", "num_workers", "checkpoint_every", "log_every",
)  # fmt: skip


def engine_options(cfg: TrainConfig) -> dict[str, Any]:
    """``cfg`` in the training commands' option names (``--out``, ``--warmup``...), as a run's
    ``config.yaml`` records them; ``min_lr``, ``betas`` and ``extra`` have no option and are left out."""
    out = {_CLI_NAMES.get(k, k): getattr(cfg, k) for k in _CLI_FIELDS}
    out["devices"] = str(cfg.devices)  # --devices takes text: a number or auto
    return out


def write_run_config(path: str | Path, settings: dict[str, Any]) -> Path:
    """Write a run's resolved settings as ``config.yaml`` (atomically), readable back by ``--config``.

    Args:
        path: The file (``OUT/config.yaml``).
        settings: Option name -> value; None values (the options' defaults) are left out, paths
            become strings, and adapter options (a mapping under ``option``) become ``key=value``
            strings with Python-literal values, as ``-o`` takes them.

    Returns:
        The path written.
    """
    import yaml

    from xrayfm.io.atomic import atomic_write_text

    plain: dict[str, Any] = {}
    for key, value in settings.items():
        if key == "option":
            value = [f"{k}={str(v) if isinstance(v, Path) else v!r}" for k, v in (value or {}).items()]
        elif isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        if value is not None:
            plain[key] = value
    return atomic_write_text(path, yaml.safe_dump(plain, sort_keys=False))
