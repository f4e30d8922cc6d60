"""The model ``evaluate`` and ``compare`` score: a fine-tuned model, or one head of a Foundation X model.

A fine-tuned model (``xrayfm finetune``) is scored as it is. A multi-task model (``xrayfm pretrain
multitask OUT``: heads keyed ``dataset/task``) is scored through one head, named by ``--head``:
:class:`~xrayfm.cli.head_model.HeadModel` presents that head as a one-task model whose task is the
evaluated dataset's own (its name and classes), so prediction, metrics, intervals, thresholds,
reports and the paired comparison run unchanged. The head's kind and classes, in order, must equal the dataset task's.

It lives in the command line because the package map lets neither ``evaluate`` nor ``models``
import ``pretrain``; the view itself is :class:`~xrayfm.pretrain.multitask_serving.MultiTaskView`,
the server's.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xrayfm.errors import XrayfmError

if TYPE_CHECKING:
    from torch import nn


def add_head_args(p: argparse.ArgumentParser) -> None:
    """Add ``--head`` and ``--weights``: what a Foundation X multi-task model is scored with.

    Args:
        p: The parser of ``evaluate`` or ``compare``.
    """
    p.add_argument("--head", metavar="DATASET/TASK",
                   help="a Foundation X multi-task model (xrayfm pretrain multitask OUT): the head that answers the "
                        "dataset's task; its kind and classes must equal the task's")  # fmt: skip
    p.add_argument("--weights", choices=["teacher", "student"],
                   help="a multi-task model's weight set (default teacher, as xrayfm serve)")  # fmt: skip


def check_head_args(paths: Sequence[str | Path], head: str | None, weights: str | None) -> None:
    """Refuse ``--head`` / ``--weights`` when none of ``paths`` is a multi-task model, and a multi-task
    model without ``--head``.

    Raises:
        XrayfmError: As above.
    """
    from xrayfm.pretrain.multitask_serving import multitask_folder

    multitask = [p for p in paths if multitask_folder(p) is not None]
    if not multitask and (head is not None or weights is not None):
        flag = "--head" if head is not None else "--weights"
        raise XrayfmError(f"{flag} picks what a Foundation X multi-task model answers with; "
                          f"{', '.join(map(str, paths))} holds none")  # fmt: skip
    if multitask and head is None:
        raise XrayfmError(f"{multitask[0]} is a Foundation X multi-task model: name the head that answers with "
                          "--head DATASET/TASK (xrayfm serve or its model/multitask.json lists them)")  # fmt: skip


def load_scored_model(
    path: str | Path,
    *,
    dataset: str,
    root: str | Path,
    split: str,
    options: Mapping[str, Any] | None = None,
    head: str | None = None,
    weights: str | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """A saved model ready to score ``dataset``: a fine-tuned model, or one head of a multi-task model.

    For a multi-task model the dataset is built once without a transform to read its task specs
    (adapters read metadata, not pixels, when built).

    Args:
        path: A finetune run folder, a ``pretrain multitask`` run folder, or either's ``model/``.
        dataset: Adapter name of the evaluated dataset.
        root: Its root.
        split: The evaluated split.
        options: Adapter options.
        head: The multi-task head (``dataset/task``) that answers; ignored for a fine-tuned model.
        weights: ``teacher`` (default) or ``student`` of a multi-task model; ignored for a fine-tuned model.

    Returns:
        (model in eval mode, sidecar); a multi-task model's sidecar also names ``head`` and ``served_weights``.

    Raises:
        XrayfmError: No model at ``path``, no ``head`` for a multi-task model, or a head that does not fit.
    """
    from xrayfm.cli.head_model import bind_head
    from xrayfm.models.task_checkpoint import load_task_model
    from xrayfm.pretrain.multitask_serving import WEIGHTS, load_served_multitask, multitask_folder
    from xrayfm.train.streaming import open_dataset

    folder = multitask_folder(path)
    if folder is None:
        return load_task_model(path)
    if head is None:
        raise XrayfmError(f"{folder} is a Foundation X multi-task model: name its head with --head DATASET/TASK")
    view, meta = load_served_multitask(folder, weights=weights or WEIGHTS[0])
    tasks = open_dataset(dataset, root, split, options=dict(options or {}), stream=False).tasks  # adapter or shards
    return bind_head(view, head, tasks, dataset).eval(), {**meta, "head": head}
