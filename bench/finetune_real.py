"""Benchmark: adapting EVA-X Ti/16 to the real X-ray sets in ../shared/datasets.

Two backbones — randomly initialised, and pretrained by xrayfm's own MIM (pixel target) on
synthetic phantoms — are adapted with full fine-tuning, linear probing and LoRA, on all and on
10% of the training patients, for:

- pneumonia vs normal classification (Kermany test set, 624 real images, patient-hash split);
- lung segmentation (JSRT, 247 real images, its published split);
- TB lesion box localization (TBX11K sample, 200 real images; full fine-tuning on all training
  images, scored on its validation split, as it has no test split here).

Every number comes from ``xrayfm.finetune.sweep`` (test split, 95% bootstrap CIs) and is
written with the machine description to ``bench/results/finetune_real_<device>.json`` plus the
sweep tables. This is a small-compute benchmark (128 px, a few epochs on 2 CPU cores): it shows
the pipeline on real data and the relative behaviour of the modes, not the paper's numbers.

Usage: python bench/finetune_real.py [--shared ../shared/datasets] [--work runs/bench_real]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import time
from pathlib import Path

import torch

from xrayfm.data.phantom_io import write_phantom_dataset
from xrayfm.finetune.run import FinetuneConfig
from xrayfm.finetune.sweep import Backbone, run_sweep
from xrayfm.pretrain.engine import TrainConfig
from xrayfm.pretrain.mim_run import run_mim

REPO = Path(__file__).resolve().parents[1]
ARCH = "eva_x_tiny_patch16"


def machine() -> dict[str, object]:
    """What the numbers were measured on."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    return {
        "cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "python": platform.python_version(),
    }  # fmt: skip


def engine(out: Path, *, batch: int, lr: float, accelerator: str) -> TrainConfig:
    return TrainConfig(
        out_dir=str(out), steps=0, batch_size=batch, lr=lr, warmup_steps=10, clip_grad=0.0, accelerator=accelerator,
        precision="auto", checkpoint_every=1000, log_every=10,
    )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=str(REPO.parent / "shared" / "datasets"))
    ap.add_argument("--work", default=str(REPO / "runs" / "bench_real"))
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--mim-steps", type=int, default=300)
    ap.add_argument("--fractions", default="0.1,1")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--accelerator", default="auto")
    ap.add_argument("--only", help="comma-separated experiments to run (default all)")
    args = ap.parse_args()
    shared, work = Path(args.shared), Path(args.work)
    fractions = [float(f) for f in args.fractions.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    t0 = time.perf_counter()

    phantom = work / "phantom"
    if not (phantom / "labels.csv").is_file():
        write_phantom_dataset(phantom, n=2000, seed=0, size=args.img_size)
    mim_dir = work / "mim_phantom"
    if not (mim_dir / "export" / "backbone.json").is_file():
        mim_cfg = TrainConfig(out_dir=str(mim_dir), steps=args.mim_steps, batch_size=32, lr=1.5e-3,
                              warmup_steps=args.mim_steps // 10, accelerator=args.accelerator,
                              checkpoint_every=100, log_every=10)  # fmt: skip
        run_mim("phantom", phantom, arch=ARCH, img_size=args.img_size, train_config=mim_cfg)
    mim_rows = (mim_dir / "metrics.csv").read_text().splitlines()
    t_mim = time.perf_counter() - t0
    backbones = [Backbone("random", ARCH), Backbone("phantom_mim", ARCH, str(mim_dir))]

    experiments = {
        "kermany_pneumonia": FinetuneConfig(
            dataset="csv", root=str(shared / "kermany_pneumonia_test224"), dataset_options={"split_column": ""},
            img_size=args.img_size, epochs=4, layer_decay=0.55, n_boot=1000, eval_splits=("test",),
            train=engine(work, batch=16, lr=1e-3, accelerator=args.accelerator),
        ),
        "jsrt_lungs": FinetuneConfig(
            dataset="csv", root=str(shared / "jsrt_lungs"),
            dataset_options={"mask_columns": ("mask",), "label_columns": ()}, img_size=args.img_size, epochs=8,
            layer_decay=0.85, flip=0.0, n_boot=1000, eval_splits=("test",),
            train=engine(work, batch=8, lr=5e-4, accelerator=args.accelerator),
        ),
        "tbx11k_boxes": FinetuneConfig(
            dataset="csv", root=str(shared / "tbx11k_tb_boxes"), dataset_options={"boxes_complete": True},
            tasks=["boxes"], img_size=args.img_size, epochs=8, layer_decay=0.85, n_boot=200, eval_splits=("val",),
            train=engine(work, batch=8, lr=2e-4, accelerator=args.accelerator),
        ),
    }  # fmt: skip
    plans = {"tbx11k_boxes": (["full"], [1.0])}
    only = set(args.only.split(",")) if args.only else set(experiments)
    results: dict[str, object] = {}
    for name, cfg in experiments.items():
        if name not in only:
            continue
        t1 = time.perf_counter()
        modes, fracs = plans.get(name, (["full", "linear", "lora"], fractions))
        table = run_sweep(cfg, backbones=backbones, modes=modes, fractions=fracs, seeds=seeds,
                          out_dir=work / name)  # fmt: skip
        with open(table) as fh:
            rows = list(csv.DictReader(fh))
        results[name] = {"rows": rows, "table_markdown": (table.parent / "sweep.md").read_text(),
                         "seconds": round(time.perf_counter() - t1, 1)}  # fmt: skip
    device = "gpu" if torch.cuda.is_available() and args.accelerator != "cpu" else "cpu"
    report = {
        "benchmark": "finetune_real", "machine": machine(), "arch": ARCH, "img_size": args.img_size,
        "fractions": fractions, "seeds": seeds,
        "pretraining": {"data": "2000 phantoms", "steps": args.mim_steps, "target": "pixel",
                        "first_loss": mim_rows[1].split(",")[1], "last_loss": mim_rows[-1].split(",")[1],
                        "seconds": round(t_mim, 1)},
        "experiments": results, "total_seconds": round(time.perf_counter() - t0, 1),
    }  # fmt: skip
    out = REPO / "bench" / "results" / f"finetune_real_{device}.json"
    if out.is_file():  # keep experiments measured by an earlier invocation (--only)
        earlier = json.loads(out.read_text()).get("experiments", {})
        report["experiments"] = {**{k: v for k, v in earlier.items() if k not in results}, **results}
    out.write_text(json.dumps(report, indent=2))
    for name, res in results.items():
        print(f"## {name}\n\n{res['table_markdown']}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
