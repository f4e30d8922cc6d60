"""One Foundation X run from a recipe: what ``xrayfm pretrain multitask`` calls.

Builds every dataset of the recipe through its adapter (checking the recipe's task kinds and
classes against the adapter's), the :class:`~xrayfm.pretrain.multitask_model.MultiTaskModel`
(after seeding, so one seed gives one set of initial weights), its objective and EMA teacher;
unrolls the cycle into phases (a unit counted in epochs takes ``ceil((n // processes) / global
batch)`` steps per epoch of its dataset, as the engine counts epochs) and trains on the shared
engine. Each step draws its whole batch from the dataset of the step's unit
(:class:`~xrayfm.pretrain.multitask_data.PhaseSampler`); before each step the engine's
``on_step`` hook locks or releases the model as the step's phase says and moves the teacher
towards the student at each phase end (or after every step, ``ema.every: step``). The teacher is
part of the trained module, so it travels in ``last.ckpt`` and a resumed run continues exactly.

Frozen parameters under DDP: the run uses DDP with ``find_unused_parameters`` (strategy
``ddp_find_unused_parameters_true``). It must anyway, since a step runs one unit's head only and
the other heads get no gradient; the same mechanism covers a lock. Every rank runs the same unit at
every step, so the parameters a step leaves out are unused on all ranks, and DDP leaves their
gradients at None: the optimiser skips them, the frozen backbone included.

Outputs under ``OUT``: ``config.yaml`` (the resolved recipe, roots made absolute, and the run
settings), ``phases.csv`` (each phase as it starts: unit, lock, the ``metrics.csv`` steps it
covers), the engine's ``metrics.csv`` and ``last.ckpt``, ``export/`` (the student's backbone:
``create_model(arch, pretrained=OUT)``), ``model/`` (student and teacher with every head:
:func:`~xrayfm.pretrain.multitask_export.load_multitask_model`) and ``summary.json``; with ``init``,
``init.txt`` (what the checkpoint gave the model, also logged as the run starts).

A run can start from a released Foundation X or Ark-6 checkpoint (``init``): it is loaded into the
student before the EMA teacher is copied from it, so both start from it; on a fresh run only (a
resumed run continues from ``last.ckpt``). Its Swin is built with ``always_partition=True``, on a
resumed run too, and the exports record it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import ConcatDataset

from xrayfm.data.sample import collate_samples
from xrayfm.data.transforms import FinetuneAugment
from xrayfm.errors import XrayfmError
from xrayfm.io.atomic import atomic_write_json, atomic_write_text
from xrayfm.models import create_model
from xrayfm.models.export import export_backbone
from xrayfm.models.foundation_x_multitask import load_foundation_x
from xrayfm.models.foundation_x_weights import release_kwargs
from xrayfm.models.preprocess import resolve_preprocess
from xrayfm.models.registry import backbone_kwargs, export_kwargs
from xrayfm.pretrain.cyclic_schedule import Phase, enter_phase, expand_cycle, phase_at, total_steps
from xrayfm.pretrain.multitask import MultiTaskObjective, check_optimizer_coverage
from xrayfm.pretrain.multitask_data import PhaseSampler, build_recipe_datasets, dataset_root, unit_members
from xrayfm.pretrain.multitask_export import MODEL_DIR, save_multitask_model
from xrayfm.pretrain.multitask_model import MultiTaskModel
from xrayfm.pretrain.multitask_recipe import EmaSettings, MultiTaskRecipe, parse_recipe, read_recipe_yaml
from xrayfm.progress import PROGRESS_LOGGER
from xrayfm.train import TrainConfig, seed_everything, train
from xrayfm.train.checkpoint import CHECKPOINT
from xrayfm.train.config import engine_options, resolve_accumulate, steps_per_epoch, write_run_config
from xrayfm.train.distributed import make_fabric

log = logging.getLogger(__name__)
progress_log = logging.getLogger(PROGRESS_LOGGER)

METHOD = "Foundation X: shared backbone, a head per (dataset, task), Cyclic & Lock-Release, EMA teacher"
PHASES = "phases.csv"
INIT_REPORT = "init.txt"
PHASES_HEADER = "phase,cycle,unit,kind,locked,first_step,last_step"
#: The DDP strategy of a multi-process run (see the module docstring).
DDP_UNUSED = "ddp_find_unused_parameters_true"


class CyclicObjective(nn.Module):
    """The module the engine trains: the objective of the unit the schedule is at.

    :meth:`on_step` is the engine's hook: it moves the teacher at phase ends (or every step), then
    enters the phase of the coming step (lock or release, which unit the next batches train).

    Args:
        objective: Student, teacher and losses.
        phases: The schedule.
        ema: When and how much the teacher follows the student.
        steps: Steps this run trains (the schedule's, or fewer for a short check).
        phases_csv: Where to record each phase as it starts (rank 0), or None.
    """

    def __init__(
        self,
        objective: MultiTaskObjective,
        phases: list[Phase],
        ema: EmaSettings,
        *,
        steps: int,
        phases_csv: Path | None,
    ) -> None:
        super().__init__()
        self.objective, self.phases, self.ema, self.phases_csv = objective, phases, ema, phases_csv
        self.steps = steps
        self.unit = phases[0].key
        self._ends = {p.end for p in phases}
        self._first_call = True

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """The mixed loss of the current unit on a batch of its dataset."""
        return self.objective(batch, self.unit)

    def on_step(self, step: int) -> None:
        """Finish the steps before ``step`` (EMA at a phase end) and enter the phase of step ``step``."""
        if step > 0 and (self.ema.every == "step" or step in self._ends):
            self.objective.update_teacher(self.ema.momentum)
        if self._first_call and self.phases_csv is not None:
            _cut_phases(self.phases_csv, step)
        self._first_call = False
        if step >= self.steps:
            return
        index, into = phase_at(self.phases, step)
        phase = self.phases[index]
        enter_phase(self.objective.model, phase)
        self.unit = phase.key
        if into == 0 and self.phases_csv is not None:
            row = [index, phase.cycle, phase.key, phase.unit.kind, int(phase.locked), phase.start + 1, phase.end]
            with open(self.phases_csv, "a") as fh:
                fh.write(",".join(map(str, row)) + "\n")


def _cut_phases(path: Path, step: int) -> None:
    """Keep the header and the rows of phases that started before ``step`` (a resumed run writes the rest)."""
    rows = path.read_text().splitlines()[1:] if path.is_file() else []
    kept = [r for r in rows if len(f := r.split(",")) == 7 and f[5].isdigit() and int(f[5]) <= step]
    atomic_write_text(path, "\n".join([PHASES_HEADER, *kept]) + "\n")


def recipe_mapping(recipe: MultiTaskRecipe, data_root: str | Path | None = None) -> dict[str, Any]:
    """The recipe as the YAML mapping :func:`~xrayfm.pretrain.multitask_recipe.parse_recipe` reads,
    every default written out and relative roots joined to ``data_root``."""
    datasets = {
        name: {
            "adapter": e.adapter, "root": str(dataset_root(e.root, data_root).absolute()), "options": dict(e.options),
            "tasks": {t: {"kind": task.spec.kind, "classes": list(task.spec.classes), "weight": task.weight}
                      for t, task in e.tasks.items()},
        }
        for name, e in recipe.datasets.items()
    }  # fmt: skip
    cycle = []
    for u in recipe.cycle:
        length = {"steps": u.steps} if u.steps is not None else {"epochs": u.epochs}
        cycle.append({"dataset": u.dataset, "task": u.task, **length, "lock_fraction": u.lock_fraction})
    return {
        "datasets": datasets, "cycle": cycle, "cycles": recipe.cycles,
        "ema": {"momentum": recipe.ema.momentum, "every": recipe.ema.every},
        "consistency_weight": recipe.consistency_weight, "localizer": recipe.localizer,
        "detr": dict(recipe.detr),
    }  # fmt: skip


def read_run_recipe(path: str | Path) -> MultiTaskRecipe:
    """A recipe from a recipe file or from a run's ``config.yaml`` (its resolved ``recipe``), to run it again.

    Raises:
        RecipeError: The file is missing, not YAML, or holds no valid recipe.
    """
    data = read_recipe_yaml(path)
    if isinstance(data, dict) and "recipe" in data and "datasets" not in data:
        return parse_recipe(data["recipe"], source=f"{path}: recipe")
    return parse_recipe(data, source=str(path))


def multitask_param_groups(model: MultiTaskModel, cfg: TrainConfig, backbone_lr_scale: float) -> list[dict[str, Any]]:
    """The optimizer groups of a multi-task run, as the reference's: the backbone at ``backbone_lr_scale`` x lr
    (1e-5 vs 1e-4), the rest at lr, weight decay on every parameter (jlianglab/Foundation_X main.py L1374-1384).

    Public so that benchmarks and checks build the very groups :func:`run_multitask` trains with.

    Args:
        model: The multi-task model.
        cfg: Engine settings; ``lr`` is the heads' learning rate.
        backbone_lr_scale: The backbone's learning rate as a share of ``cfg.lr``.

    Returns:
        ``[backbone group, rest group]``, each ``{"params", "lr"}``: ``param_groups`` for
        :func:`~xrayfm.train.train`.
    """
    backbone = {id(p) for p in model.backbone.parameters()}
    return [
        {"params": [p for p in model.parameters() if id(p) in backbone], "lr": cfg.lr * backbone_lr_scale},
        {"params": [p for p in model.parameters() if id(p) not in backbone], "lr": cfg.lr},
    ]


def _start_from(model: MultiTaskModel, path: str | Path, *, teacher: bool, report: Path, rank: int) -> None:
    """Load a Foundation X / Ark-6 checkpoint into ``model``; rank 0 logs and writes ``report`` of what it gave."""
    lines = load_foundation_x(model, path, teacher=teacher).lines()
    if rank == 0:
        atomic_write_text(report, "\n".join(lines) + "\n")
        for line in lines:
            progress_log.info("init: %s", line)


def _strategy(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with DDP finding unused parameters wherever it runs DDP; FSDP refused."""
    if cfg.strategy == "fsdp":
        raise XrayfmError("multi-task pretraining runs on one device or under --strategy ddp, not fsdp")
    several = cfg.num_nodes > 1 or str(cfg.devices) != "1"
    if cfg.strategy == "ddp" or (cfg.strategy == "auto" and several):
        return replace(cfg, strategy=DDP_UNUSED)
    return cfg


def run_multitask(
    recipe: MultiTaskRecipe | str | Path,
    out_dir: str | Path,
    train_config: TrainConfig | None = None,
    *,
    arch: str = "swin_base_patch4_window7_224",
    img_size: int = 224,
    data_root: str | Path | None = None,
    decoder: str | None = None,
    features: str = "last",
    backbone_lr_scale: float = 0.1,
    max_steps: int | None = None,
    grad_checkpointing: bool = False,
    init: str | Path | None = None,
    init_student: bool = False,
    pretrained: str | Path | None = None,
) -> Path:
    """Train one model on every unit of ``recipe``, cycle after cycle, and export it; returns ``OUT/export``.

    Args:
        recipe: A parsed recipe, its YAML file, or a run's ``config.yaml``.
        out_dir: Run folder (replaces ``train_config.out_dir``).
        train_config: Engine settings; ``steps`` and ``epochs`` are set by the recipe (use ``max_steps``).
        arch: Backbone (paper: Swin-B; any registry / timm name with a feature pyramid for dense heads).
        img_size: Input side; every sample is cropped and resized to it.
        data_root: Folder that the recipe's relative dataset roots are relative to (default: the working folder).
        decoder: Shared segmentation decoder, ``upernet`` or ``unet`` (default: by backbone).
        features: Pyramid taps of a ViT, ``last`` or ``pyramid``.
        backbone_lr_scale: Backbone learning rate as a share of the others' (reference 1e-5 / 1e-4).
        max_steps: Train only the first steps of the schedule (a short check); None runs all of it.
        grad_checkpointing: Recompute backbone activations in the backward pass.
        init: A Foundation X or Ark-6 checkpoint to start a fresh run from: its Swin (strictly), and its
            classification heads and deformable encoder where the model has counterparts
            (:func:`~xrayfm.models.foundation_x_multitask.load_foundation_x`); ``arch`` must be a timm Swin.
        init_student: Start from the checkpoint's student rather than its EMA teacher.
        pretrained: Backbone weights to start from (a weight file or an xrayfm export such as a pretraining
            run's folder, as ``create_model`` reads them); the heads start fresh. Not with ``init``.

    Returns:
        The export folder of the student's backbone.

    Raises:
        RecipeError: A bad recipe, or datasets that do not carry its tasks.
        XrayfmError: ``epochs`` set, FSDP, a dataset or model that cannot be built, or an ``init`` that
            does not fit.
    """
    recipe = recipe if isinstance(recipe, MultiTaskRecipe) else read_run_recipe(recipe)
    cfg = replace(train_config or TrainConfig(), out_dir=str(out_dir))
    if cfg.epochs > 0:
        raise XrayfmError("the recipe sets a multi-task run's length (its units' epochs or steps, and cycles); "
                          "leave epochs at 0 and use max_steps (--steps) for a shorter run")  # fmt: skip
    if max_steps is not None and max_steps < 1:
        raise XrayfmError(f"max_steps must be at least 1, got {max_steps}")
    if init is not None and pretrained is not None:
        raise XrayfmError("give either --init (a Foundation X / Ark-6 checkpoint) or --pretrained (backbone weights)")
    if init_student and init is None:
        raise XrayfmError("init_student (--init-student) chooses the weights of an init checkpoint; give --init")
    out = Path(out_dir)
    kwargs = backbone_kwargs(arch, img_size=img_size)
    if init is not None:  # the released Swin's build, on a resumed run too
        kwargs = release_kwargs(arch, kwargs, source=str(init))
    settings = {
        "recipe": recipe_mapping(recipe, data_root), "arch": arch, "img_size": img_size, "decoder": decoder,
        "features": features, "backbone_lr_scale": backbone_lr_scale, "grad_checkpointing": grad_checkpointing,
        "init": None if init is None else str(init), "init_student": init_student,
        "pretrained": None if pretrained is None else str(pretrained),
    }  # fmt: skip
    fabric = make_fabric(_strategy(cfg))
    if fabric.global_rank == 0:
        write_run_config(out / "config.yaml", {**settings, **engine_options(replace(cfg, steps=max_steps or 0))})
    view = FinetuneAugment(img_size, degrees=7.0)  # reference classification view: crop, flip, rotation 7
    datasets = build_recipe_datasets(recipe, data_root=data_root, transform=view)
    seed_everything(cfg.seed)  # before the model is built: its initial weights follow from the seed
    backbone = create_model(arch, pretrained, num_classes=0, **kwargs)
    if grad_checkpointing:
        backbone.set_grad_checkpointing(True)
    record = replace(resolve_preprocess(backbone, img_size=img_size), crop_pct=1.0)
    model = MultiTaskModel.from_recipe(recipe, backbone, preprocess=record, decoder=decoder, features=features)
    if init is not None and not (out / CHECKPOINT).exists():  # before the teacher copies the student
        _start_from(model, init, teacher=not init_student, report=out / INIT_REPORT, rank=fabric.global_rank)
    objective = MultiTaskObjective.from_recipe(recipe, model)
    world = fabric.world_size
    cfg = resolve_accumulate(cfg, world)
    lengths = {name: len(ds) for name, ds in datasets.items()}
    members = unit_members(recipe, datasets, world)
    phases = expand_cycle(recipe, {u.key: steps_per_epoch(cfg, len(members[u.key]), world) for u in recipe.cycle})
    cfg = replace(cfg, steps=min(total_steps(phases), max_steps or total_steps(phases)), epochs=0.0)
    concat = ConcatDataset(list(datasets.values()))
    offsets = dict(zip(datasets, [0, *concat.cumulative_sizes[:-1]]))

    def order(rank: int, world: int, start: int) -> PhaseSampler:
        return PhaseSampler(phases, offsets, members, samples_per_step=cfg.batch_size * cfg.accumulate,
                            seed=cfg.seed, rank=rank, world=world, start=start)  # fmt: skip

    cyclic = CyclicObjective(objective, phases, recipe.ema, steps=cfg.steps,
                             phases_csv=out / PHASES if fabric.global_rank == 0 else None)  # fmt: skip
    groups = multitask_param_groups(model, cfg, backbone_lr_scale)
    check_optimizer_coverage(cyclic, torch.optim.SGD(groups, lr=cfg.lr))  # the engine's optimiser holds these groups
    result = train(cyclic, concat, cfg, collate_fn=collate_samples, fabric=fabric, param_groups=groups,
                   data_order=order, on_step=cyclic.on_step)  # fmt: skip
    model.release()
    if fabric.global_rank != 0:
        return out / "export"
    facts = {
        "method": METHOD, "images": lengths, "unit_images": {u: len(m) for u, m in members.items()},
        "phases": len(phases), "schedule_steps": total_steps(phases),
        "steps": result["steps"], "steps_this_call": result["steps"] - result["start_step"],
        "seconds": result["seconds"], "resumed_from_checkpoint": result["start_step"] > 0,
        "init": settings["init"], "init_weights": None if init is None else ("student" if init_student else "teacher"),
    }  # fmt: skip
    resolved, model_kwargs = settings["recipe"], {**kwargs, **export_kwargs(backbone)}
    provenance = {**facts, "recipe": resolved}
    export = export_backbone(backbone, out / "export", arch=arch, preprocess=record,
                             info={"model_kwargs": model_kwargs, "provenance": provenance})  # fmt: skip
    saved = save_multitask_model(model, objective.teacher.model, out / MODEL_DIR, arch=arch, model_kwargs=model_kwargs,
                                 preprocess=record, info={"recipe": resolved, "provenance": facts})  # fmt: skip
    loss = result["loss"]
    atomic_write_json(out / "summary.json", {
        **facts, "recipe": resolved, "final_loss": loss if math.isfinite(loss) else None,
        "export": str(export), "model": str(saved),
    })  # fmt: skip
    return export
