"""Settings of a training run: optimiser, schedule, duration, devices and checkpoint cadence.

:class:`TrainConfig` checks its values when it is made (:meth:`TrainConfig.check`); durations given
in epochs become optimiser steps where the dataset and the number of processes are known
(:func:`resolve_steps`, called by :func:`~xrayfm.train.train`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from xrayfm.errors import XrayfmError

#: Optimisers the engine builds (:func:`~xrayfm.train.optim.build_optimizer`).
OPTIMIZERS = ("adamw", "sgd")
#: How the selected validation value improves (:attr:`TrainConfig.select_mode`).
SELECT_MODES = ("min", "max")
#: Learning-rate schedules after the linear warmup (:func:`~xrayfm.train.schedules.lr_factor`).
SCHEDULES = ("cosine", "constant", "poly")


@dataclass
class TrainConfig:
    """Optimisation and runtime settings (paper defaults of EVA-X MIM where they apply).

    Attributes:
        out_dir: Run folder (config, checkpoints, metrics.csv).
        steps: Total optimiser steps (0 only with ``epochs``, which then sets it).
        epochs: Duration in passes over the training set; > 0 replaces ``steps`` (see
            :func:`resolve_steps`).
        batch_size: Per-device batch size.
        optimizer: ``adamw`` or ``sgd`` (with ``momentum`` and ``nesterov``).
        lr: Peak learning rate, reached at the end of the linear warmup.
        min_lr: Final learning rate of the ``cosine`` and ``poly`` schedules.
        schedule: After the warmup, ``cosine`` (decay to ``min_lr``), ``constant`` (EVA-X
            classification's ``--fixed_lr``), or ``poly`` (mmseg's poly policy, power ``poly_power``).
        poly_power: Exponent of the ``poly`` schedule.
        warmup_steps: Linear warmup length in optimiser steps.
        warmup_epochs: Warmup length in epochs; > 0 replaces ``warmup_steps``.
        weight_decay: Weight decay (decoupled for AdamW, L2 for SGD) of groups that do not set their own.
        betas: AdamW betas.
        momentum: SGD momentum.
        nesterov: SGD with Nesterov momentum.
        accumulate: Gradient accumulation (micro-batches per optimiser step).
        global_batch: Images per optimiser step over all processes, as papers state it; > 0 sets
            ``accumulate`` to ``global_batch / (batch_size x processes)`` (see :func:`resolve_steps`),
            so a recipe's batch is reached on one small machine and on a cluster alike.
        clip_grad: Max gradient norm (0 = off).
        precision: Fabric precision (``32-true``, ``bf16-mixed``, ``16-mixed``); ``auto`` picks
            bf16-mixed on GPU and 32-true on CPU.
        accelerator: ``auto``, ``cpu``, ``gpu`` (also ``cuda``, ``mps``).
        devices: Devices per node (int of at least 1, or ``auto``).
        num_nodes: Number of nodes.
        strategy: ``auto``, ``ddp`` (or another Fabric strategy name the engine can launch, see
            :func:`~xrayfm.train.distributed.check_devices`), or ``fsdp``: PyTorch FSDP2 over all
            processes, on GPUs or CPUs, with sharded checkpoint folders (see :mod:`xrayfm.train.distributed`).
        seed: Seed of data order, augmentations, masks and init, in ``[0, 2**32)`` (the commands
            seed with it before they build a model, see :func:`~xrayfm.train.seeding.seed_everything`).
        num_workers: DataLoader workers (any number replays the same augmentations).
        checkpoint_every: Steps between checkpoints.
        checkpoint_minutes: Minutes between checkpoints, whatever the step (0 = off); a run also saves
            at its last step and when SIGINT or SIGTERM stops it.
        log_every: Steps between metric rows (and progress lines where no bar is shown).
        validate_every: Steps between validations when :func:`~xrayfm.train.train` is given a ``validate``
            function; 0 validates at each ``checkpoint_every`` step. Either way the last step is validated;
            saves by the clock or on a signal are not (their steps depend on the wall clock, and a run must
            select the same best step however often it was interrupted).
        select_metric: The value of ``validate``'s result that selects the best weights (``best.safetensors``).
        select_mode: ``min`` (lower is better, e.g. a loss) or ``max`` (e.g. an AUC).
        broadcast_buffers: Under DDP, broadcast rank 0's buffers to every rank before each forward pass
            (PyTorch's default). False keeps each rank's own buffers: right for buffers the ranks keep
            identical by construction (MoCo's queue, filled with keys gathered from every rank: 32 MB a
            step saved), but BatchNorm running statistics are buffers too and then follow each rank's
            own batches. Training is unaffected (BatchNorm normalises with batch statistics in training);
            checkpoints and exports hold rank 0's statistics, and the engine broadcasts rank 0's buffers
            before each validation so that every rank validates the same model. The reference MoCo code
            uses plain DDP, which broadcasts.
        extra: Free-form settings of the method that runs the loop (saved with the run).

    Raises:
        XrayfmError: On creation (and :func:`dataclasses.replace`), a value out of its range or an
            unknown optimiser or schedule name (see :meth:`check`).
    """

    out_dir: str = "runs/pretrain"
    steps: int = 1000
    epochs: float = 0.0
    batch_size: int = 32
    optimizer: str = "adamw"
    lr: float = 3e-4
    min_lr: float = 1e-6
    schedule: str = "cosine"
    poly_power: float = 1.0
    warmup_steps: int = 100
    warmup_epochs: float = 0.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.98)
    momentum: float = 0.9
    nesterov: bool = False
    accumulate: int = 1
    global_batch: int = 0
    clip_grad: float = 3.0
    precision: str = "auto"
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    seed: int = 0
    num_workers: int = 0
    checkpoint_every: int = 100
    checkpoint_minutes: float = 5.0
    log_every: int = 10
    validate_every: int = 0
    select_metric: str = "loss"
    select_mode: str = "min"
    broadcast_buffers: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Refuse settings the engine cannot run; ``betas`` becomes a tuple of floats.

        Device settings are checked where the machine is known (:func:`~xrayfm.train.check_devices`).

        Raises:
            XrayfmError: One line naming the first bad setting.
        """
        if self.optimizer not in OPTIMIZERS:
            raise XrayfmError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise XrayfmError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.select_mode not in SELECT_MODES:
            raise XrayfmError(f"select_mode must be one of {', '.join(SELECT_MODES)}, got {self.select_mode!r}")
        if not isinstance(self.select_metric, str) or not self.select_metric:
            raise XrayfmError(f"select_metric must be the name of a validation value, got {self.select_metric!r}")
        try:
            b1, b2 = (float(b) for b in self.betas)
        except (TypeError, ValueError):
            raise XrayfmError(f"betas must be two numbers, got {self.betas!r}") from None
        self.betas = (b1, b2)
        rules = [
            ("steps", self.steps >= 0, "at least 0 (0: set by epochs)"),
            ("epochs", self.epochs >= 0, "at least 0 (0: use steps)"),
            ("warmup_steps", self.warmup_steps >= 0, "at least 0"),
            ("warmup_epochs", self.warmup_epochs >= 0, "at least 0 (0: use warmup_steps)"),
            ("batch_size", self.batch_size >= 1, "at least 1"),
            ("accumulate", self.accumulate >= 1, "at least 1"),
            ("global_batch", self.global_batch >= 0, "at least 0 (0: batch_size x processes x accumulate)"),
            ("lr", self.lr > 0, "positive"),
            ("min_lr", 0 <= self.min_lr <= self.lr, f"between 0 and lr ({self.lr:g})"),
            ("poly_power", self.poly_power > 0, "positive"),
            ("weight_decay", self.weight_decay >= 0, "at least 0"),
            ("betas", all(0 <= b < 1 for b in self.betas), "two numbers in [0, 1)"),
            ("momentum", self.momentum >= 0, "at least 0"),
            ("nesterov", not self.nesterov or self.momentum > 0, "used with a positive momentum"),
            ("clip_grad", self.clip_grad >= 0, "at least 0 (0: off)"),
            ("num_workers", self.num_workers >= 0, "at least 0"),
            ("seed", 0 <= self.seed < 2**32, "between 0 and 2**32 - 1"),
            ("checkpoint_every", self.checkpoint_every >= 1, "at least 1"),
            ("checkpoint_minutes", self.checkpoint_minutes >= 0, "at least 0 (0: off)"),
            ("log_every", self.log_every >= 1, "at least 1"),
            ("validate_every", self.validate_every >= 0, "at least 0 (0: at each checkpoint_every step)"),
        ]
        for name, ok, expected in rules:
            if not ok:
                raise XrayfmError(f"{name} must be {expected}, got {getattr(self, name)!r}")


def steps_per_epoch(cfg: TrainConfig, n_samples: int, world_size: int = 1) -> int:
    """Optimiser steps of one pass over the data, as :class:`~xrayfm.train.sampler.StepSampler` deals it.

    Each of ``world_size`` processes takes ``n_samples // world_size`` samples of a pass, in batches
    of ``batch_size`` and ``accumulate`` batches per step; the last step of a pass is rounded up (it
    reaches into the next pass, as a last partial batch would).

    Args:
        cfg: Settings (``batch_size``, ``accumulate``).
        n_samples: Training set length.
        world_size: Number of processes.

    Returns:
        ``ceil((n_samples // world_size) / (batch_size * accumulate))``.

    Raises:
        XrayfmError: Fewer samples than processes.
    """
    per_rank = n_samples // world_size
    if per_rank < 1:
        raise XrayfmError(f"dataset of {n_samples} samples is smaller than the {world_size} processes")
    return math.ceil(per_rank / (cfg.batch_size * cfg.accumulate))


def _epochs_to_steps(epochs: float, per_epoch: int) -> int:
    """``ceil(epochs * per_epoch)``, without float noise turning 3.0000000000000004 into 4."""
    return math.ceil(round(epochs * per_epoch, 9))


def resolve_accumulate(cfg: TrainConfig, world_size: int = 1) -> TrainConfig:
    """``cfg`` with ``accumulate`` set so that each optimiser step sees ``global_batch`` images.

    Args:
        cfg: Settings (``global_batch``, ``batch_size``, ``accumulate``).
        world_size: Number of processes.

    Returns:
        A new config with ``accumulate = global_batch / (batch_size x world_size)``; ``cfg``
        itself when ``global_batch`` is 0. Resolving twice changes nothing.

    Raises:
        XrayfmError: ``global_batch`` is not a multiple of ``batch_size x world_size``, or an
            ``accumulate`` other than 1 contradicts it.
    """
    if cfg.global_batch <= 0:
        return cfg
    per_step = cfg.batch_size * world_size
    if cfg.global_batch % per_step:
        raise XrayfmError(
            f"global batch {cfg.global_batch} is not a multiple of batch size {cfg.batch_size} x {world_size} "
            "processes; choose a batch size that divides it"
        )
    accumulate = cfg.global_batch // per_step
    if cfg.accumulate not in (1, accumulate):
        raise XrayfmError(
            f"accumulate {cfg.accumulate} contradicts global batch {cfg.global_batch} (which needs {accumulate} "
            f"at batch size {cfg.batch_size} x {world_size} processes); give one of them"
        )
    return replace(cfg, accumulate=accumulate)


def resolve_steps(cfg: TrainConfig, n_samples: int, world_size: int = 1) -> TrainConfig:
    """``cfg`` with the global batch turned into gradient accumulation (:func:`resolve_accumulate`)
    and durations in epochs into optimiser steps.

    ``steps = max(1, ceil(epochs * steps_per_epoch))`` when ``epochs`` > 0 and ``warmup_steps =
    ceil(warmup_epochs * steps_per_epoch)`` when ``warmup_epochs`` > 0 (:func:`steps_per_epoch`);
    other values are kept. The result depends only on its arguments, so a resumed run resolves to
    the same numbers, and resolving twice changes nothing.

    Args:
        cfg: Settings.
        n_samples: Training set length.
        world_size: Number of processes (Fabric's ``world_size``).

    Returns:
        A new config (``cfg`` itself when nothing is given in epochs).

    Raises:
        XrayfmError: Neither ``steps`` nor ``epochs`` is set, or fewer samples than processes.
    """
    if cfg.epochs <= 0 and cfg.steps < 1:
        raise XrayfmError("steps must be at least 1, or set epochs")
    cfg = resolve_accumulate(cfg, world_size)
    if cfg.epochs <= 0 and cfg.warmup_epochs <= 0:
        return cfg
    per_epoch = steps_per_epoch(cfg, n_samples, world_size)
    steps = max(1, _epochs_to_steps(cfg.epochs, per_epoch)) if cfg.epochs > 0 else cfg.steps
    warmup = _epochs_to_steps(cfg.warmup_epochs, per_epoch) if cfg.warmup_epochs > 0 else cfg.warmup_steps
    return replace(cfg, steps=steps, warmup_steps=warmup)


#: TrainConfig fields that are command-line options, and the option's name where it differs.
_CLI_NAMES = {"out_dir": "out", "warmup_steps": "warmup", "num_workers": "workers"}
_CLI_FIELDS = (
    "out_dir", "steps", "epochs", "batch_size", "optimizer", "lr", "min_lr", "schedule", "poly_power",
    "weight_decay", "warmup_steps", "warmup_epochs", "betas", "momentum", "nesterov", "clip_grad", "accumulate",
    "global_batch", "precision", "accelerator", "devices", "num_nodes", "strategy", "seed", "num_workers",
    "checkpoint_every", "checkpoint_minutes", "log_every",
)  # fmt: skip


def engine_options(cfg: TrainConfig) -> dict[str, Any]:
    """``cfg`` in the training commands' option names (``--out``, ``--warmup``...), as a run's
    ``config.yaml`` records them; ``betas`` is a list ``[b1, b2]``, ``extra`` (no option) is left out."""
    out = {_CLI_NAMES.get(k, k): getattr(cfg, k) for k in _CLI_FIELDS}
    out["betas"] = list(cfg.betas)
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
