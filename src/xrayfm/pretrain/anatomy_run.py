"""One Adam pretraining run from a dataset: what ``xrayfm pretrain anatomy`` calls.

Stages of granularity n (0 -> 2 -> 4 by default) run one after the other on the shared engine,
each in its own folder ``OUT/stage_n{n}`` (``last.ckpt``, ``metrics.csv``, ``val_metrics.csv``,
``best.safetensors``, ``export/``, ``stage.json``). The learning-rate schedule restarts every stage,
as in the official ``run.sh``. A stage is finished once its ``stage.json`` exists; running the same
call again skips finished stages and resumes an interrupted one from its ``last.ckpt`` (the queue,
the key encoder, the optimiser and the best validation so far included), so a killed run continues
exactly where it stopped.

The training set's transform is the stage's :class:`~xrayfm.pretrain.anatomy.AnatomyDecomposer`
(two views of one random cell, cut from the image at its own resolution). Every ``validate_every``
steps (default: at each checkpoint) and at the stage's last step, the engine computes a validation
loss on the ``val`` split (or a patient-level share carved from the training split when an adapter
has none; shards need one) with views fixed by each image's index and no side effects
(:meth:`~xrayfm.pretrain.moco.MoCo.evaluate_loss`), averaged over every process's share. The
objective at the lowest validation loss (encoders, heads and queue) is the stage's
``best.safetensors``: its query backbone is the stage's export (``create_model(arch,
pretrained=OUT/stage_n4)``), and the next stage starts from it, queue included when
``carry_queue`` (the official code carries it, Eden ``Adam-v1/main.py:139-146``). The official
``run.sh`` starts each stage from the previous stage's *last* epoch (``checkpoint.pth``) while its
README fine-tunes from the *best*: a defect, since a stage that overfits late hands its worse
weights on. Without a validation set the last step's weights stand in for the best. Best step and
losses go to ``stage.json`` and ``OUT/summary.json``; the last stage's best is also exported to
``OUT/export`` (``create_model(arch, pretrained=OUT)``).

Under DDP the queue is not broadcast from rank 0 before every forward pass (32 MB a step at K =
65536): every rank fills it with the same gathered keys, so the copies stay identical (see
:attr:`~xrayfm.train.TrainConfig.broadcast_buffers` for what this means for BatchNorm statistics).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric import Fabric
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset

from xrayfm.data.base import XrayDataset
from xrayfm.data.sample import Sample, collate_samples
from xrayfm.data.splits import holdout_fractions, split_groups
from xrayfm.errors import MissingSplitError, XrayfmError
from xrayfm.io.atomic import atomic_path, atomic_write_json
from xrayfm.models import create_model
from xrayfm.models.export import export_backbone
from xrayfm.models.preprocess import Preprocess, resolve_preprocess
from xrayfm.models.registry import backbone_kwargs, export_kwargs
from xrayfm.pretrain.anatomy import AnatomyDecomposer, Grid
from xrayfm.pretrain.moco import MoCo
from xrayfm.train import TrainConfig, seed_everything, train
from xrayfm.train.config import engine_options, write_run_config
from xrayfm.train.distributed import make_fabric
from xrayfm.train.engine import BEST
from xrayfm.train.streaming import SHARDS, SeededShards, open_dataset, sample_total

log = logging.getLogger(__name__)

METHOD = "Adam: anatomy-aware MoCo-v2 (anatomy decomposer + purposive pruner)"
#: Files of a finished stage: the selected objective (encoders, heads, queue) and its facts (written last).
STAGE_WEIGHTS, STAGE_DONE = BEST, "stage.json"


class FixedPairs(Dataset):
    """``dataset``'s images as view pairs fixed by index: the same views in every run and on every rank.

    Args:
        dataset: Samples with a grey ``image`` (no transform).
        decomposer: Makes the views.
        seed: Base of the per-image seeds (image ``i`` uses ``seed * 1_000_003 + i``).
    """

    def __init__(self, dataset: Dataset, decomposer: AnatomyDecomposer, seed: int) -> None:
        self.dataset, self.decomposer, self.seed = dataset, decomposer, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Sample:
        sample = self.dataset[index]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        return {"image": torch.stack(self.decomposer.pair(sample["image"][:1], g)), "meta": sample.get("meta", {})}


def stage_dir(out: str | Path, granularity: int) -> Path:
    """The folder of the stage of ``granularity`` in run folder ``out``."""
    return Path(out) / f"stage_n{granularity}"


def _views(batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Query and key views of a collated batch of pairs (B, 2, C, S, S)."""
    return batch["image"][:, 0], batch["image"][:, 1]


def _check_stages(stages: Sequence[int]) -> tuple[int, ...]:
    stages = tuple(int(n) for n in stages)
    if not stages or any(n < 0 for n in stages) or len(set(stages)) != len(stages):
        raise XrayfmError(f"stages must be distinct granularities >= 0 such as 0,2,4, got {list(stages)}")
    return stages


class StageView:
    """The training transform: the running stage's decomposer, swapped between stages (adapters and shards alike).

    Args:
        decomposer: The first stage's decomposer.
    """

    def __init__(self, decomposer: AnatomyDecomposer) -> None:
        self.decomposer = decomposer

    def __call__(self, sample: Sample) -> Sample:
        return self.decomposer(sample)


def _datasets(
    dataset: str, root: str | Path, options: dict[str, Any], val_fraction: float, *, seed: int, view: StageView
) -> tuple[XrayDataset | SeededShards, Dataset | None]:
    """Training set (with ``view``) and validation set (untransformed).

    The validation set is the ``val`` split; an adapter without one gives a patient-level share of
    train instead; shards without one are refused (a stream cannot be carved by patient).
    """
    train_ds = open_dataset(dataset, root, "train", seed=seed, transform=view, options=options)
    if val_fraction <= 0:
        return train_ds, None
    if dataset == SHARDS:
        try:
            return train_ds, open_dataset(dataset, root, "val", options=options, stream=False)
        except MissingSplitError:
            raise XrayfmError(
                f"{root}: these shards have no val split for the validation loss; build them from sources that have "
                "one (xrayfm shards build keeps each source's val split unless --splits leaves it out) or pass "
                "--val-fraction 0 (no validation: each stage hands on its last weights)"
            ) from None
    val = open_dataset(dataset, root, "val", options=options)
    if len(val):
        return train_ds, val
    groups = [str(r.meta.get("patient_id", r.meta.get("id", r.image.stem))) for r in train_ds.records]
    parts = split_groups(groups, seed=0, fractions=holdout_fractions(val_fraction))
    keep = [i for i, p in enumerate(parts) if p == "train"]
    held = [i for i, p in enumerate(parts) if p == "val"]
    log.info("%s has no val split: %d of %d training images (by patient) validate instead", dataset, len(held),
             len(parts))  # fmt: skip
    if not held:
        return train_ds.subset(keep), None
    val = train_ds.subset(held, split="val")
    val.transform = None  # FixedPairs makes the views
    return train_ds.subset(keep), val


def validation_loss(moco: MoCo, pairs: Dataset, fabric: Fabric, *, batch_size: int, workers: int = 0) -> float:
    """Mean loss over fixed view ``pairs`` (:class:`FixedPairs`), over all processes, without side effects.

    Args:
        moco: The objective (its weights, buffers and queue are left as they are).
        pairs: Validation view pairs.
        fabric: The run's Fabric: each process takes every ``world``-th pair, sums are all-reduced.
        batch_size: Pairs per forward pass.
        workers: DataLoader workers.

    Returns:
        The mean per-pair loss.
    """
    mine = list(range(fabric.global_rank, len(pairs), fabric.world_size))
    batches = [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
    loader = DataLoader(pairs, batch_sampler=batches, num_workers=workers, collate_fn=collate_samples)
    total = torch.zeros(2, dtype=torch.float64, device=fabric.device)
    with fabric.autocast():
        for batch in loader:
            query, key = _views(batch)
            losses = moco.evaluate_loss((query.to(fabric.device), key.to(fabric.device)), reduction="none")
            total += torch.stack([losses.double().sum(), torch.tensor(float(len(losses)), device=fabric.device)])
    total = fabric.all_reduce(total, reduce_op="sum")
    return float(total[0] / total[1])


def _validation_values(
    moco: MoCo, *, pairs: Dataset, fabric: Fabric, batch_size: int, workers: int
) -> dict[str, float]:
    """The engine's ``validate`` of a stage: ``{"loss": validation_loss(...)}``."""
    return {"loss": validation_loss(moco, pairs, fabric, batch_size=batch_size, workers=workers)}


def _stage_seed(seed: int, granularity: int) -> int:
    """Seed of a stage's fresh queue: the same on every rank, and whether or not earlier stages ran in this call."""
    return int(np.random.SeedSequence([seed, granularity]).generate_state(1)[0])


def run_anatomy(
    dataset: str,
    root: str | Path,
    *,
    stages: Sequence[int] = (0, 2, 4),
    arch: str = "resnet50",
    img_size: int = 224,
    grid: Grid = "nxn",
    moco_dim: int = 128,
    queue_size: int = 65536,
    momentum_key: float = 0.999,
    temperature: float = 0.2,
    prune_threshold: float = 0.8,
    carry_queue: bool = False,
    split_bn: int = 0,
    brightness: float = 0.0,
    contrast: float = 0.0,
    jitter_p: float = 0.8,
    mean: float | None = None,
    std: float | None = None,
    val_fraction: float = 0.1,
    grad_checkpointing: bool = False,
    dataset_options: dict[str, Any] | None = None,
    train_config: TrainConfig | None = None,
) -> Path:
    """Pretrain ``arch`` with Adam on ``dataset``, stage by stage, and export it; returns ``OUT/export``.

    Args:
        dataset: Adapter name (``phantom``, ``nih_cxr14``, ``csv``...); labels are ignored. ``shards``
            streams the train split of a shard folder (``xrayfm shards build``), shuffled, sharded over
            ranks and workers, resumable mid-epoch (:mod:`xrayfm.train.streaming`), and validates on
            its ``val`` split.
        root: Dataset root (for ``shards``: the shard folder, local or an fsspec URL).
        stages: Granularities in training order (each its own engine run).
        arch: Backbone (any registry / timm name); ``create_model(arch, num_classes=0)`` must pool features.
        img_size: Side of each view.
        grid: ``nxn`` (official code) or ``pow2`` (paper figure), see :func:`~xrayfm.pretrain.anatomy.grid_shape`.
        moco_dim: Projection head output width.
        queue_size: Queued negatives K.
        momentum_key: Key encoder momentum m.
        temperature: InfoNCE temperature.
        prune_threshold: Purposive pruner threshold for stages n > 0 (n = 0 prunes nothing).
        carry_queue: Start each stage after the first with the previous stage's queue (else a fresh one).
        split_bn: Samples per BatchNorm group with the key batch shuffled between groups (0: the
            per-process batch; under DDP the key batch is always shuffled across processes).
        brightness: Brightness jitter ``1 +- brightness`` (0: off).
        contrast: Contrast jitter ``1 +- contrast`` (0: off).
        jitter_p: Probability of the jitter when on.
        mean: Normalisation mean of the grey image (default: the backbone's record, ImageNet's for ResNet-50).
        std: Normalisation std (default: the backbone's record).
        val_fraction: Share held out for validation when the dataset has no ``val`` split (0: no validation;
            shards validate on their ``val`` split whatever the share, and without one need 0).
        grad_checkpointing: Recompute backbone activations in the backward pass (timm backbones).
        dataset_options: Adapter options.
        train_config: Engine settings, the same for every stage (``out_dir`` is the run folder,
            ``validate_every`` the steps between validations); ``broadcast_buffers`` is set False.

    Returns:
        The export folder of the last stage's best query backbone, ``OUT/export``.

    Raises:
        XrayfmError: Bad stages or settings, ``--strategy fsdp`` (the key encoder's momentum update
            needs whole parameters), shards without a ``val`` split and ``val_fraction > 0``, or a
            dataset or model that cannot be built.
    """
    cfg = replace(train_config or TrainConfig(), broadcast_buffers=False, select_metric="loss", select_mode="min")
    stages = _check_stages(stages)
    if cfg.strategy == "fsdp":
        raise XrayfmError("anatomy pretraining runs on one device or under --strategy ddp, not fsdp")
    out = Path(cfg.out_dir)
    settings = {
        "dataset": dataset, "root": root, "stages": list(stages), "arch": arch, "img_size": img_size, "grid": grid,
        "moco_dim": moco_dim, "queue_size": queue_size, "momentum_key": momentum_key, "temperature": temperature,
        "prune_threshold": prune_threshold, "carry_queue": carry_queue, "split_bn": split_bn,
        "brightness": brightness, "contrast": contrast, "jitter_p": jitter_p, "mean": mean, "std": std,
        "val_fraction": val_fraction, "validate_every": cfg.validate_every, "grad_checkpointing": grad_checkpointing,
        "option": dataset_options,
    }  # fmt: skip
    write_run_config(out / "config.yaml", {**settings, **engine_options(cfg)})
    fabric = make_fabric(cfg)
    seed_everything(cfg.seed)  # torch, numpy and python, before the model and its queue are built
    backbone = create_model(arch, num_classes=0, **backbone_kwargs(arch, img_size=img_size))
    if grad_checkpointing:
        backbone.set_grad_checkpointing(True)
    record = resolve_preprocess(backbone, img_size=img_size)
    record = replace(record, mean=record.mean if mean is None else mean, std=record.std if std is None else std,
                     crop_pct=1.0)  # fmt: skip
    decomposer = AnatomyDecomposer(
        img_size, grid=grid, brightness=brightness, contrast=contrast, jitter_p=jitter_p, mean=record.mean,
        std=record.std, channels=record.channels,
    )  # fmt: skip
    moco = MoCo(backbone, dim=moco_dim, queue_size=queue_size, momentum=momentum_key, temperature=temperature,
                bn_group=split_bn)  # fmt: skip
    view = StageView(decomposer)
    train_ds, val_ds = _datasets(dataset, root, dataset_options or {}, val_fraction, seed=cfg.seed, view=view)
    groups = [{"params": [p for p in moco.parameters() if p.requires_grad], "weight_decay": cfg.weight_decay}]
    model_kwargs = {**backbone_kwargs(arch, img_size=img_size), **export_kwargs(backbone)}
    facts: list[dict[str, Any]] = []
    for i, n in enumerate(stages):
        folder = stage_dir(out, n)
        view.decomposer = replace(decomposer, granularity=n)
        moco.prune_threshold = prune_threshold if n > 0 else None
        if fabric.broadcast((folder / STAGE_DONE).is_file()):
            facts.append(json.loads((folder / STAGE_DONE).read_text()))
            log.info("stage n=%d finished earlier; skipped", n)
            continue
        if i > 0:  # the previous stage's best state; the stage's own last.ckpt, if any, then replaces it
            _load_objective(moco, stage_dir(out, stages[i - 1]) / STAGE_WEIGHTS, fabric.device)
            if not carry_queue:
                torch.manual_seed(_stage_seed(cfg.seed, n))
                moco.reset_queue()
        validate = None
        if val_ds is not None:
            pairs = FixedPairs(val_ds, view.decomposer, cfg.seed)
            validate = partial(_validation_values, pairs=pairs, fabric=fabric, batch_size=cfg.batch_size,
                               workers=cfg.num_workers)  # fmt: skip
        result = train(moco, train_ds, replace(cfg, out_dir=str(folder)), batch_to_input=_views,
                       collate_fn=collate_samples, fabric=fabric, param_groups=groups, validate=validate)  # fmt: skip
        selected = result.get("best_step") is not None
        if selected:  # the engine wrote the best state; the stage hands it on and exports it
            _load_objective(moco, folder / STAGE_WEIGHTS, fabric.device)
        last, best = result.get("last_validation") or {}, result.get("best") or {}
        stage = {
            "granularity": n, "grid": grid, "prune_threshold": moco.prune_threshold, "steps": result["steps"],
            "steps_this_call": result["steps"] - result["start_step"], "seconds": result["seconds"],
            "resumed_from_checkpoint": result["start_step"] > 0,
            "final_loss": result["loss"] if math.isfinite(result["loss"]) else None, "val_loss": last.get("loss"),
            "best_step": result.get("best_step"), "best_val_loss": best.get("loss"),
            "exported_step": result["best_step"] if selected else result["steps"], "export": str(folder / "export"),
        }  # fmt: skip
        if fabric.global_rank == 0:
            _save_stage(moco, folder, stage, arch=arch, record=record, model_kwargs=model_kwargs,
                        provenance={"method": METHOD, "dataset": dataset, "stages": list(stages[: i + 1])},
                        write_weights=not selected)  # fmt: skip
        fabric.barrier()
        facts.append(stage)
    if fabric.global_rank != 0:
        return out / "export"
    _load_objective(moco, stage_dir(out, stages[-1]) / STAGE_WEIGHTS, fabric.device)
    summary = {
        "method": METHOD, "dataset": dataset, "root": str(root), "images": sample_total(train_ds),
        "val_images": len(val_ds) if val_ds is not None else 0, "carry_queue": carry_queue,
        "stages": facts, "steps": sum(f["steps"] for f in facts), "seconds": round(sum(f["seconds"] for f in facts), 1),
    }  # fmt: skip
    export = export_backbone(moco.encoder_q, out / "export", arch=arch, preprocess=record,
                             info={"model_kwargs": model_kwargs, "provenance": summary})  # fmt: skip
    atomic_write_json(out / "summary.json", {**summary, "export": str(export)})
    return export


def _load_objective(moco: MoCo, path: Path, device: torch.device) -> None:
    """Load a stage's selected objective (encoders, heads, queue and its pointer)."""
    if not path.is_file():
        raise XrayfmError(f"{path} is missing: the stage before was not finished; remove its stage.json to rerun it")
    moco.load_state_dict(load_file(str(path), device=str(device)))


def _save_stage(
    moco: MoCo,
    folder: Path,
    stage: dict[str, Any],
    *,
    arch: str,
    record: Preprocess,
    model_kwargs: dict[str, Any],
    provenance: dict[str, Any],
    write_weights: bool,
) -> None:
    """Write a finished stage: the objective's weights (unless the engine wrote the best), the backbone
    export, then ``stage.json``."""
    if write_weights:
        tensors = {k: v.detach().contiguous().cpu() for k, v in moco.state_dict().items()}
        with atomic_path(folder / STAGE_WEIGHTS) as tmp:
            save_file(tensors, str(tmp))
    export_backbone(moco.encoder_q, folder / "export", arch=arch, preprocess=record,
                    info={"model_kwargs": model_kwargs, "provenance": {**provenance, **stage}})  # fmt: skip
    atomic_write_json(folder / STAGE_DONE, stage)
