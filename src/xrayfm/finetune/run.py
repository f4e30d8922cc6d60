"""One fine-tuning run: what ``xrayfm finetune`` calls.

dataset -> (label-fraction subset) -> training view -> backbone (+ pretrained weights) + heads
-> mode (full / linear / LoRA) -> LLRD optimiser on the shared engine -> merged model saved as
``OUT/model`` -> evaluation of the validation and test splits (metrics with bootstrap CIs).

Training views (``augment``): ``basic`` (xrayfm's crop / flip / rotation / gamma / noise),
``randaugment`` (EVA-X classification: timm random resized crop, flip, RandAugment), ``photometric``
(EVA-X segmentation: resize, flip, brightness / contrast) and ``none`` (the evaluation view of the
preprocessing record, as EVA-X's CheXpert fine-tuning trains). ``interpolation`` and ``crop_pct``
set the model's preprocessing record, so evaluation and every export use the same test view.

Dataset ``shards`` (root: an ``xrayfm shards build`` folder) streams the train split and reads val / test by
index; the options a stream cannot honour are refused (see :mod:`xrayfm.finetune.shard_checks`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xrayfm.data.base import XrayDataset
from xrayfm.data.inspect import train_split_problem
from xrayfm.data.registry import build_dataset
from xrayfm.data.sample import collate_samples
from xrayfm.data.transforms import FinetuneAugment, PhotometricView, RandAugmentView
from xrayfm.errors import DatasetError, MissingSplitError, XrayfmError
from xrayfm.finetune.label_efficiency import fraction_subset
from xrayfm.finetune.losses import positive_weights
from xrayfm.finetune.modes import LoraSettings, apply_mode, merge_lora
from xrayfm.finetune.objective import FinetuneObjective
from xrayfm.finetune.optim import finetune_param_groups
from xrayfm.finetune.shard_checks import check_shard_settings, streamed_tasks
from xrayfm.io.atomic import atomic_write_json
from xrayfm.models.preprocess import Preprocess, resolve_preprocess
from xrayfm.models.registry import backbone_kwargs, create_model, export_kwargs
from xrayfm.models.task_checkpoint import save_task_model
from xrayfm.models.task_model import XrayModel
from xrayfm.tasks import CLASSIFICATION_KINDS, TASK_KINDS
from xrayfm.train import TrainConfig, is_global_zero, seed_everything, train
from xrayfm.train.config import engine_options, write_run_config
from xrayfm.train.streaming import SHARDS, open_dataset, sample_total

log = logging.getLogger(__name__)

#: Training views of ``FinetuneConfig.augment`` (see the module docstring).
AUGMENTS = ("basic", "randaugment", "photometric", "none")


@dataclass
class FinetuneConfig:
    """What to adapt, to which data, how.

    Attributes:
        dataset: Adapter name, or ``shards`` (streamed training; see :mod:`xrayfm.finetune.shard_checks`).
        root: Dataset root, or the shard folder.
        dataset_options: Adapter options (``policy``, ``views``...), or those of shards (``cache_dir``).
        tasks: Task names to train (default: every task with annotations in the training split; of shards,
            every task but box tasks).
        arch: Backbone architecture.
        pretrained: Backbone weights (file, export folder, pretraining run) or None (random).
        img_size: Input side.
        mode: ``full``, ``linear`` or ``lora``.
        lora: LoRA settings (mode ``lora``).
        layer_decay: Layer-wise lr decay (EVA-X: 0.55 classification, 0.85 segmentation);
            None = off.
        drop_path: Stochastic depth rate of the backbone.
        dropout: Dropout before classification layers.
        head_init_scale: Factor on the new classification heads' initial weights (EVA-X: 0.001).
        decoder: Segmentation decoder (``upernet`` / ``unet``; default by backbone).
        decoder_dropout: Dropout before the segmentation classifier (EVA-X: 0.1).
        features: Layers a plain ViT gives dense heads: ``last`` block (EVA-X) or a four-block
            ``pyramid`` (xrayfm's own option).
        seg_loss: Segmentation loss: ``bce_dice`` (xrayfm) or ``bce`` (EVA-X).
        train_fraction: Share of training patients used (label efficiency).
        allow_empty_classes: Train even when a class has no positive training sample.
        pos_weight: ``auto`` (negatives / positives per class) or None.
        focal_gamma: Focal loss gamma for classification (0 = BCE / CE).
        flip: Horizontal-flip probability of the training view.
        augment: Training view: ``basic``, ``randaugment``, ``photometric`` or ``none``.
        rand_augment: timm RandAugment string of the ``randaugment`` view.
        crop_scale: Random-resized-crop area range (None: the view's default, ``basic`` (0.5, 1),
            ``randaugment`` (0.08, 1)).
        interpolation: ``bilinear`` / ``bicubic`` of the training view and the preprocessing
            record (None: the backbone's record).
        crop_pct: Centre-crop share of the test view (EVA-X 0.875: Resize 256, CenterCrop 224;
            None: the backbone's record).
        grad_checkpointing: Recompute backbone activations in the backward pass (less memory).
        eval_splits: Splits evaluated after training.
        n_boot: Bootstrap resamples for confidence intervals.
        threshold: Decision thresholds for sensitivity / specificity: ``youden`` or
            ``sens:TARGET`` (chosen per class on the val split, also when val is not evaluated)
            or a fixed number.
        train: Engine settings (``out_dir``, lr, schedule, duration in steps or ``epochs``,
            batch size, precision...); epochs count passes over the (subset) training set.
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
    head_init_scale: float = 1.0
    decoder: str | None = None
    decoder_dropout: float = 0.0
    features: str = "last"
    seg_loss: str = "bce_dice"
    train_fraction: float = 1.0
    allow_empty_classes: bool = False
    pos_weight: str | None = None
    focal_gamma: float = 0.0
    flip: float = 0.5
    augment: str = "basic"
    rand_augment: str = "rand-m6-mstd0.5-inc1"
    crop_scale: tuple[float, float] | None = None
    interpolation: str | None = None
    crop_pct: float | None = None
    grad_checkpointing: bool = False
    eval_splits: tuple[str, ...] = ("val", "test")
    n_boot: int = 1000
    threshold: float | str = "youden"
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-3, warmup_steps=50, clip_grad=0.0))


def training_view(cfg: FinetuneConfig, preprocess: Preprocess) -> Any:
    """The Sample transform of the training split that ``cfg.augment`` names.

    Args:
        cfg: The run's settings (``augment``, ``flip``, ``crop_scale``, ``rand_augment``).
        preprocess: The model's record (input side, interpolation, mean, test view).

    Raises:
        XrayfmError: Unknown ``augment``.
    """
    size, interp = preprocess.input_size, preprocess.interpolation
    scale = {} if cfg.crop_scale is None else {"scale": tuple(cfg.crop_scale)}
    if cfg.augment == "basic":
        return FinetuneAugment(size, flip=cfg.flip, interpolation=interp, **scale)
    if cfg.augment == "randaugment":
        return RandAugmentView(
            size, rand_augment=cfg.rand_augment, flip=cfg.flip, interpolation=interp, fill=preprocess.mean, **scale
        )
    if cfg.augment == "photometric":
        return PhotometricView(size, flip=cfg.flip, interpolation=interp)
    if cfg.augment == "none":
        return preprocess.eval_transform()
    raise XrayfmError(f"unknown augment {cfg.augment!r}; expected one of {AUGMENTS}")


def model_preprocess(cfg: FinetuneConfig, backbone: Any) -> Preprocess:
    """The backbone's preprocessing record at the fine-tuning size, with ``cfg``'s interpolation
    and centre-crop share where given: the test view saved with the model."""
    record = resolve_preprocess(backbone, img_size=cfg.img_size)
    changes = {k: v for k, v in (("interpolation", cfg.interpolation), ("crop_pct", cfg.crop_pct)) if v is not None}
    return replace(record, **changes) if changes else record


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
    evaluated split. Every RNG is seeded with ``cfg.train.seed`` first, so that two runs with one
    seed give identical weights and metrics.
    """
    from xrayfm.evaluate.run import evaluate_splits
    from xrayfm.evaluate.thresholds import ThresholdRule

    rule = ThresholdRule.parse(cfg.threshold)  # a malformed rule fails before training, not after
    seed_everything(cfg.train.seed)  # before any model, head or subset: a seed gives identical runs

    out = Path(cfg.train.out_dir)
    write_finetune_config(cfg, out / "config.yaml")
    if cfg.augment not in AUGMENTS:  # before any data is read
        raise XrayfmError(f"unknown augment {cfg.augment!r}; expected one of {AUGMENTS}")
    streamed = cfg.dataset == SHARDS  # a stream of shards: nothing scans the train split before training
    if streamed:
        check_shard_settings(cfg)
    kwargs = backbone_kwargs(cfg.arch, img_size=cfg.img_size, drop_path=cfg.drop_path)
    backbone = create_model(cfg.arch, pretrained=cfg.pretrained, num_classes=0, **kwargs)
    # the backbone's record (release tag, export sidecar or timm cfg) at the fine-tuning size
    preprocess = model_preprocess(cfg, backbone)
    full = open_dataset(cfg.dataset, cfg.root, "train", seed=cfg.train.seed,
                        transform=training_view(cfg, preprocess), options=cfg.dataset_options)  # fmt: skip
    if not streamed and not len(full):  # say which splits the images are in, not that no sample has labels
        every = build_dataset(cfg.dataset, cfg.root, "all", **cfg.dataset_options)
        raise DatasetError(train_split_problem(every) or f"{cfg.dataset}: {cfg.root} has no images")
    tasks = _select_tasks(full, cfg.tasks)
    if streamed:
        train_ds, tasks = full, streamed_tasks(tasks, requested=bool(cfg.tasks))
    else:
        idx = fraction_subset(full, cfg.train_fraction, seed=cfg.train.seed)
        train_ds = full.subset(idx) if len(idx) < len(full) else full
        tasks = _annotated_box_tasks(train_ds, tasks, requested=bool(cfg.tasks))
    dense = [t.name for t in tasks if t.kind not in CLASSIFICATION_KINDS]
    if cfg.augment == "randaugment" and dense:
        raise XrayfmError(
            f"augment randaugment moves only the image, so it cannot train {dense}; choose --augment basic, "
            "photometric or none, or train classification tasks only (--task)"
        )
    if not streamed:
        _check_labels(train_ds, tasks, cfg.allow_empty_classes)
    # the evaluated splits are built before training, so a missing test image stops the run before, not after it
    datasets = {split: ds for split in cfg.eval_splits if (ds := _eval_dataset(cfg, split, preprocess)) is not None}
    needs_val = rule.kind != "fixed" and "val" not in datasets
    val = _eval_dataset(cfg, "val", preprocess, quiet=True) if needs_val else None

    if cfg.grad_checkpointing:
        backbone.set_grad_checkpointing(True)
    model = XrayModel(
        backbone, tasks, preprocess=preprocess, dropout=cfg.dropout, decoder=cfg.decoder, features=cfg.features,
        head_init_scale=cfg.head_init_scale, decoder_dropout=cfg.decoder_dropout,
    )  # fmt: skip
    params = apply_mode(model, cfg.mode, cfg.lora)
    log.info("%s: %d of %d parameters train (%.2f%%)", cfg.mode, params["trainable"], params["total"],
             params["trainable_percent"])  # fmt: skip

    pos_weight = {}
    if cfg.pos_weight == "auto":
        labels = torch.from_numpy(np.stack([r.labels for r in train_ds.records if r.labels is not None]))
        pos_weight = {t.name: positive_weights(labels) for t in tasks if t.kind == "multilabel"}
    objective = FinetuneObjective(model, pos_weight=pos_weight, focal_gamma=cfg.focal_gamma, seg_loss=cfg.seg_loss)
    tc = cfg.train
    groups = finetune_param_groups(model, lr=tc.lr, weight_decay=tc.weight_decay, layer_decay=cfg.layer_decay)
    result = train(objective, train_ds, tc, batch_to_input=lambda b: b, collate_fn=collate_samples,
                   param_groups=groups)  # fmt: skip

    summary = {"config": _jsonable(asdict(cfg)), "parameters": params, "train_images": sample_total(train_ds),
               "steps": result["steps"], "warmup_steps": result["warmup_steps"], "final_loss": result["loss"],
               "evaluations": {}}  # fmt: skip
    if not is_global_zero():  # with several processes rank 0 alone saves and evaluates
        return summary
    merge_lora(model)
    model_kwargs = {**{k: v for k, v in kwargs.items() if k != "drop_path_rate"}, **export_kwargs(backbone)}
    info = {
        "provenance": {
            "method": "finetune", "mode": cfg.mode, "dataset": cfg.dataset, "root": str(cfg.root),
            "dataset_options": cfg.dataset_options, "pretrained": cfg.pretrained,
            "train_fraction": cfg.train_fraction, "train_images": sample_total(train_ds), "seed": tc.seed,
            "steps": result["steps"], "epochs": tc.epochs, "parameters": params,
        },
    }  # fmt: skip
    save_task_model(model.cpu(), out / "model", arch=cfg.arch, model_kwargs=model_kwargs, info=info)

    summary["evaluations"] = evaluate_splits(
        model, datasets, out, threshold=cfg.threshold, threshold_dataset=val, n_boot=cfg.n_boot, seed=tc.seed,
        model_name=f"{cfg.arch} ({cfg.mode}, from {cfg.pretrained or 'random init'}) in {out / 'model'}",
    )  # fmt: skip
    atomic_write_json(out / "summary.json", summary)
    return summary


def _eval_dataset(cfg: FinetuneConfig, split: str, preprocess: Preprocess, *, quiet: bool = False) -> Any:
    """The dataset of ``split`` at the model's input, or None (with a warning unless ``quiet``)
    when the adapter has no such split or it is empty.

    Every other problem (missing images unless ``missing=skip``, paths outside the root, corrupt
    label files) is raised: a split asked for is never left out silently.
    """
    try:
        ds = open_dataset(cfg.dataset, cfg.root, split, transform=preprocess.eval_transform(),
                          options=cfg.dataset_options, stream=False)  # fmt: skip
    except MissingSplitError as exc:
        if not quiet:
            log.warning("not evaluating split %s: %s", split, exc)
        return None
    if len(ds) == 0:
        if not quiet:
            log.warning("not evaluating split %s: it has no images", split)
        return None
    return ds


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


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
        "drop_path": cfg.drop_path, "dropout": cfg.dropout, "head_init_scale": cfg.head_init_scale,
        "decoder": cfg.decoder, "decoder_dropout": cfg.decoder_dropout, "features": cfg.features,
        "seg_loss": cfg.seg_loss, "train_fraction": cfg.train_fraction, "allow_empty_classes": cfg.allow_empty_classes,
        "pos_weight": cfg.pos_weight, "focal_gamma": cfg.focal_gamma, "flip": cfg.flip, "augment": cfg.augment,
        "rand_augment": cfg.rand_augment,
        "crop_scale": None if cfg.crop_scale is None else ",".join(f"{v:g}" for v in cfg.crop_scale),
        "interpolation": cfg.interpolation, "crop_pct": cfg.crop_pct,
        "grad_checkpointing": cfg.grad_checkpointing, "eval_split": list(cfg.eval_splits),
        "n_boot": cfg.n_boot, "threshold": cfg.threshold, **engine_options(cfg.train),
    }  # fmt: skip
    return write_run_config(path, settings)
