"""Checkpoints of a run: written atomically by every rank, and found again on resume.

A checkpoint holds the model, optimiser, scheduler and step. Without sharding, rank 0 writes one
file; with FSDP every rank writes its shard into a folder (plus ``meta.pt``). Either way the
content goes to a temporary sibling whose name rank 0 draws and broadcasts, and once every rank has
finished, rank 0 alone renames it over ``last.ckpt``, so a kill at any moment leaves the previous
complete checkpoint in place.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lightning.fabric import Fabric

from xrayfm.errors import XrayfmError
from xrayfm.io.atomic import atomic_path

log = logging.getLogger(__name__)
CHECKPOINT = "last.ckpt"


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


def load_checkpoint(fabric: Fabric, path: Path, state: dict[str, Any], *, sharded: bool) -> bool:
    """Restore ``state`` in place from ``path`` when a checkpoint is there; every rank calls this.

    Rank 0 decides whether a checkpoint exists, so all ranks resume or none does. A sharded run
    reads a folder or a single file (e.g. written by a one-device run); other runs read files.

    Args:
        fabric: The run's Fabric.
        path: The checkpoint file or folder.
        state: Modules and optimisers to fill, and keys whose values are replaced.
        sharded: The run shards parameters (FSDP).

    Returns:
        True when a checkpoint was loaded, False when there is none.

    Raises:
        XrayfmError: ``path`` is a sharded folder but this run does not shard.
    """
    kind = fabric.broadcast("folder" if path.is_dir() else "file" if path.is_file() else None)
    if kind is None:
        return False
    if kind == "folder" and not sharded:
        raise XrayfmError(
            f"{path} is a sharded checkpoint folder from an FSDP run; resume it with --strategy fsdp or use a new --out"
        )
    fabric.load(path, state)
    log.info("resumed from %s at step %d", path, state["step"])
    return True
