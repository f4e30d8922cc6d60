"""The training loop shared by every method, on Lightning Fabric.

The loop stays explicit (objectives differ: MIM, anatomy-contrastive, multi-task); Fabric
supplies devices, DDP / FSDP, mixed precision and multi-node launch from one set of arguments,
so the same call runs on a laptop CPU and a GPU cluster. The optimiser (AdamW or SGD) and the
learning-rate schedule come from the config (:mod:`xrayfm.train.optim`, :mod:`xrayfm.train.schedules`);
durations in epochs become steps once the dataset and the processes are known
(:func:`~xrayfm.train.config.resolve_steps`). Runs are exactly resumable: the data
order is a seeded permutation per epoch sharded by rank (:class:`StepSampler`), each sample is read
with the RNGs seeded by its position in the run (:class:`~xrayfm.train.seeding.SeededSamples`: random
augmentations replay whatever the DataLoader workers), the global RNG is re-seeded before every
forward pass (:func:`micro_batch_seed`), and checkpoints (model, optimiser, scheduler, step) are
swapped in atomically (:mod:`xrayfm.train.checkpoint`). A LitData stream (shards) is read in its own
shuffled, rank- and worker-sharded order instead, and its loader's position travels in the checkpoint
(:mod:`xrayfm.train.streaming`). A checkpoint is saved every
``checkpoint_every`` steps, every ``checkpoint_minutes``, at the last step, and at the end of the
step in which SIGINT or SIGTERM arrived, after which :class:`TrainingInterrupted` stops the run;
all ranks agree on it through the all-reduce of the loss that every step does anyway. On resume
``metrics.csv`` is cut back to the checkpoint's step and "resumed from step N of M" is logged.

Rank 0 reports progress: a bar on a terminal, else every ``log_every`` steps a line on the
``xrayfm.progress`` logger (:mod:`xrayfm.progress`), such as
``step 40/200  loss 0.6931  lr 2.9e-04  12.3 img/s  ETA 0:01:05``.

Given a ``validate`` function, the loop validates every ``validate_every`` steps (default: at each
``checkpoint_every`` step) and at the last step, not at saves by the clock or on a signal (so the
steps validated, and the best among them, do not depend on when a run was interrupted). It appends
the values to ``val_metrics.csv`` (cut back on resume like ``metrics.csv``) and keeps the
objective's whole state dict (buffers included) at the best value of ``select_metric`` in
``best.safetensors``; the best step and values travel in the checkpoint, so a resumed run keeps the
same best. Validation leaves training as it was: the modules' train / eval modes and the RNG states
(Python, NumPy, torch) are restored after it, so a run with validation trains the same weights as
one without (:mod:`xrayfm.train.validation`).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import signal
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from lightning.fabric import Fabric
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from xrayfm.errors import XrayfmError
from xrayfm.io.atomic import atomic_write_text
from xrayfm.progress import PROGRESS_LOGGER, format_clock, progress, progress_enabled
from xrayfm.train.batches import LoaderBatches
from xrayfm.train.checkpoint import (
    CHECKPOINT,
    StopSignals,
    TrainingInterrupted,
    load_checkpoint,
    quiet_worker,
    save_checkpoint,
)
from xrayfm.train.config import TrainConfig, resolve_accumulate, resolve_steps
from xrayfm.train.distributed import copy_full_weights, is_sharded, make_fabric
from xrayfm.train.optim import build_optimizer, named_param_groups
from xrayfm.train.sampler import StepSampler
from xrayfm.train.schedules import build_scheduler
from xrayfm.train.seeding import PositionSampler, SeededSamples, micro_batch_seed
from xrayfm.train.streaming import StreamBatches, is_stream, stream_length
from xrayfm.train.validation import BEST, VAL_METRICS, Validate, checked_validation, no_validation, run_validation

log = logging.getLogger(__name__)
progress_log = logging.getLogger(PROGRESS_LOGGER)
METRICS_HEADER = "step,loss,lr,images_per_s"
#: ``(rank, world, start) ->`` the dataset indices one rank reads, from its ``start``-th sample of the run on.
DataOrder = Callable[[int, int, int], Sampler[int]]


def train(
    objective: nn.Module,
    dataset: Dataset,
    cfg: TrainConfig,
    *,
    batch_to_input: Callable[[Any], Any] = lambda batch: batch,
    collate_fn: Callable | None = None,
    fabric: Fabric | None = None,
    param_groups: list[dict[str, Any]] | None = None,
    validate: Validate | None = None,
    data_order: DataOrder | None = None,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Optimise ``objective`` (a module whose forward returns the loss) on ``dataset``.

    Durations in epochs are resolved to steps first (:func:`~xrayfm.train.config.resolve_steps` of
    the dataset length and Fabric's world size); ``out_dir/train_config.json`` records the resolved
    settings. Resumes from ``out_dir/last.ckpt`` (a file, or a folder under FSDP) when it exists. Loss,
    learning rate and throughput go every ``cfg.log_every`` steps to ``metrics.csv``, to
    TensorBoard (``out_dir/tensorboard``) and, where no progress bar is shown
    (:func:`~xrayfm.progress.progress_enabled`), to the ``xrayfm.progress`` logger at INFO: a line
    with the step, loss, learning rate, images per second and time left. Only rank 0 writes and reports.
    On return ``objective`` holds the trained weights as ordinary tensors on every rank (under
    FSDP a copy is sharded and trained, and its gathered weights are loaded back).

    Args:
        objective: Module whose forward maps a batch (after ``batch_to_input``) to the loss.
        dataset: Training samples: a map-style dataset, or a LitData ``StreamingDataset`` (e.g.
            :class:`~xrayfm.train.streaming.SeededShards`), read by :class:`~xrayfm.train.streaming.StreamBatches`
            (``data_order`` does not apply; an epoch is :func:`~xrayfm.train.streaming.stream_length` per rank).
        cfg: Settings.
        batch_to_input: Picks the objective's input from a collated batch.
        collate_fn: DataLoader collation.
        fabric: A launched Fabric (default: :func:`~xrayfm.train.distributed.make_fabric` of ``cfg``,
            which first refuses device settings this machine cannot run).
        param_groups: Parameter groups of ``objective`` (each with its ``lr`` and
            ``weight_decay``, e.g. layer-wise lr decay); default: every trainable parameter at
            ``cfg.lr``, no decay on biases and norms.
        validate: Called by every rank, when ``cfg.validate_every`` (or ``checkpoint_every``) says and
            at the last step, with the module being trained (the plain module, not Fabric's wrapper;
            under FSDP its sharded copy), in eval mode and without gradients; returns named values,
            among them ``cfg.select_metric``. It reduces over the processes itself (only it knows how
            to weigh each rank's share, e.g. an all-reduce of sums and counts); the engine takes rank
            0's values, so that every rank agrees on the best step. With ``cfg.broadcast_buffers``
            False, rank 0's buffers are first broadcast to every rank.
        data_order: ``(rank, world, start)`` -> the indices of ``dataset`` that rank reads from its
            ``start``-th sample on (steps done x ``accumulate`` x ``batch_size``); each ``batch_size``
            in a row are a micro-batch. Default: :class:`~xrayfm.train.sampler.StepSampler`. A schedule
            that draws each step from one part of the dataset (Foundation X) passes its own.
        on_step: Called by every rank with the number of steps done: before each step (the first of
            a resumed run included, so state that follows the step, e.g. frozen parameters, is
            restored) and after the last step, before its checkpoint. Other checkpoints precede
            ``on_step`` of the next step, so effects that are not idempotent (an EMA update) happen
            once in a resumed run too. It acts on ``objective``: not for FSDP, which trains a copy.

    Returns:
        ``step`` (the last step done), ``steps`` and ``warmup_steps`` (resolved), ``start_step``
        (the step this call resumed from, 0 for a fresh run), ``seconds`` (wall time of this call's
        loop), ``loss`` (mean over ranks of the last step), ``checkpoint`` path, and with
        ``validate``: ``best_step`` and ``best`` (the step and values of the best validation, None
        before any), ``last_validation`` (the values at the last step) and ``best_weights``
        (``out_dir/best.safetensors``, the objective's whole state dict at the best step; None before any).

    Raises:
        XrayfmError: Nothing to train, neither steps nor epochs, device settings this machine cannot run
            (:func:`~xrayfm.train.distributed.check_devices`), a checkpoint this run cannot
            resume, a non-finite loss, or ``validate`` values without ``cfg.select_metric``.
    """
    groups = named_param_groups(objective, param_groups, weight_decay=cfg.weight_decay)
    if fabric is None:
        fabric = make_fabric(cfg)
    stream = is_stream(dataset)  # a LitData stream (shards): read in its own order, its position checkpointed
    if stream:
        batch = resolve_accumulate(cfg, fabric.world_size).batch_size
        n = stream_length(dataset, batch_size=batch, num_workers=cfg.num_workers) * fabric.world_size
    else:
        n = len(dataset)
    cfg = resolve_steps(cfg, n, fabric.world_size)
    out = Path(cfg.out_dir)
    reports = fabric.global_rank == 0  # files, metrics and progress: rank 0 only
    if reports and (cfg.epochs > 0 or cfg.warmup_epochs > 0):
        log.info("epochs of %d samples over %d processes: %d steps, %d of them warmup", n,
                 fabric.world_size, cfg.steps, cfg.warmup_steps)  # fmt: skip
    if reports:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str))
    fabric.seed_everything(cfg.seed, verbose=False)
    sharded = is_sharded(fabric)
    work = copy.deepcopy(objective) if sharded else objective  # sharding replaces the parameters in place
    module = fabric.setup_module(work)
    optimizer = build_optimizer(work, groups, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    optimizer = fabric.setup_optimizers(optimizer)
    state: dict[str, Any] = {
        "objective": module, "optimizer": optimizer, "step": 0, "scheduler": {}, "validation": no_validation(),
        "loader": {},
    }  # fmt: skip
    ckpt = out / CHECKPOINT
    if load_checkpoint(fabric, ckpt, state, sharded=sharded, optional=("validation", "loader")):
        scheduler.load_state_dict(state["scheduler"])
    step = int(state["step"])
    resumed = f"resumed from step {step} of {cfg.steps}" if step else None
    metrics = out / "metrics.csv"
    validation = checked_validation(state["validation"], ckpt)
    if reports:
        _cut_rows(metrics, step, METRICS_HEADER)
        _cut_rows(out / VAL_METRICS, step)
        if resumed:
            progress_log.info("%s (%s)", resumed, ckpt)
    micro, rank = cfg.batch_size, fabric.global_rank
    start = step * cfg.accumulate * micro
    if stream:
        if step and not state["loader"]:
            raise XrayfmError(
                f"cannot resume from {ckpt}: it holds no stream position (saved by a run that read another dataset "
                "or by an older xrayfm); use a new --out"
            )
        batches: StreamBatches | LoaderBatches = StreamBatches(
            dataset, batch_size=micro, num_workers=cfg.num_workers, collate_fn=collate_fn, state=state["loader"],
            to_device=fabric.to_device, worker_init_fn=quiet_worker,
        )  # fmt: skip
    else:
        if data_order is None:
            order: Sampler[int] = StepSampler(n, seed=cfg.seed, rank=rank, world=fabric.world_size, start=start)
        else:
            order = data_order(rank, fabric.world_size, start)
        loader = DataLoader(
            SeededSamples(dataset, seed=cfg.seed, rank=rank), batch_size=micro, sampler=PositionSampler(order, start),
            num_workers=cfg.num_workers, collate_fn=collate_fn, worker_init_fn=quiet_worker,
        )  # fmt: skip
        batches = LoaderBatches(loader, fabric.to_device)
    loss_value = float("nan")
    lines = reports and not progress_enabled()  # no bar where nobody watches one: a line every log_every steps
    t0, seen, first, last_save = time.perf_counter(), 0, step, time.monotonic()
    module.train()
    bar = progress(range(step, cfg.steps), desc="training", total=cfg.steps - step, unit="step", show=reports)
    # closing: an interrupted run's bar is cleared before its message, and the loader's workers always stop
    with StopSignals() as stop, closing(bar), closing(batches):
        for step in bar:
            if on_step is not None:
                on_step(step)
            total = torch.zeros(())
            for k in range(cfg.accumulate):
                inputs = batch_to_input(next(batches))
                # after fetching: a fresh DataLoader iterator draws its base seed from the global RNG
                torch.manual_seed(micro_batch_seed(cfg.seed, step, k, rank))
                with fabric.no_backward_sync(module, enabled=k < cfg.accumulate - 1):
                    loss = module(inputs) / cfg.accumulate
                    fabric.backward(loss)
                total = total.to(loss.device) + loss.detach().float()
                seen += micro
            if cfg.clip_grad:
                fabric.clip_gradients(module, optimizer, max_norm=cfg.clip_grad)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            # one all-reduce a step: the mean loss, whether rank 0's clock asks to save, whether any rank must stop
            timed = (
                reports and cfg.checkpoint_minutes > 0 and time.monotonic() - last_save >= 60 * cfg.checkpoint_minutes
            )
            flags = torch.tensor([float(timed), float(stop.received is not None)], device=total.device)
            loss_value, save_now, stopping = fabric.all_reduce(
                torch.cat([total.reshape(1), flags]), reduce_op="mean"
            ).tolist()
            if not math.isfinite(loss_value):
                raise XrayfmError(f"loss became {loss_value} at step {step}; lower the learning rate or check the data")
            done = step + 1
            if on_step is not None and done == cfg.steps:
                on_step(done)
            if reports and (done % cfg.log_every == 0 or done == cfg.steps):
                elapsed = time.perf_counter() - t0
                rate = seen * fabric.world_size / elapsed
                lr_now = max(scheduler.get_last_lr())
                with open(metrics, "a") as fh:
                    fh.write(f"{done},{loss_value:.6f},{lr_now:.3e},{rate:.2f}\n")
                fabric.log_dict({"train/loss": loss_value, "train/lr": lr_now, "train/images_per_s": rate}, step=done)
                if lines:
                    eta = format_clock(elapsed / (done - first) * (cfg.steps - done))
                    progress_log.info(
                        "step %d/%d  loss %.4f  lr %.1e  %.1f img/s  ETA %s", done, cfg.steps, loss_value, lr_now, rate,
                        eta,
                    )  # fmt: skip
            if validate is not None and (done == cfg.steps or done % (cfg.validate_every or cfg.checkpoint_every) == 0):
                validation = run_validation(fabric, module, work, validate, cfg, done, validation, sharded=sharded,
                                            lines=lines)  # fmt: skip
            if done % cfg.checkpoint_every == 0 or done == cfg.steps or save_now or stopping:
                state.update(step=done, scheduler=scheduler.state_dict(), validation=validation,
                             loader=batches.state_dict() if isinstance(batches, StreamBatches) else {})  # fmt: skip
                stop.saving = True
                try:
                    save_checkpoint(fabric, ckpt, state, sharded=sharded)
                finally:
                    stop.saving = False
                last_save = time.monotonic()
            if stopping and done < cfg.steps:
                _finalize(fabric, "interrupted")
                signum = stop.received or signal.SIGTERM  # a rank other than the one signalled
                raise TrainingInterrupted(
                    f"stopped by {signal.Signals(signum).name} after step {done} of {cfg.steps}, saved in {ckpt}; "
                    "run the same command again to resume",
                    signum,
                )
    if sharded:
        copy_full_weights(work, objective)
    _finalize(fabric, "success")
    result = {
        "step": cfg.steps, "steps": cfg.steps, "warmup_steps": cfg.warmup_steps, "start_step": first,
        "resumed": resumed, "seconds": round(time.perf_counter() - t0, 1), "loss": loss_value, "checkpoint": str(ckpt),
    }  # fmt: skip
    if validate is not None:
        best_weights = str(out / BEST) if validation["best_step"] is not None else None
        result.update(best_step=validation["best_step"], best=validation["best"], last_validation=validation["last"],
                      best_weights=best_weights)  # fmt: skip
    return result


def _finalize(fabric: Fabric, status: str) -> None:
    """Flush and close the run's loggers (TensorBoard)."""
    for logger in fabric.loggers:
        logger.finalize(status)


def _cut_rows(path: Path, step: int, header: str | None = None) -> None:
    """Keep the header and the whole rows of CSV ``path`` up to ``step``, rewritten atomically, so that a
    resumed run writes no step twice; ``header`` (default: the file's first line) gives the columns, and a
    missing file gets it (or stays missing without one)."""
    lines = path.read_text().splitlines() if path.is_file() else []
    header = header or (lines[0] if lines else None)
    if header is None:
        return
    width = len(header.split(","))
    kept = [r for r in lines[1:] if len(f := r.split(",")) == width and f[0].isdigit() and int(f[0]) <= step]
    atomic_write_text(path, "\n".join([header, *kept]) + "\n")
