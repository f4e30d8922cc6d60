"""Arguments several ``xrayfm`` commands share, each declared once."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING

from xrayfm.errors import XrayfmError

if TYPE_CHECKING:
    from xrayfm.train import TrainConfig

#: The dataset splits a command can read.
SPLITS = ("train", "val", "test", "all")
#: Choices of ``--optimizer`` and ``--schedule`` (those of :mod:`xrayfm.train.config`, which loads torch).
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "constant", "poly")


def add_option_arg(p: argparse.ArgumentParser) -> None:
    """Add ``-o/--option KEY=VALUE`` (dataset adapter options, repeatable) to ``p``.

    Args:
        p: A command's parser.
    """
    p.add_argument(
        "-o",
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="adapter option, repeatable (see 'xrayfm datasets NAME')",
    )


def add_split_arg(p: argparse.ArgumentParser, default: str) -> None:
    """Add ``--split`` with the choices of :data:`SPLITS` to ``p``.

    Args:
        p: A command's parser.
        default: The split used when the option is not given.
    """
    p.add_argument("--split", default=default, choices=SPLITS, help=f"split (default {default})")


def add_data_args(p: argparse.ArgumentParser, *, split: str | None, dataset_help: str = "dataset adapter") -> None:
    """Add the positional ``dataset`` and ``root``, then ``-o/--option`` and (unless None) ``--split``.

    Args:
        p: A command's parser.
        split: Default of ``--split``; None when the command reads the training split itself.
        dataset_help: Help of the ``dataset`` argument.
    """
    p.add_argument("dataset", help=dataset_help)
    p.add_argument("root", help="dataset root")
    add_option_arg(p)
    if split is not None:
        add_split_arg(p, split)


def add_threshold_arg(p: argparse.ArgumentParser, *, default: str | None = "youden", fallback: str = "") -> None:
    """Add ``--threshold youden|sens:T|FLOAT``: how multi-label decision thresholds are set.

    Args:
        p: A command's parser.
        default: The rule when the option is not given (None: the command decides).
        fallback: What the command does without a val split, for the help text.
    """
    p.add_argument(
        "--threshold", default=default, metavar="youden|sens:T|FLOAT",
        help="multi-label decision thresholds: Youden's J, or the highest threshold reaching sensitivity T, "
        f"chosen per class on the val split{fallback}; or a fixed number (default youden)",
    )  # fmt: skip


def add_model_arg(p: argparse.ArgumentParser) -> None:
    """Add the positional ``model`` (a finetune run folder or its ``model/`` folder).

    Args:
        p: A command's parser.
    """
    p.add_argument("model", help="finetune run folder or model folder")


def add_run_args(p: argparse.ArgumentParser, out: str) -> None:
    """Add what every training run takes: ``--config`` recipe, adapter options and run folder.

    Args:
        p: A training command's parser; it is recorded as ``args.parser`` so that a recipe
            can become its defaults.
        out: Default run folder.
    """
    p.add_argument("--config", metavar="YAML", help="recipe whose values replace the defaults (options override it)")
    add_option_arg(p)
    p.add_argument("--out", default=out, help=f"run folder (default {out})")
    p.set_defaults(parser=p)


def add_engine_args(
    p: argparse.ArgumentParser,
    *,
    steps: int,
    batch: int,
    lr: float,
    warmup: int,
    clip: float,
    epochs: float = 0.0,
    optimizer: str = "adamw",
    weight_decay: float = 0.05,
) -> None:
    """Add the training engine's options (optimisation, schedule, duration and hardware) as one group.

    Args:
        p: A training command's parser.
        steps: Default optimiser steps.
        batch: Default per-device batch size.
        lr: Default peak learning rate.
        warmup: Default linear warmup steps.
        clip: Default maximum gradient norm (0 = off).
        epochs: Default duration in epochs (0 = use ``--steps``).
        optimizer: Default optimiser, one of :data:`OPTIMIZERS`.
        weight_decay: Default weight decay.
    """
    g = p.add_argument_group("optimisation and hardware")
    g.add_argument("--steps", type=int, default=steps, help=f"optimiser steps (default {steps})")
    g.add_argument(
        "--epochs", type=float, default=epochs, help=f"passes over the data, > 0 replaces --steps (default {epochs:g})"
    )
    g.add_argument("--batch-size", type=int, default=batch, help=f"per-device batch size (default {batch})")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=optimizer, help=f"optimiser (default {optimizer})")
    g.add_argument("--lr", type=float, default=lr, help=f"peak learning rate (default {lr:g})")
    g.add_argument("--min-lr", type=float, default=1e-6, help="final lr of cosine and poly (default 1e-06)")
    g.add_argument("--schedule", choices=SCHEDULES, default="cosine", help="lr after the warmup (default cosine)")
    g.add_argument("--poly-power", type=float, default=1.0, help="exponent of the poly schedule (default 1)")
    g.add_argument("--weight-decay", type=float, default=weight_decay, help=f"weight decay (default {weight_decay:g})")
    g.add_argument("--betas", default="0.9,0.98", metavar="B1,B2", help="AdamW betas (default 0.9,0.98)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    g.add_argument("--nesterov", action="store_true", help="SGD with Nesterov momentum")
    g.add_argument("--warmup", type=int, default=warmup, help=f"linear warmup steps (default {warmup})")
    g.add_argument(
        "--warmup-epochs", type=float, default=0.0, help="warmup in epochs, replaces --warmup if > 0 (default 0)"
    )
    g.add_argument("--clip-grad", type=float, default=clip, help=f"max gradient norm, 0 = off (default {clip:g})")
    g.add_argument("--accumulate", type=int, default=1, help="gradient accumulation (default 1)")
    g.add_argument(
        "--global-batch", type=int, default=0,
        help="images per optimiser step over all processes; > 0 sets --accumulate to reach it (default 0: off)",
    )  # fmt: skip
    g.add_argument("--precision", default="auto", help="auto | 32-true | bf16-mixed | 16-mixed (not with fsdp)")
    g.add_argument("--accelerator", default="auto", help="auto | cpu | gpu")
    g.add_argument("--devices", default="1", help="devices per node (int or auto)")
    g.add_argument("--num-nodes", type=int, default=1, help="nodes (default 1)")
    g.add_argument("--strategy", default="auto", help="auto | ddp | fsdp (sharded; OUT/last.ckpt becomes a folder)")
    g.add_argument(
        "--seed", type=int, default=0,
        help="seed of init, data order, augmentations and masks: one seed, one machine, the same weights (default 0)",
    )  # fmt: skip
    g.add_argument("--workers", type=int, default=0, help="DataLoader workers (default 0)")
    g.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints (default 100)")
    g.add_argument(
        "--checkpoint-minutes", type=float, default=5.0,
        help="minutes between checkpoints, 0 = off (default 5); SIGINT / SIGTERM also save before stopping",
    )  # fmt: skip
    g.add_argument("--log-every", type=int, default=10, help="steps between metrics and progress lines (default 10)")
    g.add_argument("--grad-checkpointing", action="store_true", help="recompute activations: less memory")


def _devices(value: object) -> int | str:
    """``auto`` or a device count, from the text of ``--devices``."""
    text = str(value).strip()
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise XrayfmError(f"--devices must be a number of devices or 'auto', got {value!r}") from None


def _betas(value: object) -> tuple[float, float]:
    """The pair of ``--betas``: text ``B1,B2`` (command line) or a two-item list (a YAML recipe)."""
    items = value.split(",") if isinstance(value, str) else value
    try:
        if not isinstance(items, Sequence) or len(items) != 2:
            raise ValueError
        return float(items[0]), float(items[1])
    except (TypeError, ValueError):
        raise XrayfmError(f"--betas must be two numbers B1,B2 such as 0.9,0.999, got {value!r}") from None


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The engine configuration of the options :func:`add_engine_args` and :func:`add_run_args` added.

    Its device settings are checked here (:func:`~xrayfm.train.check_devices`), so that a command
    refuses them before it reads data or builds a model.

    Args:
        args: Parsed arguments of a training command.

    Returns:
        The :class:`~xrayfm.train.TrainConfig` of the run.

    Raises:
        XrayfmError: ``--devices`` is neither a number nor ``auto``, ``--betas`` is not two
            numbers, a value out of range (:meth:`~xrayfm.train.TrainConfig.check`), or the device
            settings are ones this machine cannot run (no GPU for ``--accelerator gpu``, an unknown
            ``--strategy`` or ``--precision``, fewer than one device or node...).
    """
    from xrayfm.train import TrainConfig, check_devices

    cfg = TrainConfig(
        out_dir=args.out, steps=args.steps, epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer,
        lr=args.lr, min_lr=args.min_lr, schedule=args.schedule, poly_power=args.poly_power, warmup_steps=args.warmup,
        warmup_epochs=args.warmup_epochs, weight_decay=args.weight_decay, betas=_betas(args.betas),
        momentum=args.momentum, nesterov=args.nesterov, accumulate=args.accumulate, global_batch=args.global_batch,
        precision=args.precision,
        accelerator=args.accelerator, devices=_devices(args.devices), num_nodes=args.num_nodes,
        strategy=args.strategy, seed=args.seed, num_workers=args.workers, checkpoint_every=args.checkpoint_every,
        checkpoint_minutes=args.checkpoint_minutes, log_every=args.log_every, clip_grad=args.clip_grad,
    )  # fmt: skip
    check_devices(cfg)
    return cfg
