"""Benchmark: adapting EVA-X Ti/16 to the real X-ray sets in ../shared/datasets.

Two backbones — randomly initialised, and pretrained by xrayfm's own MIM (pixel target, the
Medical-MAE-style baseline, not EVA-X's teacher target) on synthetic phantoms — are adapted on all
and on 10% of the training patients, each with three seeds, for:

- pneumonia vs normal classification (Kermany test set, 624 real images, patient-hash split):
  full fine-tuning and linear probing;
- lung segmentation (JSRT, 247 real images, its published split): full fine-tuning;
- TB lesion box localization (TBX11K sample, 200 real images; full fine-tuning on all training
  images, scored on its validation split, as it has no test split here).

Every number comes from ``xrayfm.finetune.sweep`` and is written with its provenance
(``bench/provenance.py``) to ``bench/results/finetune_real_<device>.json`` plus the sweep tables:
per row the mean and sd over seeds, and per row its paired difference from the ``--baseline`` row
(same seed, same test images; mean over seeds with a 95% CI resampling images and seeds). This is
a small-compute benchmark (128 px, a few epochs on 2 CPU cores): it shows the pipeline on real data
and the relative behaviour of the backbones, not the paper's numbers.

Caches, and what the results file trusts: the phantoms and the pretrained backbone live under
WORK in folders named by the hash of the settings that produce them (``phantom_<hash>``,
``mim_phantom_<hash>``), so other settings never reuse them. The pretraining facts reported
(steps, images, losses, seconds, when and where) are read from the backbone's own records: its
``summary.json``, its ``metrics.csv`` and the ``bench_record.json`` this script writes beside them
when it trains it, never from the current arguments; ``seconds`` is the training loop's wall time
for ``steps_timed`` steps (fewer than ``steps`` when the run resumed). Sweep runs are reused only
when they ran with the same config. The results file is written whole by each invocation; with ``--only``, the
other experiments of the previous file are kept only when the config hash they recorded is the
one they would have now (the others are dropped with a warning).

Usage: python bench/finetune_real.py [--shared ../shared/datasets] [--work runs/bench_real] [--only NAME,...]
       [--modes MODE,...] [--seeds 0,1,2] [--baseline random] [--out FILE]
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from provenance import config_hash, earlier_part, provenance, write_result

from xrayfm.data.phantom_io import write_phantom_dataset
from xrayfm.finetune.run import FinetuneConfig
from xrayfm.finetune.sweep import Backbone, run_folder, run_sweep
from xrayfm.pretrain.mim_run import run_mim
from xrayfm.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]
ARCH = "eva_x_tiny_patch16"
MASK_RATIO = 0.3
RECORD = "bench_record.json"  # written beside a backbone this script pretrained
#: Engine settings that name the pretrained backbone's cache: the ones that change its weights. A list
#: rather than every TrainConfig field, so that a new engine option at its default keeps the cache.
MIM_HASHED = ("steps", "batch_size", "lr", "min_lr", "warmup_steps", "weight_decay", "betas", "accumulate",
              "clip_grad", "precision", "seed")  # fmt: skip
log = logging.getLogger("finetune_real")


def engine(out: Path, *, epochs: float, batch: int, lr: float, accelerator: str) -> TrainConfig:
    """Fine-tuning engine settings (steps from the epochs)."""
    return TrainConfig(
        out_dir=str(out), steps=0, epochs=epochs, batch_size=batch, lr=lr, warmup_steps=10, clip_grad=0.0,
        accelerator=accelerator, precision="auto", checkpoint_every=1000, log_every=10,
    )  # fmt: skip


def mim_engine(out: Path, args: argparse.Namespace) -> TrainConfig:
    """Pretraining engine settings."""
    return TrainConfig(out_dir=str(out), steps=args.mim_steps, batch_size=32, lr=1.5e-3,
                       warmup_steps=args.mim_steps // 10, accelerator=args.accelerator,
                       checkpoint_every=100, log_every=10)  # fmt: skip


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def train_settings(train: TrainConfig) -> dict[str, Any]:
    """Engine settings as JSON values, without those that do not change results (output folder,
    logging and checkpoint cadence)."""
    data = _jsonable(asdict(train))
    for key in ("out_dir", "log_every", "checkpoint_every"):
        data.pop(key)
    return data


def finetune_settings(cfg: FinetuneConfig) -> dict[str, Any]:
    """A fine-tuning config as JSON values, its engine settings as in :func:`train_settings`."""
    return {**_jsonable(asdict(cfg)), "train": train_settings(cfg.train)}


def pretraining_config(args: argparse.Namespace) -> dict[str, Any]:
    """Everything that determines the pretrained backbone (its cache folder is named by the hash)."""
    return {
        "method": "eva_x_mim", "target": "pixel", "arch": ARCH, "img_size": args.img_size, "mask_ratio": MASK_RATIO,
        "phantoms": {"n": 2000, "seed": 0, "size": args.img_size, "layout": "native"},
        "train": {k: v for k, v in train_settings(mim_engine(Path(), args)).items() if k in MIM_HASHED},
    }  # fmt: skip


def pretrain(work: Path, args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """The phantom-MIM backbone for these settings, trained unless cached; returns its run folder
    and what it records about itself."""
    cfg = pretraining_config(args)
    key = config_hash(cfg)
    phantom = work / f"phantom_{config_hash(cfg['phantoms'])}"
    if not (phantom / "labels.csv").is_file():
        write_phantom_dataset(phantom, **cfg["phantoms"])
    mim_dir = work / f"mim_phantom_{key}"
    if (mim_dir / "export" / "backbone.json").is_file():
        log.info("reusing the backbone pretrained with config %s in %s", key, mim_dir)
    else:
        run_mim("phantom", phantom, arch=ARCH, img_size=args.img_size, mask_ratio=MASK_RATIO,
                train_config=mim_engine(mim_dir, args))  # fmt: skip
        write_result(mim_dir / RECORD, {"config": cfg, "config_hash": key})
    return mim_dir, pretraining_record(mim_dir, key)


def pretraining_record(mim_dir: Path, key: str) -> dict[str, Any]:
    """What a pretrained backbone records about itself: steps, images, target, training seconds and
    resumption from the run's ``summary.json`` (the same facts as its export sidecar), losses from
    its ``metrics.csv``, config and machine from ``bench_record.json`` (None where the folder has
    no such record)."""
    sidecar = json.loads((mim_dir / "summary.json").read_text())
    with open(mim_dir / "metrics.csv") as fh:
        metrics = list(csv.DictReader(fh))
    own = json.loads((mim_dir / RECORD).read_text()) if (mim_dir / RECORD).is_file() else {}
    if own.get("config_hash", key) != key:
        raise SystemExit(f"{mim_dir / RECORD} records config {own['config_hash']}, not the {key} its folder names")
    return {
        "artefact": mim_dir.name, "config_hash": key, "config": own.get("config"), "method": sidecar["method"],
        "target": sidecar["target"], "dataset": sidecar["dataset"], "images": sidecar["images"],
        "mask_ratio": sidecar["mask_ratio"], "steps": sidecar["steps"], "last_logged_step": int(metrics[-1]["step"]),
        "first_loss": float(metrics[0]["loss"]), "last_loss": float(metrics[-1]["loss"]),
        "seconds": sidecar["seconds"], "steps_timed": sidecar["steps_this_call"],
        "resumed_from_checkpoint": sidecar["resumed_from_checkpoint"], "provenance": own.get("provenance"),
        "source": f"{mim_dir.name}: summary.json, metrics.csv, {RECORD if own else 'no ' + RECORD}",
    }  # fmt: skip


def experiments(shared: Path, work: Path, args: argparse.Namespace, fractions: list[float]) -> dict[str, tuple]:
    """Name -> (base fine-tuning config, modes, fractions). Full fine-tuning and the linear probe
    on Kermany, full fine-tuning on JSRT: with three seeds each this fits a 2-core session."""
    return {
        "kermany_pneumonia": (FinetuneConfig(
            dataset="csv", root=str(shared / "kermany_pneumonia_test224"), dataset_options={"split_column": ""},
            img_size=args.img_size, layer_decay=0.55, n_boot=1000, eval_splits=("test",),
            train=engine(work, epochs=4, batch=16, lr=1e-3, accelerator=args.accelerator),
        ), ["full", "linear"], fractions),
        "jsrt_lungs": (FinetuneConfig(
            dataset="csv", root=str(shared / "jsrt_lungs"),
            dataset_options={"mask_columns": ("mask",), "label_columns": ()}, img_size=args.img_size,
            layer_decay=0.85, flip=0.0, n_boot=1000, eval_splits=("test",),
            train=engine(work, epochs=8, batch=8, lr=5e-4, accelerator=args.accelerator),
        ), ["full"], fractions),
        "tbx11k_boxes": (FinetuneConfig(
            dataset="csv", root=str(shared / "tbx11k_tb_boxes"), dataset_options={"boxes_complete": True},
            tasks=["boxes"], img_size=args.img_size, layer_decay=0.85, n_boot=200, eval_splits=("val",),
            train=engine(work, epochs=8, batch=8, lr=2e-4, accelerator=args.accelerator),
        ), ["full"], [1.0]),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=str(REPO.parent / "shared" / "datasets"))
    ap.add_argument("--work", default=str(REPO / "runs" / "bench_real"))
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--mim-steps", type=int, default=300)
    ap.add_argument("--fractions", default="0.1,1")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--baseline", default="random", help="sweep row every other is compared with, paired by seed")
    ap.add_argument("--accelerator", default="auto")
    ap.add_argument("--only", help="comma-separated experiments to run (default all)")
    ap.add_argument("--modes", help="comma-separated modes replacing each experiment's own (e.g. full)")
    ap.add_argument("--out", help="results file (default bench/results/finetune_real_<device>.json)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    shared, work = Path(args.shared), Path(args.work)
    fractions = [float(f) for f in args.fractions.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    t0 = time.perf_counter()
    device = "gpu" if torch.cuda.is_available() and args.accelerator != "cpu" else "cpu"
    out = Path(args.out) if args.out else REPO / "bench" / "results" / f"finetune_real_{device}.json"

    plans = experiments(shared, work, args, fractions)
    only = set(args.only.split(",")) if args.only else set(plans)
    if only - set(plans):
        ap.error(f"unknown experiments {sorted(only - set(plans))}; choose from {sorted(plans)}")
    mim_dir, pretraining = pretrain(work, args)
    backbones = [Backbone("random", ARCH), Backbone("phantom_mim", ARCH, str(mim_dir))]
    results: dict[str, Any] = {}
    for name, (cfg, modes, fracs) in plans.items():
        modes = args.modes.split(",") if args.modes else modes
        part = {
            "experiment": name, "finetune": finetune_settings(cfg), "modes": modes, "fractions": fracs, "seeds": seeds,
            "baseline": args.baseline,
            "backbones": {b.label: [b.arch, pretraining["config_hash"] if b.pretrained else None] for b in backbones},
        }  # fmt: skip
        key = config_hash(part)
        if name not in only:
            old = earlier_part(out, name, key)
            if old is not None:
                results[name] = old
            continue
        started, t1 = time.time(), time.perf_counter()
        table = run_sweep(cfg, backbones=backbones, modes=modes, fractions=fracs, seeds=seeds, out_dir=work / name,
                          baseline=args.baseline, split=cfg.eval_splits[0])  # fmt: skip
        with open(table) as fh:
            rows = list(csv.DictReader(fh))
        folders = [run_folder(work / name, b, m, f, s) for b in backbones for m in modes for f in fracs for s in seeds]
        trained = sum((d / "summary.json").stat().st_mtime >= started for d in folders)
        results[name] = {
            "config_hash": key, "config": part, "rows": rows, "table_markdown": (table.parent / "sweep.md").read_text(),
            "seed_statistics": json.loads((table.parent / "sweep_stats.json").read_text()),
            "runs": len(folders), "runs_reused": len(folders) - trained,
            "wall_seconds": round(time.perf_counter() - t1, 1), "provenance": provenance(),
        }  # fmt: skip
    report = {
        "benchmark": "finetune_real", "arch": ARCH, "img_size": args.img_size, "fractions": fractions, "seeds": seeds,
        "pretraining": pretraining, "experiments": results, "wall_seconds": round(time.perf_counter() - t0, 1),
    }  # fmt: skip
    write_result(out, report)
    for name, res in results.items():
        print(f"## {name}\n\n{res['table_markdown']}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
