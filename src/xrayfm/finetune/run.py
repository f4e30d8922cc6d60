"""One fine-tuning run: what ``xrayfm finetune`` calls.

dataset -> (label-fraction subset) -> augmentation -> backbone (+ pretrained weights) + heads
-> mode (full / linear / LoRA) -> LLRD AdamW on the shared engine -> merged model saved as
``OUT/model`` -> evaluation of the validation and test splits (metrics with bootstrap CIs).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xrayfm.data.base import XrayDataset
from xrayfm.data.inspect import train_split_problem
from xrayfm.data.registry import build_dataset
from xrayfm.data.sample import collate_samples
from xrayfm.data.transforms import FinetuneAugment
from xrayfm.errors import DatasetError, XrayfmError
from xrayfm.finetune.label_efficiency import fraction_subset
from xrayfm.finetune.losses import positive_weights
from xrayfm.finetune.modes import LoraSettings, apply_mode, merge_lora
from xrayfm.finetune.objective import FinetuneObjective
from xrayfm.finetune.optim import finetune_param_groups
from xrayfm.io.atomic import atomic_write_json
from xrayfm.models.preprocess import resolve_preprocess
from xrayfm.models.registry import backbone_kwargs, create_model
from xrayfm.models.task_checkpoint import save_task_model
from xrayfm.models.task_model import XrayModel
from xrayfm.tasks import TASK_KINDS
from xrayfm.train import TrainConfig, is_global_zero, train
from xrayfm.train.config import engine_options, write_run_config

log = logging.getLogger(__name__)


@dataclass
class FinetuneConfig:
    """What to adapt, to which data, how.

    Attributes:
        dataset: Adapter name.
        root: Dataset root.
        dataset_options: Adapter options (``policy``, ``views``...).
        tasks: Task names to train (default: every classification / segmentation task).
        arch: Backbone architecture.
        pretrained: Backbone weights (file, export folder, pretraining run) or None (random).
        img_size: Input side.
        mode: ``full``, ``linear`` or ``lora``.
        lora: LoRA settings (mode ``lora``).
        layer_decay: Layer-wise lr decay (EVA-X: 0.55 classification, 0.85 segmentation);
            None = off.
        drop_path: Stochastic depth rate of the backbone.
        dropout: Dropout before classification layers.
        decoder: Segmentation decoder (``upernet`` / ``unet``; default by backbone).
        train_fraction: Share of training patients used (label efficiency).
        allow_empty_classes: Train even when a class has no positive training sample.
        pos_weight: ``auto`` (negatives / positives per class) or None.
        focal_gamma: Focal loss gamma for classification (0 = BCE / CE).
        flip: Horizontal-flip probability of the training view.
        grad_checkpointing: Recompute backbone activations in the backward pass (less memory).
        epochs: Passes over the (subset) training set; used when ``train.steps`` is 0.
        eval_splits: Splits evaluated after training.
        n_boot: Bootstrap resamples for confidence intervals.
        threshold: Decision threshold for sensitivity / specificity.
        train: Engine settings (``out_dir``, lr, batch size, precision...).
    """

    dataset: str
    root: str
    dataset_options: dict[str, Any] = field(default_factory=dict)
    tasks: list[str] | None = None
    arch: str = "eva_x_tiny_patch16"
    pretrained: str | None = None
    img_size: int = 224
    mode: str = "full"
    lora: LoraSettings = field(default_factory=LoraSettings)
    layer_decay: float | None = 0.55
    drop_path: float = 0.1
    dropout: float = 0.0
    decoder: str | None = None
    train_fraction: float = 1.0
    allow_empty_classes: bool = False
    pos_weight: str | None = None
    focal_gamma: float = 0.0
    flip: float = 0.5
    grad_checkpointing: bool = False
    epochs: float = 10.0
    eval_splits: tuple[str, ...] = ("val", "test")
    n_boot: int = 1000
    threshold: float = 0.5
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-3, warmup_steps=50, clip_grad=0.0))


def _select_tasks(ds: XrayDataset, names: list[str] | None) -> list:
    usable = [t for t in ds.tasks if t.kind in TASK_KINDS]
    if names:
        known = {t.name: t for t in ds.tasks}
        missing = [n for n in names if n not in known]
        if missing:
            raise XrayfmError(f"{ds.name} has no task {missing}; its tasks: {sorted(known)}")
        bad = [n for n in names if known[n].kind not in TASK_KINDS]
        if bad:
            raise XrayfmError(f"tasks {bad} are of a kind fine-tuning does not train yet (supported: {TASK_KINDS})")
        return [known[n] for n in names]
    if not usable:
        raise XrayfmError(f"{ds.name} has no classification or segmentation task to train")
    return usable


def _annotated_box_tasks(ds: XrayDataset, tasks: list, *, requested: bool) -> list:
    """Box tasks train only on box-annotated images: one whose training split has none is refused
    when the user asked for it, else left out with a warning (e.g. ChestX-ray14, whose boxes are
    in the official test list)."""
    if any(r.boxes is not None for r in ds.records):
        return tasks
    keep = []
    for t in tasks:
        if t.kind != "detection":
            keep.append(t)
            continue
        problem = f"{ds.name}/{ds.split}: none of the {len(ds)} training images has a box annotation for {t.name!r}"
        if requested:
            raise DatasetError(f"{problem}; choose another --task, or a split or -o option that includes boxes")
        log.warning("%s; not training it", problem)
    if not keep:
        raise DatasetError(f"{ds.name}/{ds.split}: nothing to train: no task has annotations in the training split")
    return keep


def _check_labels(ds: XrayDataset, tasks: list, allow_empty: bool) -> None:
    """Refuse a training split where a classification task has no known labels or a class never
    occurs, before any training time is spent."""
    for t in tasks:
        if t.kind == "detection":  # checked by _annotated_box_tasks
            continue
        if t.kind == "segmentation":
            if not any(r.mask is not None for r in ds.records):
                raise DatasetError(f"{ds.name}/{ds.split}: task {t.name!r} but no sample has a mask")
            continue
        labels = [r.labels for r in ds.records if r.labels is not None]
        if not labels:
            raise DatasetError(f"{ds.name}/{ds.split}: task {t.name!r} but none of the {len(ds)} images has labels")
        stack = torch.from_numpy(np.stack(labels))
        empty = [c for c, col in zip(t.classes, stack.T) if not (col == 1).any()]
        if empty and not allow_empty:
            raise DatasetError(
                f"{ds.name}/{ds.split}: no positive sample of {empty} in the training set of {len(ds)} images; "
                "choose other classes, a larger train fraction, or --allow-empty-classes (allow_empty_classes=True in "
                "Python) to train anyway"
            )
        if empty:
            log.warning("%s/%s: no positive sample of %s in the training subset", ds.name, ds.split, empty)


def run_finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Adapt a backbone to a dataset, save the model, evaluate it; returns the run summary.

    The settings go first to ``OUT/config.yaml`` in ``xrayfm finetune``'s option names (see
    :func:`write_finetune_config`). The summary (``OUT/summary.json``) holds the parameter counts,
    the training subset, the final loss and the metrics (with 95% bootstrap intervals) per
    evaluated split.
    """
    from xrayfm.evaluate.run import evaluate_dataset

    out = Path(cfg.train.out_dir)
    write_finetune_config(cfg, out / "config.yaml")
    full = build_dataset(
        cfg.dataset, cfg.root, "train", transform=FinetuneAugment(cfg.img_size, flip=cfg.flip), **cfg.dataset_options
    )
    if not len(full):  # say which splits the images are in, not that no sample has labels
        every = build_dataset(cfg.dataset, cfg.root, "all", **cfg.dataset_options)
        raise DatasetError(train_split_problem(every) or f"{cfg.dataset}: {cfg.root} has no images")
    tasks = _select_tasks(full, cfg.tasks)
    idx = fraction_subset(full, cfg.train_fraction, seed=cfg.train.seed)
    train_ds = full.subset(idx) if len(idx) < len(full) else full
    tasks = _annotated_box_tasks(train_ds, tasks, requested=bool(cfg.tasks))
    _check_labels(train_ds, tasks, cfg.allow_empty_classes)

    kwargs = backbone_kwargs(cfg.arch, img_size=cfg.img_size, drop_path=cfg.drop_path)
    backbone = create_model(cfg.arch, pretrained=cfg.pretrained, num_classes=0, **kwargs)
    if cfg.grad_checkpointing:
        backbone.set_grad_checkpointing(True)
    # the backbone's record (release tag, export sidecar or timm cfg) at the fine-tuning size
    preprocess = resolve_preprocess(backbone, img_size=cfg.img_size)
    model = XrayModel(backbone, tasks, preprocess=preprocess, dropout=cfg.dropout, decoder=cfg.decoder)
    params = apply_mode(model, cfg.mode, cfg.lora)
    log.info("%s: %d of %d parameters train (%.2f%%)", cfg.mode, params["trainable"], params["total"],
             params["trainable_percent"])  # fmt: skip

    pos_weight = {}
    if cfg.pos_weight == "auto":
        labels = torch.from_numpy(np.stack([r.labels for r in train_ds.records if r.labels is not None]))
        pos_weight = {t.name: positive_weights(labels) for t in tasks if t.kind == "multilabel"}
    objective = FinetuneObjective(model, pos_weight=pos_weight, focal_gamma=cfg.focal_gamma)
    tc = cfg.train
    if tc.steps <= 0:
        tc.steps = max(1, math.ceil(cfg.epochs * len(train_ds) / (tc.batch_size * tc.accumulate)))
    groups = finetune_param_groups(model, lr=tc.lr, weight_decay=tc.weight_decay, layer_decay=cfg.layer_decay)
    result = train(objective, train_ds, tc, batch_to_input=lambda b: b, collate_fn=collate_samples,
                   param_groups=groups)  # fmt: skip

    summary = {"config": _jsonable(asdict(cfg)), "parameters": params, "train_images": len(train_ds),
               "final_loss": result["loss"], "evaluations": {}}  # fmt: skip
    if not is_global_zero():  # with several processes rank 0 alone saves and evaluates
        return summary
    merge_lora(model)
    model_kwargs = {k: v for k, v in kwargs.items() if k != "drop_path_rate"}
    info = {
        "provenance": {
            "method": "finetune", "mode": cfg.mode, "dataset": cfg.dataset, "root": str(cfg.root),
            "dataset_options": cfg.dataset_options, "pretrained": cfg.pretrained,
            "train_fraction": cfg.train_fraction, "train_images": len(train_ds), "seed": tc.seed,
            "steps": tc.steps, "parameters": params,
        },
    }  # fmt: skip
    save_task_model(model.cpu(), out / "model", arch=cfg.arch, model_kwargs=model_kwargs, info=info)

    evaluations: dict[str, Any] = {}
    for split in cfg.eval_splits:
        try:
            ds = build_dataset(
                cfg.dataset, cfg.root, split, transform=preprocess.eval_transform(), **cfg.dataset_options
            )
        except XrayfmError as exc:
            log.warning("not evaluating split %s: %s", split, exc)
            continue
        if len(ds) == 0:
            log.warning("not evaluating split %s: it has no images", split)
            continue
        evaluations[split] = evaluate_dataset(
            model,
            ds,
            out / f"eval_{split}",
            n_boot=cfg.n_boot,
            seed=tc.seed,
            threshold=cfg.threshold,
            model_name=f"{cfg.arch} ({cfg.mode}, from {cfg.pretrained or 'random init'}) in {out / 'model'}",
        )
    summary["evaluations"] = evaluations
    atomic_write_json(out / "summary.json", summary)
    return summary


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


#: TrainConfig fields named otherwise on the command line (``min_lr``, ``betas`` and ``extra`` have no option).
def write_finetune_config(cfg: FinetuneConfig, path: str | Path) -> Path:
    """Write ``cfg`` in ``xrayfm finetune``'s option names (atomically), so that
    ``xrayfm finetune --config PATH DATASET ROOT`` runs the same settings.

    Settings that are None are left out (each such option defaults to None); adapter options
    become ``-o key=value`` strings with Python-literal values.

    Args:
        cfg: The run's settings.
        path: The file to write (``OUT/config.yaml``).

    Returns:
        The path written.
    """
    settings = {
        "dataset": cfg.dataset, "root": cfg.root, "option": cfg.dataset_options, "task": list(cfg.tasks or []),
        "arch": cfg.arch, "pretrained": cfg.pretrained, "img_size": cfg.img_size, "mode": cfg.mode,
        "lora_rank": cfg.lora.rank, "lora_alpha": cfg.lora.alpha, "lora_dropout": cfg.lora.dropout,
        "lora_targets": cfg.lora.target_modules, "layer_decay": 1.0 if cfg.layer_decay is None else cfg.layer_decay,
        "drop_path": cfg.drop_path, "dropout": cfg.dropout, "decoder": cfg.decoder,
        "train_fraction": cfg.train_fraction, "allow_empty_classes": cfg.allow_empty_classes,
        "pos_weight": cfg.pos_weight, "focal_gamma": cfg.focal_gamma, "flip": cfg.flip,
        "grad_checkpointing": cfg.grad_checkpointing, "epochs": cfg.epochs, "eval_split": list(cfg.eval_splits),
        "n_boot": cfg.n_boot, "threshold": cfg.threshold, **engine_options(cfg.train),
    }  # fmt: skip
    return write_run_config(path, settings)
