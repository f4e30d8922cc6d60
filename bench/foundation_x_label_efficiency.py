"""Benchmark: JSRT lung segmentation fine-tuned on 1%, 10% and 100% of its training images, from a Foundation X
multi-task backbone against single-task training from the same starting weights.

The question of the Foundation X paper's segmentation and few-shot tables (Result_FoundationX_Seg_OtherDatasets
and Result_FoundationX_FewShot, summarised in ../shared/reference/foundation-x.md): does a backbone trained by
multi-task learning on other sets fine-tune better on a new set, most of all with few labels?

1. **Multi-task backbone**: one ``run_multitask`` run (the engine of ``xrayfm pretrain multitask``) of the shipped
   recipe ``foundation_x_shared`` with the JSRT dataset and its units removed, so JSRT stays a downstream set
   that pretraining never saw (as JSRT is for Foundation X): NIH findings and lesion boxes, Kermany pneumonia,
   TBX11K type and boxes, COVID lung masks; 3 cycles, locks, EMA teacher, consistency 0.5 as shipped; ARCH at
   IMG px, BATCH images a step, seed ``--pretrain-seed``, from random init or ``--pretrained``. Its backbone
   export (``RUN/export``: the student's backbone, which the teacher follows by EMA) is the pretrained backbone.
   Settings and caching as in ``bench/foundation_x_real.py`` (whose ``train_run`` it uses).
2. **Fine-tuning** with ``xrayfm.finetune.sweep`` (what ``xrayfm sweep`` runs): JSRT lungs (csv adapter, its
   published split) at each fraction of the training patients (``label_efficiency``: seeded subsets, at least
   one image) and each seed, full fine-tuning of (a) ``multitask``: that backbone, (b) ``single_task``: the
   starting weights of the multi-task run (random init, or ``--pretrained``), i.e. the segmentation task trained
   alone. Both: the same decoder (the default UperNet), the same steps (``--steps`` at every fraction, so each
   row gets the same number of updates however few its images), lr 5e-4 with layer decay 0.85 and no flip
   (``bench/finetune_real.py``'s JSRT settings), the same test view (whole image, bicubic: the multi-task
   export's record; timm's resnet default would centre-crop the single-task arm to 95% and its reference masks
   would differ), scored on the JSRT test split: mean Dice with its 95% bootstrap
   interval; per fraction the paired difference multitask - single_task on the same test images per seed, and
   its mean over the seeds with an interval resampling images and seeds (the sweep's statistics).

The results file (``bench/results/foundation_x_label_efficiency_<device>.json``) records the pretraining run
(its folder, units, steps per unit from ``phases.csv``, seconds), the sweep rows, the seed statistics and the
Markdown table, and provenance (``bench/provenance.py``).

``--quick``: a smoke run whose numbers mean nothing (resnet18 at 96 px, batch 2, 1 step per pretraining unit, 2
fine-tuning steps, fractions 0.1 and 1, one seed, 20 bootstrap resamples); it writes only to an explicit ``--out``.

Usage: python bench/foundation_x_label_efficiency.py [--shared ../shared/datasets] [--work DIR] [--arch resnet18]
       [--img-size 128] [--batch 16] [--pretrain-seed 0] [--pretrained W] [--fractions 0.01,0.1,1] [--seeds 0,1,2]
       [--steps 150] [--ft-batch 8] [--n-boot 1000] [--accelerator auto] [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from foundation_x_real import RECIPE, multitask_mapping, steps_per_unit, train_run
from provenance import start_real_data, write_result

from xrayfm.finetune.run import FinetuneConfig
from xrayfm.finetune.sweep import Backbone, run_sweep
from xrayfm.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]
#: The downstream set: the recipe dataset removed from pretraining, and its folder under --shared.
HELD_OUT, HELD_OUT_ROOT = "jsrt", "jsrt_lungs"
log = logging.getLogger("foundation_x_label_efficiency")


def without_dataset(mapping: dict[str, Any], dataset: str) -> dict[str, Any]:
    """``mapping`` with ``dataset`` and every cycle unit of it removed."""
    out = copy.deepcopy(mapping)
    del out["datasets"][dataset]
    out["cycle"] = [u for u in out["cycle"] if u["dataset"] != dataset]
    return out


def finetune_config(args: argparse.Namespace, work: Path) -> FinetuneConfig:
    """JSRT lungs, full fine-tuning, the same steps at every fraction, scored on its test split."""
    train = TrainConfig(out_dir=str(work), steps=args.steps, batch_size=args.ft_batch, lr=5e-4,
                        warmup_steps=min(10, args.steps // 10), clip_grad=0.0, accelerator=args.accelerator,
                        checkpoint_every=1000, log_every=25)  # fmt: skip
    return FinetuneConfig(
        dataset="csv", root=str(Path(args.shared).resolve() / HELD_OUT_ROOT),
        dataset_options={"mask_columns": ("mask",), "label_columns": ()}, img_size=args.img_size, layer_decay=0.85,
        flip=0.0, crop_pct=1.0, interpolation="bicubic", n_boot=args.n_boot, eval_splits=("test",), train=train,
    )  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; ``--quick`` replaces the size settings by the smoke run's."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=str(REPO.parent / "shared" / "datasets"))
    ap.add_argument("--work", default=str(REPO / "runs" / "bench_foundation_x_label_efficiency"))
    ap.add_argument("--arch", default="resnet18", help="backbone of every run")
    ap.add_argument("--pretrained", help="weights both arms start from (default random init)")
    ap.add_argument("--img-size", type=int, default=128, help="input side (at least 96: DETR)")
    ap.add_argument("--batch", type=int, default=16, help="images per multi-task optimiser step")
    ap.add_argument("--pretrain-seed", type=int, default=0, help="seed of the multi-task run")
    ap.add_argument("--fractions", default="0.01,0.1,1", help="shares of JSRT's training patients")
    ap.add_argument("--seeds", default="0,1,2", help="fine-tuning seeds (subset, head init, data order)")
    ap.add_argument("--steps", type=int, default=150, help="fine-tuning steps at every fraction")
    ap.add_argument("--ft-batch", type=int, default=8, help="fine-tuning batch size")
    ap.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the test images")
    ap.add_argument("--accelerator", default="auto")
    ap.add_argument("--quick", action="store_true", help="smoke run: numbers mean nothing (see above)")
    ap.add_argument("--out", help="results file (default bench/results/foundation_x_label_efficiency_<device>.json)")
    args = ap.parse_args(argv)
    args.quick_steps = 1  # foundation_x_real.multitask_mapping's --quick unit length
    if args.quick:
        if not args.out:
            ap.error("--quick writes only to an explicit --out")
        args.arch, args.img_size, args.batch, args.steps, args.ft_batch = "resnet18", 96, 2, 2, 2
        args.fractions, args.seeds, args.n_boot = "0.1,1", args.seeds.split(",")[0], 20
    if args.img_size < 96:
        ap.error(f"--img-size must be at least 96 (the Deformable DETR's coarsest level), got {args.img_size}")
    return args


def main(argv: list[str] | None = None) -> Path:
    """Pretrain (or reuse) the multi-task backbone, run the sweep, write the results file."""
    args = parse_args(argv)
    gpu = torch.cuda.is_available() and args.accelerator != "cpu"
    _, work, out = start_real_data(args, "foundation_x_label_efficiency", gpu=gpu)
    t0 = time.perf_counter()
    mapping = without_dataset(multitask_mapping(args), HELD_OUT)
    mt = train_run(f"mt_without_{HELD_OUT}", mapping, work, args, args.pretrain_seed)
    fractions = [float(f) for f in args.fractions.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    backbones = [Backbone("single_task", args.arch, args.pretrained), Backbone("multitask", args.arch, str(mt))]
    cfg = finetune_config(args, work / "sweep")
    table = run_sweep(cfg, backbones=backbones, modes=["full"], fractions=fractions, seeds=seeds,
                      out_dir=work / "sweep", baseline="single_task", split="test")  # fmt: skip
    with open(table) as fh:
        rows = list(csv.DictReader(fh))
    summary = json.loads((mt / "summary.json").read_text())
    payload = {
        "benchmark": "foundation_x_label_efficiency", "quick": args.quick, "recipe": str(RECIPE.relative_to(REPO)),
        "held_out": HELD_OUT, "arch": args.arch, "pretrained": args.pretrained, "img_size": args.img_size,
        "pretraining": {"run": mt.name, "seed": args.pretrain_seed, "batch_size": args.batch,
                        "units": [f"{u['dataset']}/{u['task']}" for u in mapping["cycle"]],
                        "cycles": mapping["cycles"], "steps_per_unit": steps_per_unit(mt),
                        "seconds": summary.get("seconds")},
        "finetune": {"task": "lungs", "split": "test", "steps": args.steps, "batch_size": args.ft_batch, "lr": 5e-4,
                     "layer_decay": 0.85, "fractions": fractions, "seeds": seeds, "n_boot": args.n_boot,
                     "baseline": "single_task"},
        "rows": rows, "seed_statistics": json.loads((table.parent / "sweep_stats.json").read_text()),
        "table_markdown": (table.parent / "sweep.md").read_text(), "wall_seconds": round(time.perf_counter() - t0, 1),
    }  # fmt: skip
    write_result(out, payload)
    log.info("results: %s", out)
    return out


if __name__ == "__main__":
    main()
