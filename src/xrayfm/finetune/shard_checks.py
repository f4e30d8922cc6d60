"""What ``xrayfm finetune shards OUT`` can and cannot do: the training split of shards is a stream.

A shard folder's train split is read as a LitData stream (:func:`~xrayfm.train.streaming.open_dataset`),
so nothing that needs every training record before the first step works on it: a patient-level subset
(``--train-fraction``), positive weights from the label counts (``--pos-weight auto``), the check that
every class has a positive training sample (not run: ``--allow-empty-classes`` is what shards always do),
and the check that a box task has box-annotated training images. The options that would need such a
scan are refused by name rather than ignored, and a box task is trained only when named with ``--task``.
The val and test splits are read by index (:class:`~xrayfm.train.streaming.ShardSplit`), so evaluation,
thresholds, bootstrap intervals and reports work as for an adapter; shards have no ``all`` split.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from xrayfm.errors import XrayfmError
from xrayfm.tasks import TaskSpec

if TYPE_CHECKING:
    from xrayfm.finetune.run import FinetuneConfig

log = logging.getLogger(__name__)


def check_shard_settings(cfg: FinetuneConfig) -> None:
    """Refuse the settings a streamed training split cannot honour, naming the option (before any data is read).

    Args:
        cfg: The run's settings, with ``dataset`` ``shards``.

    Raises:
        XrayfmError: ``train_fraction`` below 1, ``pos_weight`` ``auto`` or an ``all`` evaluation split.
    """
    why = "the train split of shards is streamed, so it cannot be scanned before training"
    if cfg.train_fraction != 1.0:
        raise XrayfmError(
            f"--train-fraction {cfg.train_fraction:g} draws training patients, and {why}; fine-tune from the dataset's "
            "adapter for a label-efficiency run, or leave --train-fraction out"
        )
    if cfg.pos_weight == "auto":
        raise XrayfmError(f"--pos-weight auto counts every training label, and {why}; leave --pos-weight out")
    if "all" in cfg.eval_splits:
        raise XrayfmError("--eval-split all: shards have no 'all' split; evaluate train, val or test")
    log.info("%s: classes without a positive training sample are not looked for (shards are streamed)", cfg.root)


def streamed_tasks(tasks: list[TaskSpec], *, requested: bool) -> list[TaskSpec]:
    """The tasks trained from a stream: a box task only when named with ``--task``.

    Whether the train split has box-annotated images is not known before reading it all; a box task
    without any trains on zero losses, so one that came with the manifest's default tasks is left out
    with a warning, and one the user named is trusted.

    Args:
        tasks: The selected tasks.
        requested: Whether the user named them (``--task``).

    Returns:
        The tasks to train.

    Raises:
        XrayfmError: Nothing left to train.
    """
    if requested:
        return tasks
    keep = [t for t in tasks if t.kind != "detection"]
    for t in tasks:
        if t.kind == "detection":
            log.warning(
                "shards: not training box task %r by default (whether the streamed train split has box annotations "
                "is not checked); name it with --task %s to train it",
                t.name,
                t.name,
            )
    if not keep:
        raise XrayfmError("shards: the only tasks are box tasks; name them with --task to train them")
    return keep
