"""Validation during training (:func:`~xrayfm.train.engine.train`'s ``validate``): running it without
disturbing training, and keeping the objective's state at the best value.

:func:`run_validation` runs the caller's ``validate`` in eval mode, without gradients and with
the RNG states (Python, NumPy, torch) and the modules' train / eval modes restored afterwards, so a run
with validation trains the same weights as one without. Rank 0's values are taken, so every rank agrees;
they are appended to ``val_metrics.csv`` (:data:`VAL_METRICS`) and, at a better ``select_metric``, the
objective's whole state dict (buffers included) is written to ``best.safetensors`` (:data:`BEST`). The
best and last step and values form the ``validation`` record that travels in the checkpoint
(:func:`no_validation`, checked on resume by :func:`checked_validation`), so a resumed run keeps the same best.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric import Fabric
from safetensors.torch import save_file
from torch import nn

from xrayfm.errors import XrayfmError
from xrayfm.io.atomic import atomic_path
from xrayfm.progress import PROGRESS_LOGGER
from xrayfm.train.config import TrainConfig
from xrayfm.train.distributed import full_state_dict, share_rank_zero_buffers

progress_log = logging.getLogger(PROGRESS_LOGGER)
#: Files of a run with validation: the objective's state at the best validation, and every validation's values.
BEST, VAL_METRICS = "best.safetensors", "val_metrics.csv"
#: A function that validates the module being trained, returning named values of the whole run.
Validate = Callable[[nn.Module], Mapping[str, float]]


def no_validation() -> dict[str, Any]:
    """What a run knows of its validations before the first: nothing (kept in checkpoints as ``validation``)."""
    return {"best_step": None, "best": None, "last_step": None, "last": None}


def checked_validation(value: Any, ckpt: Path) -> dict[str, Any]:
    """The ``validation`` record of a checkpoint, refused in one line when it is not one this engine wrote.

    Args:
        value: The record as loaded from the checkpoint.
        ckpt: The checkpoint, for the error.

    Returns:
        A copy of the record.

    Raises:
        XrayfmError: Not a record of :func:`no_validation`'s keys with a step and values (or neither) each.
    """
    fresh = no_validation()
    ok = isinstance(value, dict) and set(value) == set(fresh)
    for kind in ("best", "last"):
        step, values = (value.get(f"{kind}_step"), value.get(kind)) if ok else (None, None)
        ok = ok and (
            (step is None and values is None)
            or (isinstance(step, int) and isinstance(values, dict) and all(isinstance(k, str) for k in values))
        )
    if not ok:
        raise XrayfmError(
            f"cannot resume from {ckpt}: its validation record is malformed ({value!r:.200}); delete it to start "
            "again from step 0, or use a new --out"
        )
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in value.items()}


def run_validation(
    fabric: Fabric,
    module: nn.Module,
    work: nn.Module,
    validate: Validate,
    cfg: TrainConfig,
    step: int,
    record: dict[str, Any],
    *,
    sharded: bool,
    lines: bool,
) -> dict[str, Any]:
    """Validate ``work`` at ``step``; on a better ``cfg.select_metric`` save its state as the best. Every rank calls.

    Args:
        fabric: The run's Fabric.
        module: Fabric's wrapper of ``work``: put in eval mode for the call, its modes restored after.
        work: The module being trained (under FSDP, the sharded copy), handed to ``validate``.
        validate: The caller's validation (see :func:`~xrayfm.train.engine.train`).
        cfg: Settings (``select_metric``, ``select_mode``, ``broadcast_buffers``, ``out_dir``, ``steps``).
        step: Steps done.
        record: The validation record so far (:func:`no_validation`'s keys).
        sharded: Whether ``work`` is sharded (its full state is gathered for ``best.safetensors``).
        lines: Log a progress line (rank 0, where no progress bar is shown).

    Returns:
        The updated record (best and last step and values).

    Raises:
        XrayfmError: ``validate`` returned no ``cfg.select_metric``, or names other than ``val_metrics.csv``'s.
    """
    if not cfg.broadcast_buffers:
        share_rank_zero_buffers(fabric, work)
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with _rng_kept(fabric.device), torch.no_grad():
            values = validate(work)
    finally:
        for m, mode in modes:
            m.training = mode
    values = fabric.broadcast({str(k): float(v) for k, v in values.items()})
    metric = cfg.select_metric
    if metric not in values:
        raise XrayfmError(f"validation returned {sorted(values)}, without select_metric {metric!r}")
    record = {**record, "last_step": step, "last": values}
    previous = (record["best"] or {}).get(metric)
    value = values[metric]
    improved = math.isfinite(value) and (
        previous is None or (value < previous if cfg.select_mode == "min" else value > previous)
    )
    out = Path(cfg.out_dir)
    if improved:
        record.update(best_step=step, best=values)
        tensors = full_state_dict(work, sharded=sharded) if sharded or fabric.global_rank == 0 else {}
        if fabric.global_rank == 0:
            metadata = {"step": str(step), **{k: repr(v) for k, v in values.items()}}
            with atomic_path(out / BEST) as tmp:
                save_file(tensors, str(tmp), metadata=metadata)
    if fabric.global_rank == 0:
        _append_validation(out / VAL_METRICS, step, values)
        fabric.log_dict({f"val/{k}": v for k, v in values.items()}, step=step)
        if lines:
            shown = "  ".join(f"{k} {v:.4g}" for k, v in values.items())
            best = f"best {metric} {record['best'][metric]:.4g} at step {record['best_step']}" if record["best"] else ""
            progress_log.info("step %d/%d  validation  %s  %s", step, cfg.steps, shown, best)
    return record


@contextmanager
def _rng_kept(device: torch.device) -> Iterator[None]:
    """Restore Python's, NumPy's and torch's RNG states (CPU and ``device``) on leaving the block."""
    python, numpy = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device], device_type=device.type):
            yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy)


def _append_validation(path: Path, step: int, values: dict[str, float]) -> None:
    """Append a row of ``values`` to ``path`` (``step`` and one column per name, in full; the header comes first)."""
    header = path.read_text().split("\n", 1)[0] if path.is_file() else ""
    if not header:
        header = ",".join(["step", *values])
        path.write_text(header + "\n")
    names = header.split(",")[1:]
    if set(names) != set(values):
        raise XrayfmError(f"validation returned {sorted(values)}, but {path} has columns {names}; use a new --out")
    with open(path, "a") as fh:
        fh.write(",".join([str(step), *(repr(values[n]) for n in names)]) + "\n")
