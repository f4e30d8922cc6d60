"""``xrayfm compare``: two fine-tuned models on the same images, metric by metric, with paired statistics."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from xrayfm.cli.args import add_data_args, add_threshold_arg
from xrayfm.cli.recipes import parse_options
from xrayfm.cli.scored_models import add_head_args
from xrayfm.tasks import CLASSIFICATION_KINDS

#: Rows of the printed table per task kind; AUROC per class follows the classification rows.
TABLE_METRICS = {
    "multilabel": ("mean_auroc", "accuracy", "mean_sensitivity", "mean_specificity"),
    "multiclass": ("mean_auroc", "accuracy", "mean_sensitivity", "mean_specificity"),
    "segmentation": ("mean_dice", "mean_jaccard"),
    "detection": ("map", "map_50", "map_75"),
}


def _num(v: float | None, signed: bool = False) -> str:
    return "–" if v is None else (f"{v:+.4f}" if signed else f"{v:.4f}")


def _p(v: float | None) -> str:
    return "" if v is None else ("<0.001" if v < 0.001 else f"{v:.3f}")


def format_comparison(result: dict[str, Any]) -> str:
    """The comparison as a plain-text table: A, B, B - A with its interval and DeLong's p for AUROC.

    Args:
        result: Output of :func:`~xrayfm.evaluate.compare.compare_runs`.

    Returns:
        The table, one line per metric (and per class for AUROC), with a heading.
    """
    level = round(100 * (1 - result["alpha"]))
    lines = [
        f"{result['dataset']}/{result['split']}: {result['n']} images scored by both; A = {result['a']['run']}, "
        f"B = {result['b']['run']}",
        f"B - A with paired-bootstrap {level}% CI ({result['n_boot']} resamples of the images, seed {result['seed']});"
        f" AUROC also DeLong's test",
        f"thresholds: {result['threshold_rule']}"
        + (f", chosen on {result['a']['thresholds']['split']} per model" if result["a"]["thresholds"]["split"] else ""),
        f"  {'task':<12} {'metric':<24} {'A':>8} {'B':>8} {'B - A':>8}  {f'[{level}% CI]':<20} DeLong p",
    ]

    def row(task: str, name: str, d: dict[str, Any], p: float | None = None) -> None:
        ci = f"[{_num(d['low'], True)}, {_num(d['high'], True)}]" if d.get("low") is not None else ""
        lines.append(f"  {task:<12} {name:<24} {_num(d['a']):>8} {_num(d['b']):>8} "
                     f"{_num(d['difference'], True):>8}  {ci:<20} {_p(p)}".rstrip())  # fmt: skip

    for task, res in result["tasks"].items():
        diffs, delong = res["differences"], res.get("delong", {})
        for metric in TABLE_METRICS[res["kind"]]:
            p = delong.get("mean_auroc", {}).get("p") if metric == "mean_auroc" else None
            row(task, metric, diffs[metric], p)
        if res["kind"] in CLASSIFICATION_KINDS:
            for c, d in diffs["per_class"].items():
                row(task, f"auroc {c}", d["auroc"], delong["per_class"][c]["auroc"]["p"])
    lines += [f"note: {n}" for n in result.get("notes", [])]
    return "\n".join(lines)


def cmd_compare(args: argparse.Namespace) -> int:
    from functools import partial

    from xrayfm.cli.scored_models import check_head_args, load_scored_model
    from xrayfm.evaluate.compare import compare_runs
    from xrayfm.io.atomic import atomic_write_json
    from xrayfm.report.comparison_report import write_comparison_report

    check_head_args([args.run_a, args.run_b], args.head, args.weights)
    options = parse_options(args.option)
    load = partial(load_scored_model, dataset=args.dataset, root=args.root, split=args.split, options=options,
                   head=args.head, weights=args.weights)  # fmt: skip
    result = compare_runs(
        args.run_a, args.run_b, args.dataset, args.root, split=args.split, options=options,
        threshold=args.threshold, n_boot=args.n_boot, seed=args.seed, load=load,
    )  # fmt: skip
    out = Path(args.out or Path(args.run_b) / f"compare_{Path(args.run_a).resolve().name}_{args.dataset}_{args.split}")
    out.mkdir(parents=True, exist_ok=True)
    result["report"] = str(write_comparison_report(result, out / "compare.html"))
    atomic_write_json(out / "compare.json", result)
    print(format_comparison(result))
    print(f"json: {out / 'compare.json'}   report: {result['report']}")
    return 0


def add_compare_command(sub: argparse._SubParsersAction) -> None:
    """Register ``compare`` on the top-level subparsers.

    Args:
        sub: The ``xrayfm`` subparsers.
    """
    p = sub.add_parser(
        "compare",
        help="compare two fine-tuned models on the same images (paired bootstrap, DeLong)",
        description=(
            "Score two fine-tuned models (finetune run folders) on the same dataset split and give each "
            "metric's difference B - A with a paired-bootstrap 95% CI (images resampled jointly for both) "
            "and DeLong's test for AUROC, per class and for the mean. Multi-label decision thresholds are "
            "chosen on the validation split, per model, by the same rule. Writes compare.json and compare.html. "
            "A Foundation X multi-task model (xrayfm pretrain multitask OUT) takes part through one head, --head "
            "DATASET/TASK (used for each multi-task run)."
        ),
    )
    p.add_argument("run_a", help="finetune or multi-task run (or model folder) A, the reference")
    p.add_argument("run_b", help="finetune or multi-task run (or model folder) B; differences are B - A")
    add_data_args(p, split="test")
    p.add_argument("--out", help="output folder (default RUN_B/compare_A_DATASET_SPLIT)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    add_threshold_arg(p, fallback=", for each model (0.5 when there is none)")
    add_head_args(p)
    p.set_defaults(func=cmd_compare)
