"""One EVA-X MIM pretraining run from a dataset: what ``xrayfm pretrain mim`` calls.

Builds the dataset with the pretraining view (:class:`~xrayfm.data.transforms.PretrainAugment`),
the student (after seeding every RNG with the run's seed, so that two runs with one seed give
identical weights) and the frozen teacher (:func:`~xrayfm.pretrain.teachers.load_teacher`: MGCA,
EVA-CLIP, timm / EVA-X files or an earlier run, each fed in its own input convention), trains with
the shared engine, then exports the student backbone for downstream use: ``create_model(arch,
pretrained=out_dir)``. The student's final norm is exported as ``fc_norm`` (mean-pooled fine-tuning,
as EVA-X does). Without a teacher the target is normalised pixels: the Medical-MAE-style baseline,
not EVA-X, which the log, the export sidecar and ``OUT/summary.json`` say.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from xrayfm.data.sample import collate_samples
from xrayfm.data.transforms import PretrainAugment
from xrayfm.errors import XrayfmError
from xrayfm.io.atomic import atomic_write_json
from xrayfm.models import create_model
from xrayfm.models.export import export_backbone
from xrayfm.models.preprocess import resolve_preprocess
from xrayfm.models.registry import export_kwargs
from xrayfm.pretrain.mim import MaskedFeatureModeling
from xrayfm.pretrain.teachers import Layout, load_teacher
from xrayfm.train import TrainConfig, is_global_zero, seed_everything, train
from xrayfm.train.config import engine_options, write_run_config
from xrayfm.train.streaming import open_dataset, sample_total

log = logging.getLogger(__name__)

#: What a run without a teacher is, in its log, export sidecar and summary.
PIXEL_BASELINE = "pixel-target baseline (Medical-MAE style), not EVA-X"
EVA_X_MIM = "EVA-X masked feature modeling (frozen teacher)"


def _images(batch: dict[str, Any]) -> Any:
    """The image tensor of a collated Sample batch (the engine stays objective-agnostic)."""
    return batch["image"]


def run_mim(
    dataset: str,
    root: str | Path,
    *,
    arch: str = "eva_x_tiny_patch16",
    teacher: str | None = None,
    teacher_arch: str | None = None,
    teacher_layout: Layout = "auto",
    teacher_img_size: int | None = None,
    img_size: int = 224,
    mask_ratio: float = 0.3,
    dataset_options: dict[str, Any] | None = None,
    train_config: TrainConfig | None = None,
    mean: float | None = None,
    std: float | None = None,
    grad_checkpointing: bool = False,
) -> Path:
    """Pretrain ``arch`` by MIM on ``dataset`` and export it; returns the export folder.

    Args:
        dataset: Adapter name (``phantom``, ``nih_cxr14``, ``csv``...); labels are ignored. ``shards``
            streams the train split of a shard folder (``xrayfm shards build``), shuffled, sharded over
            ranks and workers, resumable mid-epoch (:mod:`xrayfm.train.streaming`).
        root: Dataset root (for ``shards``: the shard folder, local or an fsspec URL).
        arch: Student architecture.
        teacher: Teacher weights: an xrayfm export folder, an MGCA Lightning checkpoint, an
            EVA-CLIP checkpoint or a timm / EVA-X file; None = the pixel-target baseline (not EVA-X).
        teacher_arch: Teacher architecture (default: from the export sidecar, inferred from MGCA /
            EVA-CLIP weights, else ``arch``).
        teacher_layout: The teacher file's layout (``auto`` detects it; see
            :func:`~xrayfm.pretrain.teachers.load_teacher`).
        teacher_img_size: The teacher's input side (default: the one it was trained at); the
            student's view is resized to it and re-normalised with the teacher's mean / std.
        img_size: Input side (multiple of 16).
        mask_ratio: Share of masked patch tokens (EVA-X: 0.3).
        dataset_options: Adapter options.
        train_config: Engine settings (``out_dir`` is the run folder).
        mean: Normalisation mean of the grey [0, 1] image (default: the student's record: EVA-X's
            0.49185 for EVA-X; compute your data's with ``xrayfm stats``); recorded in the export.
        std: Normalisation std (default: the student's record: EVA-X's 0.28509).
        grad_checkpointing: Recompute student block activations in the backward pass (less
            memory, about a third more compute).

    Returns:
        The export folder (``OUT/export``). ``OUT/config.yaml`` records the settings in ``xrayfm
        pretrain mim``'s option names, so ``xrayfm pretrain mim --config OUT/config.yaml DATASET
        ROOT`` runs them again. ``OUT/summary.json`` and the export sidecar's ``provenance`` record
        the method, the target, the teacher (file, layout, architecture, normalisation), the
        optimiser steps the weights have had (the engine's, epochs resolved), the steps and wall
        seconds of this call's training loop, and whether it resumed an earlier call's checkpoint.

    Raises:
        XrayfmError: A non-positive ``std``, or a dataset, model or teacher that cannot be built.
    """
    cfg = train_config or TrainConfig()
    seed_everything(cfg.seed)  # before the student is built: its initial weights follow from the seed
    write_run_config(Path(cfg.out_dir) / "config.yaml", {
        "dataset": dataset, "root": root, "arch": arch, "teacher": teacher, "teacher_arch": teacher_arch,
        "teacher_layout": teacher_layout, "teacher_img_size": teacher_img_size, "img_size": img_size,
        "mask_ratio": mask_ratio, "mean": mean, "std": std, "option": dataset_options,
        "grad_checkpointing": grad_checkpointing, **engine_options(cfg),
    })  # fmt: skip
    student = create_model(arch, num_classes=0, global_pool="token", img_size=img_size)
    record = resolve_preprocess(student)
    if std is not None and std <= 0:
        raise XrayfmError(f"normalisation std must be positive, got {std}")
    record = replace(record, mean=record.mean if mean is None else float(mean), std=record.std if std is None else std)
    view = PretrainAugment(img_size, mean=record.mean, std=record.std)
    ds = open_dataset(dataset, root, "train", seed=cfg.seed, transform=view, options=dataset_options)
    images = sample_total(ds)
    if grad_checkpointing:
        student.set_grad_checkpointing(True)
    if teacher is None:
        log.warning("no teacher: this run is the %s; pass a teacher (e.g. MGCA ViT-B/16) for EVA-X", PIXEL_BASELINE)
        objective = MaskedFeatureModeling(student, target="pixel", mask_ratio=mask_ratio)
        teacher_record = None
    else:
        loaded = load_teacher(
            teacher, arch=teacher_arch, layout=teacher_layout, img_size=teacher_img_size, default_arch=arch
        )
        objective = MaskedFeatureModeling(
            student, loaded.model, mask_ratio=mask_ratio, teacher_input=loaded.input_from(record.mean, record.std)
        )
        teacher_record = loaded.record()
    out = Path(cfg.out_dir)
    result = train(objective, ds, cfg, batch_to_input=_images, collate_fn=collate_samples)
    if not is_global_zero():  # with several processes rank 0 alone writes the export
        return out / "export"
    state = {
        k.replace("norm.", "fc_norm.", 1) if k.startswith("norm.") else k: v for k, v in student.state_dict().items()
    }
    export_model = create_model(arch, num_classes=0, img_size=img_size)
    export_model.load_state_dict(state)
    facts = {
        "method": EVA_X_MIM if teacher_record else PIXEL_BASELINE, "target": objective.target,
        "teacher": teacher_record, "dataset": dataset, "root": str(root), "images": images, "mask_ratio": mask_ratio,
        "steps": result["steps"], "steps_this_call": result["steps"] - result["start_step"],
        "seconds": result["seconds"], "resumed_from_checkpoint": result["start_step"] > 0,
    }  # fmt: skip
    export = export_backbone(
        export_model, out / "export", arch=arch, preprocess=record,
        info={"model_kwargs": {"img_size": img_size, **export_kwargs(export_model)}, "provenance": facts},
    )  # fmt: skip
    loss = result["loss"]
    atomic_write_json(out / "summary.json", {
        **facts, "final_loss": loss if math.isfinite(loss) else None, "export": str(export),
    })  # fmt: skip
    return export
