"""Benchmark: Foundation X multi-task training against single-task training of the same backbone, on real X-rays.

Data: the shipped recipe ``foundation_x_shared`` (src/xrayfm/configs/foundation_x_shared.yaml) on
../shared/datasets: NIH sample (findings, lesion boxes), TBX11K (TB type, boxes), JSRT (nodule,
lung masks), COVID v7labs (lung masks), Kermany (pneumonia); eight (dataset, task) units. Every
run trains on each set's ``train`` split only.

Per seed (0, 1, 2 by default):

1. **Multi-task**: one ``run_multitask`` run of the recipe as shipped (its cycle, 3 cycles, locks,
   EMA teacher, consistency 0.5), AdamW lr 1e-4 with the backbone at 0.1 x, weight decay 1e-4, no
   warmup or clipping (``xrayfm pretrain multitask``'s defaults), ARCH at IMG px, BATCH images per step.
2. **Single-task**, one run per unit: the same engine (``run_multitask``: same backbone, same head
   and loss, same augmentation, optimiser and parameter groups) on a recipe of that unit alone,
   derived from the shipped one: one dataset with that one task, one cycle of one unit of
   ``steps: S_u``, no lock and consistency weight 0 (plain supervised training: a lock only shields
   a shared backbone from a new head, and a consistency term towards a teacher that has had one EMA
   update would pull the student back to its random init). The seed is the multi-task run's, so
   the backbone starts from the same weights (the engine seeds before it builds the backbone).
3. **Scoring**: each unit's head is evaluated with ``xrayfm evaluate RUN csv ROOT --head
   DATASET/TASK`` on the set's ``test`` split, or its ``val`` split where it has no test images
   (TBX11K: its official split has none); the multi-task run with its EMA teacher (what ``xrayfm
   serve`` answers with) and with its student, the single-task run with its student (its teacher
   had a single EMA update). Headline metric: mean AUROC (classification), mAP@0.5 (detection),
   mean Dice (segmentation), each with its 95% bootstrap interval. Paired differences on the same
   images, per seed, with the statistics of ``xrayfm compare``
   (:func:`~xrayfm.evaluate.compare.compare_predictions` on the saved predictions of the two
   evaluations): multi-task student - single-task and multi-task teacher - single-task; their mean
   and sd over the seeds, and (``pooled``) their mean over the seeds with a 95% interval resampling
   the images and the seeds, as ``xrayfm sweep`` pools seeds.

**Budget ("same budget")**: a single-task run gets as many optimiser steps on its unit as the
multi-task run of the same seed spent on that unit (its locked and released phases over all
cycles, read from the run's ``phases.csv``), each of BATCH images of that unit: the same number
of that task's images seen and the same number of updates from its labels. The multi-task run
spends in addition the steps of the other seven units; those are what multi-task training adds,
and the question is whether they help the unit. The other definition, the same total steps as
the multi-task run, would give each single-task run about eight times its task's data in passes;
it is not run, but both counts are recorded per unit (``single_task_steps`` and
``multitask_total_steps``), with the images seen.

Caches under WORK (default runs/bench_foundation_x_real): each run in ``WORK/<mt|st_DATASET_TASK>
_s<seed>_<hash of its recipe and settings>``, reused when its ``summary.json`` exists (an
interrupted run resumes from its ``last.ckpt``); each evaluation in ``RUN/eval/<head>_<weights>_
<split>_<hash>``, reused when its ``metrics.json`` exists. The results file records per unit the
split, images, budget, each model's headline with its interval per seed, the paired differences,
every run's folder, and provenance (``bench/provenance.py``).

``--quick``: a smoke run whose numbers mean nothing (1 seed, resnet18 at 96 px, the smallest side
at which the Deformable DETR's stride-64 level keeps more than one cell, batch 2, 1 step per unit,
20 bootstrap resamples, fixed 0.5 thresholds); it writes only to an explicit ``--out``. It takes one to
two minutes on this project's 2-core CPU machine (24 evaluations of 51-140 images take most of it).

Cost of the defaults (resnet50, 128 px, batch 16) on that machine: a multi-task run is 123 steps a
cycle (units of one epoch of their annotated train images, locks of half), 369 for the three
cycles, and its single-task runs as many again: 738 steps a seed. A micro-run of 2 steps a unit
(20 steps, every unit and phase) measured 18-23 s a step, about the same for every unit kind, while
other jobs kept the load average at 7 (about 10 s of CPU time a step, so roughly 5 s a step on an
idle machine); an evaluation took 34-43 s (predictions of the test split and of val for the
thresholds). Three seeds: 3 x (738 x 20 s + 24 x 40 s), about 13 hours on the shared machine,
roughly 3.5 to 4 hours idle. ``--arch resnet18`` or fewer seeds cut it proportionally; on a GPU
it is minutes.

Usage: python bench/foundation_x_real.py [--shared ../shared/datasets] [--work runs/bench_foundation_x_real]
       [--arch resnet50] [--img-size 128] [--batch 16] [--seeds 0,1,2] [--n-boot 1000] [--threshold youden]
       [--accelerator auto] [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from provenance import config_hash, start_real_data, write_result

from xrayfm.cli import main as xrayfm
from xrayfm.data.registry import build_dataset
from xrayfm.errors import XrayfmError
from xrayfm.evaluate.compare import compare_predictions, evaluation_differences
from xrayfm.evaluate.paired import seed_mean_difference
from xrayfm.evaluate.run import load_evaluation
from xrayfm.pretrain.multitask_recipe import parse_recipe
from xrayfm.pretrain.multitask_run import PHASES, read_run_recipe, recipe_mapping, run_multitask
from xrayfm.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "src" / "xrayfm" / "configs" / "foundation_x_shared.yaml"
#: The headline metric of each task kind (the name of its interval in an evaluation's ``cis``).
HEADLINE = {"multilabel": "mean_auroc", "multiclass": "mean_auroc", "detection": "map_50", "segmentation": "mean_dice"}
#: The paired comparisons: (name, weights of the multi-task run); the single-task run is scored with its student.
COMPARISONS = (("student_minus_single", "student"), ("teacher_minus_single", "teacher"))
log = logging.getLogger("foundation_x_real")


def engine(out: Path, args: argparse.Namespace, seed: int) -> TrainConfig:
    """``xrayfm pretrain multitask``'s engine defaults (AdamW, lr 1e-4, weight decay 1e-4, no warmup or clipping)."""
    return TrainConfig(out_dir=str(out), steps=0, batch_size=args.batch, lr=1e-4, weight_decay=1e-4, warmup_steps=0,
                       clip_grad=0.0, accelerator=args.accelerator, seed=seed, checkpoint_every=200,
                       log_every=10)  # fmt: skip


def multitask_mapping(args: argparse.Namespace) -> dict[str, Any]:
    """The shipped recipe with roots under ``--shared``; with ``--quick`` each unit is ``--quick-steps`` long, once."""
    mapping = recipe_mapping(read_run_recipe(RECIPE), Path(args.shared).resolve())
    if args.quick:
        for unit in mapping["cycle"]:
            unit.pop("epochs", None)
            unit["steps"] = args.quick_steps
        mapping["cycles"] = 1
    return mapping


def single_task_mapping(mapping: dict[str, Any], key: str, steps: int) -> dict[str, Any]:
    """One unit of ``mapping`` alone: its dataset with that task only, ``steps`` steps, no lock, no consistency."""
    dataset, task = key.split("/")
    entry = copy.deepcopy(mapping["datasets"][dataset])
    entry["tasks"] = {task: entry["tasks"][task]}
    return {**copy.deepcopy(mapping), "datasets": {dataset: entry}, "cycles": 1, "consistency_weight": 0.0,
            "cycle": [{"dataset": dataset, "task": task, "steps": steps, "lock_fraction": 0.0}]}  # fmt: skip


def train_run(name: str, mapping: dict[str, Any], work: Path, args: argparse.Namespace, seed: int) -> Path:
    """The run folder of ``mapping`` at ``seed``, trained (or resumed) unless it finished earlier."""
    settings = {"recipe": mapping, "arch": args.arch, "img_size": args.img_size, "batch": args.batch, "seed": seed}
    if args.pretrained:  # folders of runs from random init keep their names
        settings["pretrained"] = args.pretrained
    folder = work / f"{name}_s{seed}_{config_hash(settings)}"
    if (folder / "summary.json").is_file():
        log.info("reusing %s", folder)
        return folder
    started = time.perf_counter()
    run_multitask(parse_recipe(mapping, source=name), folder, engine(folder, args, seed), arch=args.arch,
                  img_size=args.img_size, pretrained=args.pretrained)  # fmt: skip
    (folder / "last.ckpt").unlink(missing_ok=True)  # model/ keeps both weight sets; the optimiser state is not needed
    log.info("%s trained in %.0f s", folder.name, time.perf_counter() - started)
    return folder


def steps_per_unit(run: Path) -> dict[str, int]:
    """Optimiser steps the run spent on each unit (locked and released phases, every cycle), from ``phases.csv``."""
    steps: dict[str, int] = {}
    with open(run / PHASES) as fh:
        for row in csv.DictReader(fh):
            steps[row["unit"]] = steps.get(row["unit"], 0) + int(row["last_step"]) - int(row["first_step"]) + 1
    return steps


def eval_split(entry: dict[str, Any]) -> str:
    """``test``, or ``val`` where the set has no test images."""
    try:
        return "test" if len(build_dataset(entry["adapter"], entry["root"], "test", **entry["options"])) else "val"
    except XrayfmError:
        return "val"


def evaluate(run: Path, key: str, entry: dict[str, Any], split: str, weights: str, args: argparse.Namespace) -> Path:
    """``xrayfm evaluate RUN csv ROOT --head KEY --weights W`` into ``RUN/eval/...`` (reused when done)."""
    options = [f"{k}={v!r}" for k, v in entry["options"].items()]
    setting = {"options": options, "n_boot": args.n_boot, "threshold": args.threshold}
    out = run / "eval" / f"{key.replace('/', '_')}_{weights}_{split}_{config_hash(setting)}"
    if (out / "metrics.json").is_file():
        return out
    argv = ["evaluate", str(run), entry["adapter"], entry["root"], "--split", split, "--head", key, "--weights",
            weights, "--n-boot", str(args.n_boot), "--threshold", args.threshold, "--out", str(out)]  # fmt: skip
    for option in options:
        argv += ["-o", option]
    if xrayfm(argv) != 0:
        raise XrayfmError(f"xrayfm {' '.join(argv)} failed (see above)")
    return out


def headline(folder: Path, kind: str) -> dict[str, Any]:
    """The headline metric of an evaluation with its interval, and the images it was scored on."""
    result = json.loads((folder / "metrics.json").read_text())
    (task,) = result["tasks"].values()
    return {**task["cis"][HEADLINE[kind]], "n": result["n"], "folder": str(folder)}


def paired(a: Path, b: Path, kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """B - A of the headline metric on the same images (``xrayfm compare``'s paired bootstrap, saved predictions)."""
    tasks_a, pred_a, thr_a = load_evaluation(a)
    _, pred_b, thr_b = load_evaluation(b)
    result = compare_predictions(tasks_a, pred_a, pred_b, thresholds_a=thr_a, thresholds_b=thr_b, n_boot=args.n_boot,
                                 seed=0)  # fmt: skip
    (task,) = result["tasks"].values()
    d = task["differences"][HEADLINE[kind]]
    return {**d, "n": result["n"], "excludes_zero": None if d["low"] is None else bool(d["low"] > 0 or d["high"] < 0)}


def _summary(values: list[float | None]) -> dict[str, Any]:
    kept = [v for v in values if v is not None]
    return {"mean": statistics.fmean(kept) if kept else None,
            "sd": statistics.stdev(kept) if len(kept) > 1 else None, "n_seeds": len(kept)}  # fmt: skip


def run_seed(seed: int, mapping: dict[str, Any], work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One seed: the multi-task run, a single-task run per unit, their evaluations and paired differences."""
    t0 = time.perf_counter()
    mt = train_run("mt", mapping, work, args, seed)
    spent = steps_per_unit(mt)
    total = sum(spent.values())
    units: dict[str, Any] = {}
    for key, steps in spent.items():
        dataset, task = key.split("/")
        entry = mapping["datasets"][dataset]
        kind = entry["tasks"][task]["kind"]
        st = train_run(f"st_{dataset}_{task}", single_task_mapping(mapping, key, steps), work, args, seed)
        st_steps = sum(steps_per_unit(st).values())
        split = eval_split(entry)
        evals = {w: evaluate(mt, key, entry, split, w, args) for w in ("teacher", "student")}
        evals["single"] = evaluate(st, key, entry, split, "student", args)
        units[key] = {
            "kind": kind, "metric": HEADLINE[kind], "split": split,
            "budget": {"multitask_unit_steps": steps, "single_task_steps": st_steps, "multitask_total_steps": total,
                       "batch_size": args.batch, "images_seen": st_steps * args.batch},
            "multitask_teacher": headline(evals["teacher"], kind),
            "multitask_student": headline(evals["student"], kind), "single_task": headline(evals["single"], kind),
            "differences": {name: paired(evals["single"], evals[w], kind, args) for name, w in COMPARISONS},
            "single_task_run": st.name,
        }  # fmt: skip
    return {"multitask_run": mt.name, "units": units, "wall_seconds": round(time.perf_counter() - t0, 1)}


def pooled_difference(pairs: list[tuple[Path, Path]], kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """Mean over the seeds of B - A (one pair of evaluations per seed) with a 95% interval that resamples the
    images and the seeds, as ``xrayfm sweep`` pools seeds (:func:`~xrayfm.evaluate.paired.seed_mean_difference`)."""
    diffs = []
    for a, b in pairs:
        evaluation_a = load_evaluation(a)
        (task,) = evaluation_a[0]  # an evaluation of one head
        diffs.append(evaluation_differences(evaluation_a, load_evaluation(b), {task.name: [HEADLINE[kind]]},
                                            n_boot=args.n_boot, seed=0)[task.name, HEADLINE[kind]])  # fmt: skip
    result = seed_mean_difference(diffs)
    low, high = result["low"], result["high"]
    return {**result, "excludes_zero": None if low is None else bool(low > 0 or high < 0)}


def aggregate(seeds: dict[str, dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Per unit, over the seeds: mean and sd of each model's headline and of each paired difference, and the
    difference pooled over the seeds with its interval over images and seeds."""
    first = next(iter(seeds.values()))["units"]
    out = {}
    for key, unit in first.items():
        per = [s["units"][key] for s in seeds.values()]
        out[key] = {
            "kind": unit["kind"], "metric": unit["metric"], "split": unit["split"], "n": unit["single_task"]["n"],
            **{m: _summary([u[m]["value"] for u in per]) for m in ("multitask_teacher", "multitask_student",
                                                                    "single_task")},
            **{name: {**_summary([u["differences"][name]["difference"] for u in per]),
                      "seeds_excluding_zero": sum(bool(u["differences"][name]["excludes_zero"]) for u in per),
                      "pooled": pooled_difference([(Path(u["single_task"]["folder"]),
                                                    Path(u[f"multitask_{w}"]["folder"])) for u in per],
                                                   unit["kind"], args)}
               for name, w in COMPARISONS},
        }  # fmt: skip
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; ``--quick`` replaces the size settings by the smoke run's."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=str(REPO.parent / "shared" / "datasets"))
    ap.add_argument("--work", default=str(REPO / "runs" / "bench_foundation_x_real"))
    ap.add_argument("--arch", default="resnet50", help="backbone of every run")
    ap.add_argument(
        "--pretrained",
        help="backbone weights both arms start from (e.g. an Adam run of "
        "bench/adam_real.py, as the paper starts from Ark-6); default random init",
    )
    ap.add_argument("--img-size", type=int, default=128, help="input side of every run (at least 96: DETR)")
    ap.add_argument("--batch", type=int, default=16, help="images per optimiser step")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the scored images")
    ap.add_argument("--threshold", default="youden", help="xrayfm evaluate --threshold (headlines do not use it)")
    ap.add_argument("--accelerator", default="auto")
    ap.add_argument("--quick", action="store_true", help="smoke run: numbers mean nothing (see above)")
    ap.add_argument("--quick-steps", type=int, default=1, help="--quick: steps per unit")
    ap.add_argument("--out", help="results file (default bench/results/foundation_x_real_<device>.json)")
    args = ap.parse_args(argv)
    if args.quick:
        if not args.out:
            ap.error("--quick writes only to an explicit --out")
        args.arch, args.img_size, args.batch, args.seeds, args.n_boot, args.threshold = (
            "resnet18", 96, 2, args.seeds.split(",")[0], 20, "0.5")  # fmt: skip
    if args.img_size < 96:
        ap.error(f"--img-size must be at least 96 (the Deformable DETR's coarsest level), got {args.img_size}")
    return args


def main(argv: list[str] | None = None) -> Path:
    """Run the benchmark (reusing finished runs and evaluations) and write the results file."""
    args = parse_args(argv)
    gpu = torch.cuda.is_available() and args.accelerator != "cpu"
    _, work, out = start_real_data(args, "foundation_x_real", gpu=gpu)
    mapping = multitask_mapping(args)
    t0 = time.perf_counter()
    seeds = {f"seed_{s}": run_seed(int(s), mapping, work, args) for s in args.seeds.split(",")}
    payload = {
        "benchmark": "foundation_x_real", "quick": args.quick, "recipe": str(RECIPE.relative_to(REPO)),
        "arch": args.arch, "pretrained": args.pretrained, "img_size": args.img_size, "batch_size": args.batch,
        "n_boot": args.n_boot,
        "threshold": args.threshold, "budget_definition": "single-task steps = multi-task steps on that unit",
        "units": aggregate(seeds, args), "seeds": seeds, "wall_seconds": round(time.perf_counter() - t0, 1),
    }  # fmt: skip
    write_result(out, payload)
    log.info("results: %s", out)
    return out


if __name__ == "__main__":
    main()
