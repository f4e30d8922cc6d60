"""Benchmark: Adam against MoCo-v2, EVA-X MIM and random init, pretrained and fine-tuned on real X-rays.

Pretraining pool: every image of the five real sets in ../shared/datasets (jsrt_lungs,
covid_v7labs_lungs, nih_cxr14_sample, tbx11k_tb_boxes, kermany_pneumonia_test224; labels, masks and
boxes ignored) except the test images of the two downstream sets, held out by patient: the test
split each fine-tuning run scores (JSRT's published split; Kermany's patient-hash split, carved by
the csv adapter exactly as fine-tuning carves it), every image of a test patient included. Pool
images whose file bytes equal a held-out image's are dropped too. The pool is a generic ``csv``
dataset (absolute image paths, ``allow_outside_root``) written under WORK, with a 5% patient-level
``val`` share that only the contrastive runs' validation loss reads; all inits pretrain on the
same ``train`` images.

Inits, the pretrained ones of one budget (BUDGET optimiser steps of BATCH images each: the same
number of images seen): Adam (``run_anatomy``, stages n = 0, 2, 4, a third of the budget each,
queue carried over), MoCo-v2 (the same runner, stage n = 0 only: two crops of the whole image, no
pruning), both ARCH (ResNet-50 by default) with the Adam-v1 recipe's SGD settings (lr 0.03, momentum
0.9, wd 1e-4, cosine, T 0.2, m 0.999, prune 0.8, grey brightness / contrast jitter 0.4) but a queue
of 1,024 keys for a pool of about 1,600 images and BatchNorm in 4 shuffled groups of BATCH / 4 (the
recipe's 4 GPUs); the EVA-X MIM run (``run_mim``, pixel target: the Medical-MAE-style baseline, not
EVA-X's teacher target; eva_x_tiny_patch16, mask ratio 0.3); and random init of both architectures.

Fine-tuning (``xrayfm.finetune.sweep``, full fine-tuning, 1%, 10% and 100% of the training
patients, three seeds, the whole image as test view for every init): Kermany pneumonia vs normal
(AUROC, 3 epochs, batch 16) and JSRT lung segmentation (Dice, 4 epochs, batch 8). Paired
differences (per seed both runs' saved test predictions on the same images and bootstrap
resamples, then the mean over seeds with a 95% interval resampling images and seeds: the
statistics of ``xrayfm sweep --baseline``, built on those of ``xrayfm compare``): Adam and MoCo-v2
against random ResNet, EVA-X MIM against random EVA-X, and Adam against MoCo-v2. Every run's
folder keeps its model and test predictions, so any pair can be re-scored with ``xrayfm compare
RUN_A RUN_B csv ROOT`` and the set's ``-o`` options.

Caches: the pool lives in ``WORK/pool_<hash of its rows>``, each pretraining in
``WORK/<init>_<hash of its settings and pool>`` (an interrupted one resumes from its checkpoint),
each fine-tuning run in ``WORK/<experiment>/<family>/<init>_full_f<fraction>_s<seed>``, reused only
when it finished with the same config. The results file records per init, set and fraction the
mean, sd and per-seed values, the paired differences with their interval and whether it excludes
0, the test images every run was scored on, and provenance (``bench/provenance.py``).

Cost on this project's 2-core CPU machine, from single-step micro-runs on synthetic batches at
112 px (fastest of 4 steps, OMP_WAIT_POLICY=PASSIVE, while other jobs kept the load average at
2-3, so rather pessimistic), seconds per step: MoCo-v2 / Adam ResNet-50 3.1 (32 pairs), EVA-X Ti MIM
0.63 (32 images); fine-tuning ResNet-50 1.04 (16 images, classification) and 0.98 (8 images, U-Net),
EVA-X Ti 0.30 and 0.95 (UperNet); ResNet-18 MoCo 1.10, fine-tuning 0.38 and 0.29. With data loading
(about 10 ms an image) and evaluation, the defaults come to about 90 minutes on an idle machine:
pretraining 23 (MoCo-v2 9, Adam 9, MIM 2, validations), fine-tuning 90 runs in 65 (ResNet-50 54
runs 44, EVA-X 36 runs 21). ``--arch resnet18`` takes about 55 minutes, ``--img-size 96`` about 65,
128 px about 115. On cores shared with other jobs expect two to three times as long (PyTorch's
OpenMP threads spin while they wait; ``OMP_WAIT_POLICY=PASSIVE`` softens it).

Usage: python bench/adam_real.py [--shared ../shared/datasets] [--work runs/bench_adam_real] [--arch resnet50]
       [--img-size 112] [--budget 150] [--batch 32] [--fractions 0.01,0.1,1] [--seeds 0,1,2] [--only NAME,...]
       [--out FILE]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import itertools
import json
import logging
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from provenance import config_hash, earlier_part, provenance, start_real_data, write_result

from xrayfm.data.registry import build_dataset
from xrayfm.data.splits import holdout_fractions, split_groups
from xrayfm.errors import XrayfmError
from xrayfm.finetune.run import FinetuneConfig
from xrayfm.finetune.sweep import (
    Backbone,
    Baseline,
    differences_table,
    markdown_table,
    run_folder,
    run_sweep,
    sweep_statistics,
)
from xrayfm.io.atomic import atomic_write_text
from xrayfm.pretrain.anatomy_run import run_anatomy, stage_dir
from xrayfm.pretrain.mim_run import run_mim
from xrayfm.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]
POOL_SETS = ("jsrt_lungs", "covid_v7labs_lungs", "nih_cxr14_sample", "tbx11k_tb_boxes", "kermany_pneumonia_test224")
MIM_ARCH = "eva_x_tiny_patch16"
MASK_RATIO = 0.3
ADAM_STAGES = (0, 2, 4)
POOL_VAL_SHARE = 0.05
#: Fine-tuning epochs at 100% of the labels (a fraction trains as many epochs over its subset).
EPOCHS = {"kermany_pneumonia": 3, "jsrt_lungs": 4}
#: Engine settings that change a pretrained backbone's weights (its cache folder is named by them).
PRETRAIN_HASHED = ("steps", "batch_size", "optimizer", "lr", "min_lr", "schedule", "warmup_steps", "weight_decay",
                   "betas", "momentum", "nesterov", "accumulate", "clip_grad", "precision", "seed")  # fmt: skip
#: The paired comparisons: (row init, baseline init), each within one architecture family's sweep.
COMPARISONS = (("adam", "random"), ("moco_v2", "random"), ("eva_x_mim", "random_vit"), ("adam", "moco_v2"))
log = logging.getLogger("adam_real")


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def train_settings(train: TrainConfig) -> dict[str, Any]:
    """Engine settings as JSON values, without the output folder and logging / checkpoint cadence."""
    data = _jsonable(asdict(train))
    for key in ("out_dir", "log_every", "checkpoint_every"):
        data.pop(key)
    return data


def finetune_engine(*, epochs: float, batch: int, lr: float, accelerator: str) -> TrainConfig:
    """Fine-tuning engine settings; the warmup is half an epoch, so a 1% run is not all warmup."""
    return TrainConfig(out_dir="", steps=0, epochs=epochs, batch_size=batch, lr=lr, warmup_steps=0, warmup_epochs=0.5,
                       clip_grad=0.0, accelerator=accelerator, checkpoint_every=1000, log_every=10)  # fmt: skip


def experiments(shared: Path, args: argparse.Namespace) -> dict[str, dict[str, FinetuneConfig]]:
    """Experiment -> family (``resnet``: ARCH inits, ``vit``: EVA-X inits) -> base fine-tuning config.

    The families differ only in layer-wise lr decay (EVA-X's 0.55 / 0.85 for the ViT, none for the CNN).
    The test view is the whole image for every init (``crop_pct`` 1; the records of timm's random
    ResNet and of an Adam export differ, and a paired difference needs one view).
    """
    epochs = {name: n * args.epochs_scale for name, n in EPOCHS.items()}
    base = {
        "kermany_pneumonia": FinetuneConfig(
            dataset="csv", root=str(shared / "kermany_pneumonia_test224"), dataset_options={"split_column": ""},
            img_size=args.img_size, crop_pct=1.0, n_boot=args.n_boot, eval_splits=("test",),
            train=finetune_engine(epochs=epochs["kermany_pneumonia"], batch=16, lr=1e-3, accelerator=args.accelerator),
        ),
        "jsrt_lungs": FinetuneConfig(
            dataset="csv", root=str(shared / "jsrt_lungs"), dataset_options={"mask_columns": ("mask",),
                                                                              "label_columns": ()},
            img_size=args.img_size, crop_pct=1.0, flip=0.0, n_boot=args.n_boot, eval_splits=("test",),
            train=finetune_engine(epochs=epochs["jsrt_lungs"], batch=8, lr=5e-4, accelerator=args.accelerator),
        ),
    }  # fmt: skip
    vit_decay = {"kermany_pneumonia": 0.55, "jsrt_lungs": 0.85}
    return {
        name: {"resnet": replace(cfg, layer_decay=None), "vit": replace(cfg, layer_decay=vit_decay[name])}
        for name, cfg in base.items()
    }


def _patient(source: str, meta: dict[str, Any]) -> str:
    return f"{source}:{meta.get('patient_id') or meta['id']}"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def held_out(plans: dict[str, dict[str, FinetuneConfig]]) -> dict[str, dict[str, Any]]:
    """Per downstream set folder: the patients of the test split its fine-tuning scores, and that split's images.

    The test split is built with the fine-tuning config's own adapter options, so it is the split
    the runs are scored on (Kermany's patient-hash split included).
    """
    out: dict[str, dict[str, Any]] = {}
    for cfg in (family["resnet"] for family in plans.values()):
        source = Path(cfg.root).name
        test = build_dataset(cfg.dataset, cfg.root, "test", **cfg.dataset_options)
        out[source] = {"patients": {_patient(source, r.meta) for r in test.records},
                       "images": {r.image.resolve() for r in test.records}}  # fmt: skip
    return out


def write_pool(shared: Path, work: Path, held: dict[str, dict[str, Any]]) -> tuple[Path, dict[str, Any]]:
    """The pretraining pool as a csv dataset under ``WORK/pool_<hash>``; returns its folder and its facts.

    Every image of :data:`POOL_SETS` but those of held-out patients and those whose bytes equal a
    held-out image's; ``split`` is ``val`` for a patient-level share of :data:`POOL_VAL_SHARE`, else ``train``.
    """
    held_bytes = {_sha256(p) for h in held.values() for p in h["images"]}
    rows, facts = [], {"sources": {}, "held_out_test_images": {k: len(v["images"]) for k, v in held.items()}}
    for source in POOL_SETS:
        ds = build_dataset("csv", shared / source, "all", label_columns=(), boxes_file=None)
        patients = held.get(source, {}).get("patients", set())
        kept = [r for r in ds.records if _patient(source, r.meta) not in patients]
        same = [r for r in kept if _sha256(r.image) in held_bytes]
        kept = [r for r in kept if r not in same]
        facts["sources"][source] = {"images": len(ds), "held_out": len(ds) - len(kept) - len(same),
                                    "duplicates_of_held_out": len(same), "pooled": len(kept)}  # fmt: skip
        rows += [(str(r.image.resolve()), source, _patient(source, r.meta)) for r in kept]
    splits = split_groups([p for _, _, p in rows], seed=0, fractions=holdout_fractions(POOL_VAL_SHARE))
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(["image", "source", "patient_id", "split"])
    writer.writerows([*row, split] for row, split in zip(rows, splits))
    text = buf.getvalue()
    key = hashlib.sha256(text.encode()).hexdigest()[:12]
    folder = work / f"pool_{key}"
    if not (folder / "labels.csv").is_file():
        atomic_write_text(folder / "labels.csv", text)
    facts.update(folder=folder.name, hash=key, train_images=splits.count("train"), val_images=splits.count("val"))
    return folder, facts


POOL_OPTIONS = {"allow_outside_root": True, "label_columns": (), "boxes_file": None}


def moco_engine(out: Path, args: argparse.Namespace, steps: int) -> TrainConfig:
    """Contrastive engine settings: the Adam-v1 recipe's SGD and cosine schedule at BATCH images per step."""
    return TrainConfig(out_dir=str(out), steps=steps, batch_size=args.batch, optimizer="sgd", lr=0.03, momentum=0.9,
                       weight_decay=1e-4, min_lr=0.0, warmup_steps=0, clip_grad=0.0, accelerator=args.accelerator,
                       checkpoint_every=50, log_every=5)  # fmt: skip


def mim_engine(out: Path, args: argparse.Namespace) -> TrainConfig:
    """MIM engine settings (those of ``finetune_real``'s phantom MIM) at BATCH images per step."""
    return TrainConfig(out_dir=str(out), steps=args.budget, batch_size=args.batch, lr=1.5e-3,
                       warmup_steps=args.budget // 10, accelerator=args.accelerator, checkpoint_every=50,
                       log_every=5)  # fmt: skip


def _hashed(train: TrainConfig) -> dict[str, Any]:
    return {k: v for k, v in train_settings(train).items() if k in PRETRAIN_HASHED}


def anatomy_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``run_anatomy`` settings shared by Adam and MoCo-v2 (the recipe's, with a queue sized to the pool)."""
    return {"arch": args.arch, "img_size": args.img_size, "moco_dim": 128, "queue_size": args.queue_size,
            "momentum_key": 0.999, "temperature": 0.2, "prune_threshold": 0.8, "carry_queue": True,
            "split_bn": max(2, args.batch // 4), "brightness": 0.4, "contrast": 0.4, "jitter_p": 0.8}  # fmt: skip


def pretrain_plans(args: argparse.Namespace, pool: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Init -> everything that determines its weights (the cache folder is named by its hash)."""
    per_stage = args.budget // len(ADAM_STAGES)
    return {
        "adam": {"method": "adam", "stages": list(ADAM_STAGES), **anatomy_settings(args), "pool": pool["hash"],
                 "train": _hashed(moco_engine(Path(), args, per_stage))},
        "moco_v2": {"method": "moco_v2", "stages": [0], **anatomy_settings(args), "pool": pool["hash"],
                    "train": _hashed(moco_engine(Path(), args, args.budget))},
        "eva_x_mim": {"method": "eva_x_mim", "target": "pixel", "arch": MIM_ARCH, "img_size": args.img_size,
                      "mask_ratio": MASK_RATIO, "pool": pool["hash"], "train": _hashed(mim_engine(Path(), args))},
    }  # fmt: skip


def pretrain(init: str, plan: dict[str, Any], pool_dir: Path, work: Path, args: argparse.Namespace) -> Path:
    """The run folder of ``init`` for ``plan``, trained (or resumed) unless it finished earlier."""
    folder = work / f"{init}_{config_hash(plan)}"
    if (folder / "summary.json").is_file():
        log.info("reusing %s pretrained with config %s in %s", init, config_hash(plan), folder)
        return folder
    started = time.perf_counter()
    if plan["method"] == "eva_x_mim":
        run_mim("csv", pool_dir, arch=MIM_ARCH, img_size=args.img_size, mask_ratio=MASK_RATIO,
                dataset_options=POOL_OPTIONS, train_config=mim_engine(folder, args))  # fmt: skip
    else:
        settings = {k: v for k, v in plan.items() if k not in ("method", "stages", "pool", "train")}
        run_anatomy("csv", pool_dir, stages=plan["stages"], dataset_options=POOL_OPTIONS,
                    train_config=moco_engine(folder, args, plan["train"]["steps"]), **settings)  # fmt: skip
    log.info("%s pretrained in %.0f s", init, time.perf_counter() - started)
    return folder


def _losses(metrics: Path) -> tuple[float, float]:
    with open(metrics) as fh:
        rows = list(csv.DictReader(fh))
    return float(rows[0]["loss"]), float(rows[-1]["loss"])


def pretraining_record(init: str, folder: Path, plan: dict[str, Any]) -> dict[str, Any]:
    """What a pretrained init records about itself (its ``summary.json`` and ``metrics.csv`` files)."""
    summary = json.loads((folder / "summary.json").read_text())
    batch = plan["train"]["batch_size"]
    record = {"artefact": folder.name, "config_hash": config_hash(plan), "config": plan, "method": summary["method"],
              "images": summary["images"], "batch_size": batch, "steps": summary["steps"],
              "images_seen": summary["steps"] * batch, "seconds": summary["seconds"]}  # fmt: skip
    if init == "eva_x_mim":
        first, last = _losses(folder / "metrics.csv")
        record.update(target=summary["target"], first_loss=first, last_loss=last,
                      resumed_from_checkpoint=summary["resumed_from_checkpoint"])  # fmt: skip
        return record
    stages = []
    for stage in summary["stages"]:
        first, last = _losses(stage_dir(folder, stage["granularity"]) / "metrics.csv")
        stages.append({**{k: v for k, v in stage.items() if k != "export"}, "first_loss": first, "last_loss": last})
    record.update(val_images=summary["val_images"], carry_queue=summary["carry_queue"], stages=stages,
                  resumed_from_checkpoint=any(s["resumed_from_checkpoint"] for s in stages))  # fmt: skip
    return record


def scored_images(folders: list[Path]) -> dict[str, Any]:
    """The test images every run scored: their number and the SHA-256 of their sorted ids.

    Raises:
        XrayfmError: Two runs scored different images (their differences would not be paired).
    """
    seen: dict[tuple[str, ...], list[str]] = {}
    for folder in folders:
        with np.load(folder / "eval_test" / "predictions.npz", allow_pickle=False) as z:
            seen.setdefault(tuple(sorted(str(i) for i in z["ids"])), []).append(folder.name)
    if len(seen) != 1:
        raise XrayfmError(f"runs scored different test images: {[names[:2] for names in seen.values()]}")
    ids = next(iter(seen))
    return {"n": len(ids), "ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(), "runs": len(folders)}


def _excludes_zero(d: dict[str, Any]) -> bool | None:
    return None if d["low"] is None else bool(d["low"] > 0 or d["high"] < 0)


def run_experiment(name: str, families: dict[str, FinetuneConfig], inits: dict[str, Backbone], work: Path,
                   args: argparse.Namespace, fractions: list[float], seeds: list[int]) -> dict[str, Any]:  # fmt: skip
    """One downstream set: a sweep per architecture family, then every comparison of :data:`COMPARISONS`.

    Each run's ``last.ckpt`` (weights and optimiser state, about 0.6 GB for a ResNet-50 U-Net) is
    deleted once the run has finished; its ``model/`` and ``eval_test/`` stay, for the statistics and
    for ``xrayfm compare``.
    """
    family_of = {"random": "resnet", "moco_v2": "resnet", "adam": "resnet", "random_vit": "vit", "eva_x_mim": "vit"}
    started, t0 = time.time(), time.perf_counter()
    rows: list[dict[str, Any]] = []
    folders: list[Path] = []
    for family, base in families.items():
        backbones = [b for label, b in inits.items() if family_of[label] == family]
        sweep_dir = work / name / family
        combos = list(itertools.product(backbones, fractions, seeds))
        for b, f, s in combos:  # one run at a time, to drop each checkpoint when it is done
            run_sweep(base, backbones=[b], modes=["full"], fractions=[f], seeds=[s], out_dir=sweep_dir, split="test")
            (run_folder(sweep_dir, b, "full", f, s) / "last.ckpt").unlink(missing_ok=True)
        table = run_sweep(base, backbones=backbones, modes=["full"], fractions=fractions, seeds=seeds,
                          out_dir=sweep_dir, split="test")  # every run reused: the whole table  # fmt: skip
        with open(table) as fh:
            rows += list(csv.DictReader(fh))
        folders += [run_folder(sweep_dir, b, "full", f, s) for b, f, s in combos]
    stats: dict[str, Any] = {"split": "test", "baseline": ", ".join(f"{a} vs {b}" for a, b in COMPARISONS),
                             "n_boot": args.n_boot, "rows": [], "differences": [], "notes": []}  # fmt: skip
    for family in families:
        family_rows = [r for r in rows if family_of[r["backbone"]] == family]
        stats["rows"] += sweep_statistics(work / name / family, family_rows, [], split="test")["rows"]
    for label, against in COMPARISONS:
        family = family_of[label]
        runs = [(b, "full", f, s) for b in (label, against) for f in fractions for s in seeds]
        pair = sweep_statistics(work / name / family, [r for r in rows if r["backbone"] in (label, against)], runs,
                                baseline=Baseline(against), split="test", n_boot=args.n_boot)  # fmt: skip
        stats["differences"] += [{**d, "excludes_zero": _excludes_zero(d)} for d in pair["differences"]]
        stats["notes"] += pair["notes"]
    trained = sum((d / "summary.json").stat().st_mtime >= started for d in folders)
    return {
        "rows": rows, "seed_statistics": stats, "test_images": scored_images(folders),
        "table_markdown": markdown_table(rows, "test"), "differences_markdown": differences_table(stats, heading=False),
        "runs": len(folders), "runs_reused": len(folders) - trained, "wall_seconds": round(time.perf_counter() - t0, 1),
        "provenance": provenance(),
    }  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``--help`` shows the measured cost estimate)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=str(REPO.parent / "shared" / "datasets"))
    ap.add_argument("--work", default=str(REPO / "runs" / "bench_adam_real"))
    ap.add_argument("--arch", default="resnet50", help="backbone of Adam, MoCo-v2 and their random init")
    ap.add_argument("--img-size", type=int, default=112, help="pretraining and fine-tuning side (multiple of 16)")
    ap.add_argument("--budget", type=int, default=150,
                    help=f"optimiser steps of every pretraining (a multiple of {len(ADAM_STAGES)}: Adam's stages "
                         "split it)")  # fmt: skip
    ap.add_argument("--batch", type=int, default=32, help="pretraining images per step")
    ap.add_argument("--queue-size", type=int, default=1024, help="MoCo queue length K")
    ap.add_argument("--fractions", default="0.01,0.1,1")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs-scale", type=float, default=1.0, help=f"factor on the fine-tuning epochs {EPOCHS}")
    ap.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the test images")
    ap.add_argument("--accelerator", default="auto")
    ap.add_argument("--only", help="comma-separated experiments to run (default all)")
    ap.add_argument("--out", help="results file (default bench/results/adam_real_<device>.json)")
    args = ap.parse_args(argv)
    if args.budget <= 0 or args.budget % len(ADAM_STAGES):
        ap.error(f"--budget must be a positive multiple of {len(ADAM_STAGES)}, got {args.budget}")
    if args.img_size % 16:
        ap.error(f"--img-size must be a multiple of 16 (EVA-X patches), got {args.img_size}")
    return args


def main(argv: list[str] | None = None) -> Path:
    """Run the benchmark (reusing what is cached), write the results file and print its tables."""
    args = parse_args(argv)
    gpu = torch.cuda.is_available() and args.accelerator != "cpu"
    shared, work, out = start_real_data(args, "adam_real", gpu=gpu)
    fractions = [float(f) for f in args.fractions.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    t0 = time.perf_counter()
    plans = experiments(shared, args)
    only = set(args.only.split(",")) if args.only else set(plans)
    if only - set(plans):
        raise SystemExit(f"unknown experiments {sorted(only - set(plans))}; choose from {sorted(plans)}")

    pool_dir, pool = write_pool(shared, work, held_out(plans))
    log.info("pool %s: %d train and %d val images", pool["folder"], pool["train_images"], pool["val_images"])
    pretraining, inits = {}, {"random": Backbone("random", args.arch), "random_vit": Backbone("random_vit", MIM_ARCH)}
    for init, plan in pretrain_plans(args, pool).items():
        folder = pretrain(init, plan, pool_dir, work, args)
        pretraining[init] = pretraining_record(init, folder, plan)
        inits[init] = Backbone(init, MIM_ARCH if init == "eva_x_mim" else args.arch, str(folder))
    if len({p["images_seen"] for p in pretraining.values()}) != 1:
        raise SystemExit(f"pretraining budgets differ: { {k: p['images_seen'] for k, p in pretraining.items()} }")

    results: dict[str, Any] = {}
    for name, families in plans.items():
        part = {
            "experiment": name, "finetune": {f: _jsonable(asdict(c)) for f, c in families.items()}, "modes": ["full"],
            "fractions": fractions, "seeds": seeds, "comparisons": COMPARISONS,
            "inits": {k: [b.arch, pretraining[k]["config_hash"] if b.pretrained else None] for k, b in inits.items()},
        }  # fmt: skip
        key = config_hash(part)
        if name not in only:
            old = earlier_part(out, name, key)
            if old is not None:
                results[name] = old
            continue
        results[name] = {"config_hash": key, "config": part,
                         **run_experiment(name, families, inits, work, args, fractions, seeds)}  # fmt: skip
    report = {
        "benchmark": "adam_real", "arch": args.arch, "vit_arch": MIM_ARCH, "img_size": args.img_size,
        "budget": {"steps": args.budget, "batch_size": args.batch, "images_seen": args.budget * args.batch},
        "fractions": fractions, "seeds": seeds, "pool": pool, "pretraining": pretraining, "experiments": results,
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }  # fmt: skip
    write_result(out, report)
    for name, res in results.items():
        print(f"## {name}\n\n{res['table_markdown']}\n{res['differences_markdown']}")
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
