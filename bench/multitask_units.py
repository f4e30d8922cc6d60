"""Foundation X training-step throughput, memory and trained parameters per unit kind and phase.

Usage: python bench/multitask_units.py [--arch resnet50] [--img-size 224] [--batch-size 24] [--detr paper]
       [--recipe foundation_x_shared] [--warmup 2] [--steps 5] [--threads 0] [--device auto] [--out PATH] [--quick]

For the first classification, segmentation and localization (detection) unit of the recipe's cycle, and
for each phase the unit has (a lockable unit runs locked, then released; classification has no lock):
images/s of whole training steps as ``xrayfm pretrain multitask`` runs them: the unit's student forward,
the EMA teacher's forward for the consistency loss (:class:`~xrayfm.pretrain.multitask.MultiTaskObjective`),
backward and the command's AdamW (lr 1e-4, backbone at 0.1 x, weight decay 1e-4, no clipping) over the
run's parameter groups, the model locked on the unit (:func:`~xrayfm.pretrain.cyclic_schedule.lock`) or
released. The model holds every head of the recipe, as a run's does. The teacher's EMA update runs at phase
ends, not every step (``ema.every: phase``), so it is timed apart (``ema_update_ms``).

Each measurement runs in a process of its own (its peak memory is its own): on CPU the process's peak
resident memory (``ru_maxrss``) and what the steps added to it (peak minus the resident memory of the built
model, teacher, optimiser and batch); on CUDA ``torch.cuda.max_memory_allocated`` and what the steps added,
in bf16 autocast (the engine's ``--precision auto``). A fresh process holds AdamW state only for what its
phase trains; in a run, the state of everything trained before stays (``optimizer_state_mib`` of the whole
student is reported beside). Batches are synthetic (seeded noise images, random labels and masks, two boxes
per image): the step's cost does not depend on the pixels. ``trainable_params`` counts parameters that
require gradients, ``updated_params`` those that got one in a step (the unit's path: other heads get none).

``--detr``: the Deformable DETR size: ``paper`` (256 wide, 6 + 6 layers, 900 queries, over
:data:`~xrayfm.models.heads.deformable_detr.DETR_DEFAULTS`), ``cpu`` (the foundation_x_shared recipe's) or
``tiny`` (the foundation_x_phantom recipe's). ``--quick``: resnet18, 64 px, batch 2, tiny DETR, the phantom
recipe, one thread, 1 + 2 steps, all in this process: a smoke run whose numbers mean nothing; it writes only to an
explicit ``--out``. On a busy CPU, ``--threads`` below the core count avoids threads waiting on each other.
Records its provenance (``bench/provenance.py``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import torch
from provenance import torch_device, write_result
from readme_tables import multitask_units_table

from xrayfm.cli.recipes import find_recipe
from xrayfm.data.sample import collate_samples
from xrayfm.errors import XrayfmError
from xrayfm.models import create_model
from xrayfm.models.heads.deformable_detr import DETR_DEFAULTS
from xrayfm.models.preprocess import resolve_preprocess
from xrayfm.models.registry import backbone_kwargs
from xrayfm.pretrain.cyclic_schedule import lock
from xrayfm.pretrain.multitask import MultiTaskObjective, check_optimizer_coverage
from xrayfm.pretrain.multitask_model import MultiTaskModel
from xrayfm.pretrain.multitask_recipe import LOCKABLE_KINDS, CycleUnit, MultiTaskRecipe
from xrayfm.pretrain.multitask_run import multitask_param_groups, read_run_recipe
from xrayfm.tasks import CLASSIFICATION_KINDS, TaskSpec
from xrayfm.train import TrainConfig
from xrayfm.train.optim import build_optimizer, named_param_groups

RESULTS = Path(__file__).resolve().parent / "results"
MIB = 2**20
#: The paper's localizer size (the recipes' comment: 256 wide, 6 + 6 layers, 900 queries).
PAPER_DETR = {**DETR_DEFAULTS, "d_model": 256, "encoder_layers": 6, "decoder_layers": 6, "num_queries": 900}
#: ``--detr`` presets read from a shipped recipe.
DETR_RECIPES = {"cpu": "foundation_x_shared", "tiny": "foundation_x_phantom"}
#: ``xrayfm pretrain multitask``'s defaults (the paper's): AdamW, lr 1e-4, weight decay 1e-4, backbone at 0.1 x.
OPTIM = TrainConfig(optimizer="adamw", lr=1e-4, weight_decay=1e-4, clip_grad=0.0)
BACKBONE_LR_SCALE, EMA_MOMENTUM, BOXES_PER_IMAGE = 0.1, 0.8, 2
#: Unit kinds as the paper names them, by task kind.
KIND_NAMES = {**dict.fromkeys(CLASSIFICATION_KINDS, "classification"), "segmentation": "segmentation",
              "detection": "localization"}  # fmt: skip
#: ``--quick``'s settings (they replace those options).
QUICK = {"arch": "resnet18", "img_size": 64, "batch_size": 2, "warmup": 1, "steps": 2, "detr": "tiny",
         "recipe": "foundation_x_phantom", "threads": 1}  # fmt: skip
MEMORY_CPU = (
    "process peak RSS (ru_maxrss), one process per measurement; step_mib = peak - RSS before the first step "
    "(model, teacher, optimiser and batch built)"
)
MEMORY_GPU = "torch.cuda.max_memory_allocated; step_mib = peak - allocated before the first step"


def detr_settings(preset: str) -> dict[str, Any]:
    """The Deformable DETR settings of a ``--detr`` preset (``paper``, ``cpu`` or ``tiny``)."""
    if preset == "paper":
        return dict(PAPER_DETR)
    return dict(read_run_recipe(find_recipe(DETR_RECIPES[preset])).detr)


def bench_units(recipe: MultiTaskRecipe) -> list[CycleUnit]:
    """The first unit of each kind (classification, localization, segmentation) in the recipe's cycle."""
    first: dict[str, CycleUnit] = {}
    for unit in recipe.cycle:
        first.setdefault(KIND_NAMES[unit.kind], unit)
    return list(first.values())


def synthetic_batch(spec: TaskSpec, n: int, size: int, seed: int) -> dict[str, Any]:
    """A collated batch of ``n`` seeded noise images with random targets of ``spec``'s kind."""
    g = torch.Generator().manual_seed(seed)
    k = spec.num_classes
    samples = []
    for i in range(n):
        sample: dict[str, Any] = {"image": torch.rand(1, size, size, generator=g), "meta": {"id": str(i)}}
        if spec.kind == "multilabel":
            sample["labels"] = torch.randint(2, (k,), generator=g).float()
        elif spec.kind == "multiclass":
            sample["labels"] = torch.eye(k)[torch.randint(k, (), generator=g)]
        elif spec.kind == "segmentation":
            sample["mask"] = torch.randint(2, (k, size, size), generator=g, dtype=torch.uint8)
        else:
            corner = torch.rand(BOXES_PER_IMAGE, 2, generator=g) * size / 2
            extent = size / 8 + torch.rand(BOXES_PER_IMAGE, 2, generator=g) * size / 4
            sample["boxes"] = torch.cat([corner, corner + extent], 1)
            sample["box_labels"] = torch.randint(k, (BOXES_PER_IMAGE,), generator=g)
        samples.append(sample)
    return collate_samples(samples)


def _to(batch: dict[str, Any], device: str) -> dict[str, Any]:
    """``batch`` with its tensors (and lists of tensors) on ``device``."""
    moved: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            moved[key] = value.to(device)
        elif isinstance(value, list) and all(isinstance(v, torch.Tensor) for v in value):
            moved[key] = [v.to(device) for v in value]
        else:
            moved[key] = value
    return moved


def _peak_rss() -> int:
    """The process's peak resident memory in bytes (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _memory(device: str) -> int:
    """Memory in use now: CUDA allocated bytes, else the process's resident bytes."""
    return torch.cuda.memory_allocated() if device == "cuda" else psutil.Process().memory_info().rss


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(job: dict[str, Any]) -> dict[str, Any]:
    """One (unit, phase) measurement, run in a fresh process.

    Args:
        job: ``recipe`` (file or shipped name), ``detr`` (preset), ``unit`` (``dataset/task``), ``locked``,
            ``arch``, ``img_size``, ``batch_size``, ``warmup`` (at least 1) and ``steps`` (untimed, timed),
            ``device``, ``threads`` (torch CPU threads; 0 keeps torch's default).

    Returns:
        ``step_s``, ``peak_mib``, ``step_mib``, ``ema_update_ms``, and the student's ``total_params``,
        ``trainable_params`` and ``updated_params``.
    """
    if job["threads"]:
        torch.set_num_threads(job["threads"])
    torch.manual_seed(0)
    device, size, unit = job["device"], job["img_size"], job["unit"]
    recipe = replace(read_run_recipe(find_recipe(job["recipe"])), detr=detr_settings(job["detr"]))
    backbone = create_model(job["arch"], num_classes=0, **backbone_kwargs(job["arch"], img_size=size))
    record = replace(resolve_preprocess(backbone, img_size=size), crop_pct=1.0)  # as run_multitask
    model = MultiTaskModel.from_recipe(recipe, backbone, preprocess=record)
    objective = MultiTaskObjective.from_recipe(recipe, model).to(device).train()
    groups = named_param_groups(
        objective, multitask_param_groups(model, OPTIM, BACKBONE_LR_SCALE), weight_decay=OPTIM.weight_decay
    )
    optimizer = build_optimizer(objective, groups, OPTIM)
    check_optimizer_coverage(objective, optimizer)
    if job["locked"]:
        lock(model, unit)
    batch = _to(synthetic_batch(model.task(unit), job["batch_size"], size, seed=0), device)
    amp = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")
    updated: list[int] = []

    def step() -> None:
        with amp:
            loss = objective(batch, unit)
        loss.backward()
        if not updated:
            updated.append(sum(p.numel() for p in model.parameters() if p.grad is not None))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    _sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    before = _memory(device)
    for _ in range(job["warmup"]):  # allocator, AdamW state, kernel selection
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(job["steps"]):
        step()
    _sync(device)
    seconds = (time.perf_counter() - t0) / job["steps"]
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else _peak_rss()
    t0 = time.perf_counter()
    objective.update_teacher(EMA_MOMENTUM)
    _sync(device)
    ema_ms = (time.perf_counter() - t0) * 1000
    return {
        "step_s": seconds, "peak_mib": peak / MIB, "step_mib": (peak - before) / MIB, "ema_update_ms": ema_ms,
        "total_params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "updated_params": updated[0],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Measure every (unit kind, phase) and write the result file."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet50", help="backbone (the paper's: swin_base_patch4_window7_224)")
    ap.add_argument("--img-size", type=int, default=224, help="input side (default 224)")
    ap.add_argument("--batch-size", type=int, default=24, help="images per step (default 24, the command's)")
    ap.add_argument("--detr", choices=("paper", *DETR_RECIPES), default="paper", help="Deformable DETR size")
    ap.add_argument("--recipe", default="foundation_x_shared", help="multi-task recipe: its heads and cycle")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first, at least 1 (default 2)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per measurement (default 5)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--out", type=Path, help="result file (default bench/results/multitask_units_{cpu,gpu}.json)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (default 0: torch's default)")
    ap.add_argument("--quick", action="store_true", help="smoke run in this process: resnet18, 64 px, batch 2, "
                    "tiny DETR, foundation_x_phantom, 1 thread, 1 + 2 steps")  # fmt: skip
    args = ap.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    if args.threads:
        torch.set_num_threads(args.threads)  # here too, so the provenance records it
    if args.steps < 1 or args.warmup < 1:
        raise XrayfmError(f"--steps and --warmup must be at least 1, got {args.steps} and {args.warmup}")
    device = torch_device(args.device)
    out = None if args.quick and args.out is None else args.out
    if not args.quick and out is None:
        out = RESULTS / f"multitask_units_{'gpu' if device == 'cuda' else 'cpu'}.json"
    recipe = read_run_recipe(find_recipe(args.recipe))
    common = {"recipe": args.recipe, "detr": args.detr, "arch": args.arch, "img_size": args.img_size,
              "batch_size": args.batch_size, "warmup": args.warmup, "steps": args.steps, "device": device,
              "threads": args.threads}  # fmt: skip
    jobs = []
    for unit in bench_units(recipe):
        lockable = unit.kind in LOCKABLE_KINDS and unit.lock_fraction > 0
        phases = (True, False) if lockable else (False,)
        jobs += [{**common, "unit": unit.key, "kind": KIND_NAMES[unit.kind], "locked": locked} for locked in phases]
    results = []
    ctx = multiprocessing.get_context("spawn")
    for job in jobs:
        if args.quick:  # a fresh process per measurement costs seconds of imports; quick numbers mean nothing
            m = measure(job)
        else:
            with ctx.Pool(1, maxtasksperchild=1) as pool:
                (m,) = pool.map(measure, [job], chunksize=1)
        row = {
            "unit": job["unit"], "kind": job["kind"],
            "phase": "locked" if job["locked"] else "released",
            "images_per_s": round(args.batch_size / m["step_s"], 2), "step_s": round(m["step_s"], 4),
            "peak_mib": round(m["peak_mib"], 1), "step_mib": round(m["step_mib"], 1),
            "ema_update_ms": round(m["ema_update_ms"], 2), "total_params": m["total_params"],
            "trainable_params": m["trainable_params"], "updated_params": m["updated_params"],
            "optimizer_state_mib": round(2 * 4 * m["total_params"] / MIB, 1),  # AdamW: two fp32 moments
        }  # fmt: skip
        results.append(row)
        print(row, flush=True)
    cuda = device == "cuda"
    report = {
        "benchmark": "multitask_units",
        "setup": {
            "objective": "Foundation X (xrayfm.pretrain.multitask.MultiTaskObjective): task + EMA-teacher consistency",
            "recipe": args.recipe, "arch": args.arch, "img_size": args.img_size, "batch_size": args.batch_size,
            "detr_preset": args.detr, "detr": detr_settings(args.detr),
            "consistency_weight": recipe.consistency_weight,
            "optimizer": f"adamw lr {OPTIM.lr:g} (backbone x {BACKBONE_LR_SCALE}), weight_decay {OPTIM.weight_decay:g}",
            "batch": f"synthetic: seeded noise images, random labels / masks, {BOXES_PER_IMAGE} boxes per image",
            "timed_steps": args.steps, "warmup_steps": args.warmup, "device": device,
            "precision": "bf16-autocast" if cuda else "fp32", "memory": MEMORY_GPU if cuda else MEMORY_CPU,
            "threads": torch.get_num_threads(), "quick": args.quick,
        },
        "results": results,
    }  # fmt: skip
    if out is not None:
        write_result(out, report, packages=("psutil", "transformers"))
        print(f"wrote {out}")
        print(multitask_units_table(json.loads(out.read_text()), str(out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
