"""Checkpoints of a run: when they are due, written atomically by every rank, and read back safely on resume.

A checkpoint holds the model, optimiser, scheduler and step (and what else the loop keeps, such as the
best validation so far). Without sharding, rank 0 writes one
file; with FSDP every rank writes its shard into a folder (plus ``meta.pt``). Either way the
content goes to a temporary sibling whose name rank 0 draws and broadcasts, and once every rank has
finished, rank 0 alone renames it over ``last.ckpt``, so a kill at any moment leaves the previous
complete checkpoint in place.

Files are read with ``weights_only`` unpickling: a checkpoint that would run code, or one that is
empty, truncated or corrupt, is refused in one line naming the file and what to do
(:func:`load_checkpoint`). While training, SIGINT and SIGTERM ask the loop to save at the end of the
step and stop (:class:`StopSignals`, :class:`TrainingInterrupted`); a second signal during the save
is ignored, one outside it stops at once (the previous checkpoint stays whole).
"""

from __future__ import annotations

import logging
import pickle
import pickletools
import re
import signal
import threading
import warnings
import zipfile
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, NoReturn

from lightning.fabric import Fabric

from xrayfm.errors import XrayfmError
from xrayfm.io.atomic import atomic_path
from xrayfm.progress import PROGRESS_LOGGER

log = logging.getLogger(__name__)
progress_log = logging.getLogger(PROGRESS_LOGGER)
CHECKPOINT = "last.ckpt"
#: Signals that make a training run save and stop.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(XrayfmError):
    """A stop signal ended training after the checkpoint of the last step was saved.

    Attributes:
        signum: The signal received (``128 + signum`` is the conventional exit status).
    """

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class StopSignals:
    """While in a ``with`` block, SIGINT and SIGTERM set :attr:`received` instead of stopping the process.

    The loop checks it at the end of each step, saves and raises :class:`TrainingInterrupted`. A
    second signal while :attr:`saving` is ignored, so the checkpoint is written whole; outside a
    save it raises ``KeyboardInterrupt`` at once. Handlers are installed only in the main thread
    (Python allows no other), not for a signal the process was told to ignore (``SIG_IGN``), and
    the previous ones are restored on leaving, also on error.

    Attributes:
        received: The first signal received, or None.
        saving: Set by the loop while it writes a checkpoint.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self.saving = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum
            progress_log.info(
                "%s received: saving a checkpoint at the end of this step, then stopping (send it again to stop "
                "at once, without saving)", signal.Signals(signum).name,
            )  # fmt: skip
        elif not self.saving:
            raise KeyboardInterrupt

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                if signal.getsignal(signum) not in (signal.SIG_IGN, None):  # None: set outside Python, not restorable
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def quiet_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: workers ignore SIGINT and SIGTERM.

    The main process handles them (:class:`StopSignals`) and stops its workers itself; a worker
    killed by a Ctrl-C that reaches the whole process group would fail the step being saved.

    Args:
        worker_id: Index of the worker (unused).
    """
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def save_checkpoint(fabric: Fabric, path: Path, state: dict[str, Any], *, sharded: bool) -> None:
    """Write ``state`` to ``path`` atomically; every rank calls this.

    Args:
        fabric: The run's Fabric.
        path: Destination (a file, or a folder when ``sharded``); an existing one is replaced.
        state: What ``fabric.save`` takes: modules, optimisers and plain values.
        sharded: Each rank writes its shard into a folder (FSDP).
    """
    if fabric.global_rank == 0:
        with atomic_path(path, directory=sharded) as tmp:
            _save_everywhere(fabric, tmp, state)
    else:
        _save_everywhere(fabric, None, state)
    fabric.barrier()  # the new checkpoint is in place before any rank goes on


def _save_everywhere(fabric: Fabric, tmp: Path | None, state: dict[str, Any]) -> None:
    """Save to rank 0's temporary path from every rank, and wait until all have written."""
    fabric.save(fabric.broadcast(tmp), state)
    fabric.barrier()


def load_checkpoint(
    fabric: Fabric, path: Path, state: dict[str, Any], *, sharded: bool, optional: tuple[str, ...] = ()
) -> bool:
    """Restore ``state`` in place from ``path`` when a checkpoint is there; every rank calls this.

    Rank 0 decides whether a checkpoint exists, so all ranks resume or none does. A sharded run
    reads a folder or a single file (e.g. written by a one-device run); other runs read files.
    Files are unpickled ``weights_only`` (tensors, numbers, strings and containers: no code runs).
    Sharded folders are read by ``torch.distributed.checkpoint``, which unpickles their metadata
    fully: resume only from folders your own runs wrote.

    Args:
        fabric: The run's Fabric.
        path: The checkpoint file or folder.
        state: Modules and optimisers to fill, and keys whose values are replaced; ``step`` must
            come back a non-negative int.
        sharded: The run shards parameters (FSDP).
        optional: Keys of ``state`` (plain values) replaced when the checkpoint holds them and left as
            they are otherwise, so that checkpoints written before such a key existed still resume.

    Returns:
        True when a checkpoint was loaded, False when there is none.

    Raises:
        XrayfmError: ``path`` is a sharded folder but this run does not shard; or it is empty,
            corrupt, truncated, of another model, or would run code when unpickled (one line
            naming the file, the problem, and to delete it or use a new ``--out``).
    """
    kind = fabric.broadcast("folder" if path.is_dir() else "file" if path.is_file() else None)
    if kind is None:
        return False
    if kind == "folder" and not sharded:
        raise XrayfmError(
            f"{path} is a sharded checkpoint folder from an FSDP run; resume it with --strategy fsdp or use a new --out"
        )
    if kind == "file" and path.stat().st_size == 0:
        _refuse(path, "it is empty (0 bytes)")
    try:
        with warnings.catch_warnings():  # a hand-made pickle's protocol is not worth a warning before the error
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            required = {k: v for k, v in state.items() if k not in optional}
            remainder = fabric.load(path, required, weights_only=True) or {}
    except Exception as exc:
        _refuse(path, _load_problem(exc, path))
    state.update(required)
    state.update({k: remainder[k] for k in optional if k in remainder})
    step = state.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        _refuse(path, f"it holds no valid step ({step!r})")
    log.info("resumed from %s at step %d", path, step)
    return True


def _load_problem(exc: Exception, path: Path) -> str:
    """What is wrong with a checkpoint that could not be loaded, in a few words."""
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError):
        code = re.search(r"GLOBAL\s+([\w.]+)", text)
        names = [code.group(1)] if code else _pickle_globals(path)
        if names:
            return f"refused: the file asks to run code ({', '.join(dict.fromkeys(names))})"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if isinstance(exc, EOFError) or "PytorchStreamReader" in text:
        return "it is truncated or corrupt (the file ends early or is not a checkpoint)"
    detail = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return f"it is corrupt, not a checkpoint, or from another model or settings ({detail[:300]})"


def _pickle_globals(path: Path) -> list[str]:
    """The callables a plain (not zip) pickle file would import, read from its opcodes without loading it.

    torch's message names them for its zip format; a plain pickle can be refused earlier (e.g. at a
    protocol 4 frame) without a name.
    """
    if not path.is_file() or zipfile.is_zipfile(path):
        return []
    names: list[str] = []
    strings: list[str] = []
    try:
        with open(path, "rb") as fh:
            for op, arg, _ in pickletools.genops(fh):
                if op.name == "GLOBAL":
                    names.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(".".join(strings[-2:]))
                elif isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # not a pickle after all: the names found so far are all there is
        pass
    return names


def _refuse(path: Path, problem: str) -> NoReturn:
    """Raise the one-line error of a checkpoint this run cannot resume from."""
    raise XrayfmError(
        f"cannot resume from {path}: {problem}; delete it to start again from step 0, or use a new --out"
    ) from None
