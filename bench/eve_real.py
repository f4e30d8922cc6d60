"""Benchmark: Eve's anatomy measures of the backbones ``bench/adam_real.py`` pretrained, on held-out real X-rays.

Issue 15 item 7: ``xrayfm evaluate anatomy`` (:func:`xrayfm.evaluate.anatomy.evaluate_anatomy`, the
function the command calls) for five backbones: random ARCH (ResNet-50 by default), MoCo-v2
(ImageNet-free, stage n = 0 only) and Adam (stages n = 0, 2, 4), both ARCH; random EVA-X Ti and the
EVA-X MIM run (pixel target). Nothing is pretrained here: the three pretrained backbones are
``bench/adam_real.py``'s, found by the same names it gives them (the hash of each pretraining's
settings and of its pool, computed from the same arguments, never globbed); one that has not
finished stops this script with a message.

Test set: JSRT's published test split (51 images, one patient each) through the ``csv`` adapter with
``adam_real``'s options (``mask_columns=("mask",)``, ``label_columns=()``), the split held out of
the pretraining pool (checked against the pool's rows). Images are read at full size; the patches
(a quarter of the shorter side, on 8 landmarks derived from the lung masks, and 2 random patches
per image for compositionality) are resized to IMG_SIZE, the side the backbones were pretrained at.

Reported per backbone: nearest-neighbour landmark retrieval accuracy across patients (overall and
per landmark, with its chance level) and the compositionality medians of the 2 / 3 / 2x2 splits
next to their controls. Paired differences of the locality accuracy (A - B on the same landmark queries,
8 per image) get a 95% percentile interval from a bootstrap over test patients (a patient's queries are
drawn together; the retrieval gallery stays the whole test set). Each init was pretrained once (one
seed): the intervals cover the choice of test patients, not pretraining-run variation.

Outputs: per backbone ``OUT_DIR/<init>/`` (``anatomy.json``, ``locality.png``,
``compositionality.png``; recomputed on every run), and the results file with provenance
(``bench/provenance.py``).

Cost on this project's 2-core CPU machine: about 3 minutes at the defaults on an idle machine. Each
backbone embeds about 1,430 patches (per image 8 landmark patches, and 2 random patches with their
2 + 3 + 4 parts); ResNet-50 at 112 px took 0.6-0.75 s per 32 patches while another benchmark kept the
load average at 3 (so about 30 s a ResNet-50, 7 s an EVA-X Ti), plus reading the 51 full-size images
and the t-SNE per backbone and hashing the pool once. On cores shared with other jobs expect two to
three times as long. The tests' tiny config (resnet18, 32 px) took 25 s under that load.

Usage: python bench/eve_real.py [--shared ../shared/datasets] [--work runs/bench_adam_real] [--arch resnet50]
       [--img-size 112] [--budget 150] [--batch 32] [--queue-size 1024] [--out-dir runs/bench_eve_real]
       [--n-boot 2000] [--seed 0] [--projection tsne] [--device auto] [--out FILE]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import adam_real
import numpy as np
import torch
from provenance import config_hash, start_real_data, write_result
from readme_tables import eve_table

from xrayfm.data.registry import build_dataset
from xrayfm.errors import XrayfmError
from xrayfm.evaluate.anatomy import SPLITS, AnatomySettings, anatomy_embedder, evaluate_anatomy
from xrayfm.evaluate.bootstrap import percentile_interval

REPO = Path(__file__).resolve().parents[1]
TEST_SET = "jsrt_lungs"
#: The paired locality comparisons: (model, baseline), each within one architecture.
COMPARISONS = (("adam", "moco_v2"), ("adam", "random"), ("moco_v2", "random"), ("eva_x_mim", "random_vit"))
log = logging.getLogger("eve_real")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; ``args.pretraining`` is ``adam_real``'s namespace for the same pretraining settings.

    The pretraining arguments default to ``adam_real``'s and are checked by its parser, so the
    folder names computed here are those it wrote.
    """
    adam = adam_real.parse_args([])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=adam.shared)
    ap.add_argument("--work", default=adam.work, help="adam_real's work folder, which holds its pretrainings")
    ap.add_argument("--arch", default=adam.arch, help="backbone of Adam, MoCo-v2 and their random init")
    ap.add_argument("--img-size", type=int, default=adam.img_size, help="pretraining side; patches are resized to it")
    ap.add_argument("--budget", type=int, default=adam.budget, help="adam_real's pretraining steps")
    ap.add_argument("--batch", type=int, default=adam.batch, help="adam_real's pretraining images per step")
    ap.add_argument("--queue-size", type=int, default=adam.queue_size, help="adam_real's MoCo queue length")
    ap.add_argument("--out-dir", default=str(REPO / "runs" / "bench_eve_real"), help="per-backbone results and plots")
    ap.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples of the test patients")
    ap.add_argument("--seed", type=int, default=0, help="seed of random inits, random patches, t-SNE and bootstrap")
    ap.add_argument("--projection", choices=("tsne", "pca"), default="tsne", help="2-D map of the locality plots")
    ap.add_argument("--batch-size", type=int, default=32, help="patches per forward pass")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--out", help="results file (default bench/results/eve_real_<device>.json)")
    args = ap.parse_args(argv)
    if args.n_boot < 1:
        ap.error(f"--n-boot must be positive, got {args.n_boot}")
    args.pretraining = adam_real.parse_args(
        ["--shared", args.shared, "--work", args.work, "--arch", args.arch, "--img-size", str(args.img_size),
         "--budget", str(args.budget), "--batch", str(args.batch), "--queue-size", str(args.queue_size)]
    )  # fmt: skip
    return args


def pretrained_runs(shared: Path, work: Path, pre: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Path]]:
    """``adam_real``'s pool facts and the finished run folder of each pretrained init, by the names it gives them.

    The pool's hash is computed in a temporary folder, so nothing is written to WORK.

    Raises:
        SystemExit: A pretraining has not finished (no ``summary.json``) or is absent.
    """
    held = adam_real.held_out(adam_real.experiments(shared, pre))
    with tempfile.TemporaryDirectory() as tmp:
        _, pool = adam_real.write_pool(shared, Path(tmp), held)
    folders = {init: work / f"{init}_{config_hash(plan)}" for init, plan in adam_real.pretrain_plans(pre, pool).items()}
    missing = [str(f) for f in folders.values() if not (f / "summary.json").is_file()]
    if missing:
        raise SystemExit(f"pretraining not finished (no summary.json) in {', '.join(missing)}: run "
                         "bench/adam_real.py first, with the same --shared --work --arch --img-size --budget --batch "
                         "--queue-size")  # fmt: skip
    return pool, folders


def jsrt_test_split(shared: Path, pre: argparse.Namespace, pool_csv: Path) -> tuple[Any, dict[str, Any]]:
    """JSRT's test split as ``adam_real``'s fine-tuning reads it, and facts about it.

    Raises:
        XrayfmError: A test image is in the pretraining pool.
    """
    cfg = adam_real.experiments(shared, pre)[TEST_SET]["resnet"]
    dataset = build_dataset(cfg.dataset, cfg.root, "test", **cfg.dataset_options)
    with open(pool_csv) as fh:
        pooled = {Path(row["image"]).resolve() for row in csv.DictReader(fh)}
    images = {r.image.resolve() for r in dataset.records}
    if images & pooled:
        raise XrayfmError(f"{len(images & pooled)} {TEST_SET} test images are in the pretraining pool {pool_csv}")
    ids = sorted(str(r.meta["id"]) for r in dataset.records)
    facts = {"dataset": cfg.dataset, "root": cfg.root, "split": "test", "options": cfg.dataset_options,
             "images": len(dataset), "ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
             "held_out_of_pretraining_pool": True}  # fmt: skip
    return dataset, facts


def models(arch: str, folders: dict[str, Path]) -> dict[str, tuple[str, Path | None]]:
    """Model label -> (architecture, pretraining run folder or None for random init), in table order."""
    vit = adam_real.MIM_ARCH
    return {"random": (arch, None), "moco_v2": (arch, folders["moco_v2"]), "adam": (arch, folders["adam"]),
            "random_vit": (vit, None), "eva_x_mim": (vit, folders["eva_x_mim"])}  # fmt: skip


def paired_patient_bootstrap(
    hits_a: Sequence[bool], hits_b: Sequence[bool], patients: Sequence[str], *, n_boot: int, seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:  # fmt: skip
    """Accuracy difference A - B of two models on the same queries, with a percentile interval over patients.

    Each resample draws the patients with replacement and takes both models' queries of the drawn
    patients (a patient's queries are correlated: they share its image); the difference on a
    resample is the mean of A's minus B's hits over those queries.

    Args:
        hits_a: Per query, whether model A's nearest neighbour had the query's landmark.
        hits_b: The same for model B, on the same queries in the same order.
        patients: Patient of each query.
        n_boot: Resamples.
        seed: Seed of the draws.
        alpha: 1 - coverage.

    Returns:
        ``difference``, ``low``, ``high``, ``n_boot`` (resamples), ``patients``, ``queries`` and
        ``excludes_zero``.

    Raises:
        XrayfmError: The three sequences differ in length or are empty.
    """
    a, b = np.asarray(hits_a, dtype=np.float64), np.asarray(hits_b, dtype=np.float64)
    if not (a.shape == b.shape == (len(patients),)) or a.size == 0:
        raise XrayfmError(f"paired bootstrap: {a.size} and {b.size} hits for {len(patients)} queries")
    _, patient = np.unique(np.asarray(patients), return_inverse=True)
    k = int(patient.max()) + 1
    diff_sum = np.bincount(patient, weights=a - b, minlength=k)
    count = np.bincount(patient, minlength=k).astype(np.float64)
    draws = np.random.default_rng(seed).integers(0, k, (n_boot, k))
    weights = np.zeros((n_boot, k))
    np.add.at(weights, (np.arange(n_boot)[:, None], draws), 1.0)
    interval = percentile_interval(float(diff_sum.sum() / count.sum()), (weights @ diff_sum) / (weights @ count), alpha)
    low, high = interval["low"], interval["high"]
    return {"difference": interval["value"], "low": low, "high": high, "n_boot": interval["n_boot"], "patients": k,
            "queries": int(a.size), "excludes_zero": bool(low > 0 or high < 0)}  # fmt: skip


def model_record(result: dict[str, Any], arch: str, folder: Path | None, seconds: float) -> dict[str, Any]:
    """The numbers of one backbone's ``anatomy.json`` that the results file keeps."""
    loc = result["locality"]
    return {
        "arch": arch, "pretrained": None if folder is None else folder.name, "images": result["images"],
        "images_without_landmarks": result["images_without_landmarks"], "embedding_dim": result["embedding_dim"],
        "locality": {"accuracy": loc["accuracy"], "chance": loc["chance"], "queries": loc["queries"],
                     "patients": loc["patients"], "per_landmark": loc["per_landmark"]},
        "compositionality": {split: {k: v for k, v in r.items() if k != "mean"}
                             for split, r in result["compositionality"].items()},
        "seconds": round(seconds, 1),
    }  # fmt: skip


def differences(results: dict[str, dict[str, Any]], n_boot: int, seed: int) -> list[dict[str, Any]]:
    """Paired locality differences of :data:`COMPARISONS`.

    Raises:
        XrayfmError: Two models were scored on different queries (then nothing is paired).
    """
    queries = {label: r["locality"]["per_query"] for label, r in results.items()}
    first = next(iter(queries.values()))
    for label, q in queries.items():
        if (q["patient"], q["landmark"]) != (first["patient"], first["landmark"]):
            raise XrayfmError(f"{label} was scored on other landmark queries than {next(iter(queries))}")
    return [{"model": a, "against": b, **paired_patient_bootstrap(queries[a]["hit"], queries[b]["hit"],
                                                                   first["patient"], n_boot=n_boot, seed=seed)}
            for a, b in COMPARISONS]  # fmt: skip


def main(argv: list[str] | None = None) -> Path:
    """Measure every backbone, write the results file and print its table; returns the file."""
    args = parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    shared, work, out = start_real_data(args, "eve_real", gpu=device != "cpu")
    out_dir = Path(args.out_dir).resolve()
    t0 = time.perf_counter()
    pre = args.pretraining
    pool, folders = pretrained_runs(shared, work, pre)
    dataset, test_set = jsrt_test_split(shared, pre, work / pool["folder"] / "labels.csv")
    plans = adam_real.pretrain_plans(pre, pool)
    pretraining = {init: adam_real.pretraining_record(init, folder, plans[init]) for init, folder in folders.items()}
    settings = AnatomySettings(projection=args.projection, seed=args.seed)

    results, records = {}, {}
    for label, (arch, folder) in models(args.arch, folders).items():
        started = time.perf_counter()
        torch.manual_seed(args.seed)  # a random initialisation is the same on every run (as the CLI does)
        embed, _ = anatomy_embedder(arch, "none" if folder is None else folder, img_size=args.img_size,
                                    device=device, batch_size=args.batch_size)  # fmt: skip
        name = f"{label} ({arch}, {'random init' if folder is None else folder.name})"
        results[label] = evaluate_anatomy(embed, dataset, out_dir / label, settings=settings, model_name=name)
        records[label] = model_record(results[label], arch, folder, time.perf_counter() - started)
        log.info("%s: locality %.3f (chance %.3f) in %.0f s", label, records[label]["locality"]["accuracy"],
                 records[label]["locality"]["chance"], records[label]["seconds"])  # fmt: skip
    test_set["patients"] = records["random"]["locality"]["patients"]
    report = {
        "benchmark": "eve_real", "arch": args.arch, "vit_arch": adam_real.MIM_ARCH, "img_size": args.img_size,
        "test_set": test_set, "settings": {**asdict(settings), "n_boot": args.n_boot, "splits": list(SPLITS)},
        "pool": pool, "pretraining": pretraining, "pretraining_seeds": 1,
        "config_hash": config_hash({"pretraining": {k: p["config_hash"] for k, p in pretraining.items()},
                                    "settings": asdict(settings), "img_size": args.img_size, "arch": args.arch}),
        "models": records, "comparisons": COMPARISONS, "differences": differences(results, args.n_boot, args.seed),
        "notes": [
            "Each init was pretrained once (one seed): the intervals cover the choice of test patients, not the "
            "variation between pretraining runs.",
            "Intervals resample test patients (all landmark queries of a patient together); the retrieval gallery "
            "is the whole test set on every resample.",
        ],
        "work": {"pretraining": str(work), "anatomy": str(out_dir)},
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }  # fmt: skip
    write_result(out, report)
    print(eve_table(json.loads(out.read_text()), str(out)))
    print(f"wrote {out}; per-model anatomy.json and plots in {out_dir}")
    return out


if __name__ == "__main__":
    main()
