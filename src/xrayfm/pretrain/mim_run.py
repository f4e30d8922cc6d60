"""One EVA-X MIM pretraining run from a dataset: what ``xrayfm pretrain mim`` calls.

Builds the dataset with the pretraining view (:class:`~xrayfm.data.transforms.PretrainAugment`),
the student (and teacher, or the pixel target), trains with the shared engine, then exports the
student backbone for downstream use: ``create_model(arch, pretrained=out_dir)``. The student's
final norm is exported as ``fc_norm`` (mean-pooled fine-tuning, as EVA-X does).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from xrayfm.data.registry import build_dataset
from xrayfm.data.sample import collate_samples
from xrayfm.data.transforms import PretrainAugment
from xrayfm.errors import XrayfmError
from xrayfm.models import create_model
from xrayfm.models.export import export_backbone, read_export
from xrayfm.models.preprocess import resolve_preprocess
from xrayfm.pretrain.mim import MaskedFeatureModeling
from xrayfm.train import TrainConfig, is_global_zero, train
from xrayfm.train.config import engine_options, write_run_config


#: TrainConfig fields named otherwise on the command line (``min_lr``, ``betas`` and ``extra`` have no option).
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
        dataset: Adapter name (``phantom``, ``nih_cxr14``, ``csv``...); labels are ignored.
        root: Dataset root.
        arch: Student architecture.
        teacher: Teacher weights (file or xrayfm export folder); None = pixel target.
        teacher_arch: Teacher architecture (default: from the export sidecar, else ``arch``).
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
        ROOT`` runs them again.

    Raises:
        XrayfmError: A non-positive ``std``, or a dataset, model or teacher that cannot be built.
    """
    cfg = train_config or TrainConfig()
    write_run_config(Path(cfg.out_dir) / "config.yaml", {
        "dataset": dataset, "root": root, "arch": arch, "teacher": teacher, "teacher_arch": teacher_arch,
        "img_size": img_size, "mask_ratio": mask_ratio, "mean": mean, "std": std, "option": dataset_options,
        "grad_checkpointing": grad_checkpointing, **engine_options(cfg),
    })  # fmt: skip
    student = create_model(arch, num_classes=0, global_pool="token", img_size=img_size)
    record = resolve_preprocess(student)
    if std is not None and std <= 0:
        raise XrayfmError(f"normalisation std must be positive, got {std}")
    record = replace(record, mean=record.mean if mean is None else float(mean), std=record.std if std is None else std)
    ds = build_dataset(
        dataset, root, "train", transform=PretrainAugment(img_size, mean=record.mean, std=record.std),
        **(dataset_options or {}),
    )  # fmt: skip
    if grad_checkpointing:
        student.set_grad_checkpointing(True)
    teacher_model = None
    if teacher is not None:
        t_arch = teacher_arch
        if t_arch is None and Path(teacher).is_dir():
            t_arch = read_export(teacher)[1]["arch"]
        teacher_model = create_model(t_arch or arch, pretrained=teacher, num_classes=0, img_size=img_size)
    objective = MaskedFeatureModeling(
        student, teacher_model, target="teacher" if teacher_model is not None else "pixel", mask_ratio=mask_ratio
    )
    train(objective, ds, cfg, batch_to_input=_images, collate_fn=collate_samples)
    if not is_global_zero():  # with several processes rank 0 alone writes the export
        return Path(cfg.out_dir) / "export"
    state = {
        k.replace("norm.", "fc_norm.", 1) if k.startswith("norm.") else k: v for k, v in student.state_dict().items()
    }
    export_model = create_model(arch, num_classes=0, img_size=img_size)
    export_model.load_state_dict(state)
    return export_backbone(
        export_model,
        Path(cfg.out_dir) / "export",
        arch=arch,
        preprocess=record,
        info={
            "model_kwargs": {"img_size": img_size},
            "provenance": {
                "method": "eva_x_mim",
                "target": objective.target,
                "teacher": str(teacher) if teacher else None,
                "dataset": dataset,
                "root": str(root),
                "images": len(ds),
                "mask_ratio": mask_ratio,
                "steps": cfg.steps,
            },
        },
    )
