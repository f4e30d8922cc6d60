"""Supervised commands of ``xrayfm``: finetune, sweep and evaluate.

finetune and sweep accept ``--config RECIPE.yaml`` (see :mod:`xrayfm.cli.recipes`) and write the
resolved settings to ``OUT/config.yaml``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xrayfm.cli.args import add_data_args, add_engine_args, add_model_arg, add_run_args, train_config
from xrayfm.cli.recipes import parse_options, write_resolved_config
from xrayfm.errors import XrayfmError

if TYPE_CHECKING:
    from xrayfm.finetune.run import FinetuneConfig


def finetune_config(args: argparse.Namespace) -> FinetuneConfig:
    """The fine-tuning configuration of parsed ``finetune`` or ``sweep`` arguments.

    Args:
        args: Parsed arguments of ``finetune`` or ``sweep``.

    Returns:
        The :class:`~xrayfm.finetune.run.FinetuneConfig` of the run.

    Raises:
        XrayfmError: An adapter option or ``--devices`` is malformed.
    """
    from xrayfm.finetune.modes import LoraSettings
    from xrayfm.finetune.run import FinetuneConfig

    return FinetuneConfig(
        dataset=args.dataset, root=args.root, dataset_options=parse_options(args.option),
        tasks=args.task or None, arch=getattr(args, "arch", "eva_x_tiny_patch16"),
        pretrained=getattr(args, "pretrained", None), img_size=args.img_size, mode=getattr(args, "mode", "full"),
        lora=LoraSettings(args.lora_rank, args.lora_alpha, args.lora_dropout, args.lora_targets),
        layer_decay=None if args.layer_decay in (None, 1.0) else args.layer_decay, drop_path=args.drop_path,
        dropout=args.dropout, decoder=args.decoder, train_fraction=getattr(args, "train_fraction", 1.0),
        allow_empty_classes=args.allow_empty_classes, pos_weight=args.pos_weight, focal_gamma=args.focal_gamma,
        flip=args.flip, epochs=args.epochs, eval_splits=tuple(args.eval_split or ('val', 'test')), n_boot=args.n_boot,
        threshold=args.threshold, grad_checkpointing=args.grad_checkpointing, train=train_config(args),
    )  # fmt: skip


def format_estimate(ci: dict[str, Any]) -> str:
    """``value  [low, high]`` of a headline metric; the interval is left out when the bootstrap
    could not give one (e.g. every resample lacked a positive case)."""
    interval = "" if ci.get("low") is None or ci.get("high") is None else f"  [{ci['low']:.4f}, {ci['high']:.4f}]"
    return f"{ci['value']:.4f}{interval}"


def _print_evaluation(split: str, result: dict[str, Any]) -> None:
    for task, res in result.get("tasks", {}).items():
        for name, ci in res.get("headline", {}).items():
            if ci.get("value") is None:
                continue
            print(f"  {split:<5} {task:<14} {name:<14} {format_estimate(ci)}")


def cmd_finetune(args: argparse.Namespace) -> int:
    from xrayfm.finetune.run import run_finetune
    from xrayfm.train import is_global_zero

    config = finetune_config(args)
    summary = run_finetune(config)  # writes OUT/config.yaml, the run's one resolved config
    if not is_global_zero():  # with several processes, rank 0 speaks for the run
        return 0
    p = summary["parameters"]
    print(f"fine-tuning ({args.mode}) finished: {p['trainable']:,} of {p['total']:,} parameters trained "
          f"({p['trainable_percent']:.2f}%) on {summary['train_images']} images")  # fmt: skip
    if summary["evaluations"]:
        print("  split task           metric         value   [95% CI]")
    else:
        print(f"  not evaluated: no images in split(s) {', '.join(args.eval_split or ['val', 'test'])}")
    for split, result in summary["evaluations"].items():
        _print_evaluation(split, result)
    print(f"model: {Path(args.out) / 'model'}   summary: {Path(args.out) / 'summary.json'}")
    for split, result in summary["evaluations"].items():
        print(f"report ({split}): {result['report']}")
    return 0


def _list(text: str, kind: type) -> list:
    try:
        return [kind(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise XrayfmError(f"{text!r} is not a comma-separated list of {kind.__name__} values") from None


def cmd_sweep(args: argparse.Namespace) -> int:
    from xrayfm.finetune.sweep import Backbone, run_sweep
    from xrayfm.train import is_global_zero

    config = finetune_config(args)
    write_resolved_config(args, args.out)
    backbones = [Backbone.parse(b) for b in args.backbone] or [Backbone("eva_x_tiny", "eva_x_tiny_patch16")]
    table = run_sweep(
        config, backbones=backbones, modes=_list(args.modes, str),
        fractions=_list(args.fractions, float), seeds=_list(args.seeds, int), out_dir=args.out,
    )  # fmt: skip
    if not is_global_zero():
        return 0
    print((table.parent / "sweep.md").read_text())
    print(f"table: {table}   summary: {table.parent / 'sweep.md'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from xrayfm.data.registry import build_dataset
    from xrayfm.evaluate.run import evaluate_dataset
    from xrayfm.models.preprocess import resolve_preprocess
    from xrayfm.models.task_checkpoint import load_task_model

    model, meta = load_task_model(args.model)
    transform = resolve_preprocess(model, img_size=args.img_size).eval_transform()
    ds = build_dataset(args.dataset, args.root, args.split, transform=transform, **parse_options(args.option))
    out = Path(args.out or Path(args.model) / f"eval_{args.dataset}_{args.split}")
    result = evaluate_dataset(
        model, ds, out, n_boot=args.n_boot, seed=args.seed, threshold=args.threshold,
        model_name=f"{meta['arch']} in {args.model}",
    )  # fmt: skip
    print("  split task           metric         value   [95% CI]")
    _print_evaluation(args.split, result)
    print(f"metrics: {out / 'metrics.json'}   report: {result['report']}")
    return 0


def _add_finetune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="adapt a backbone to labelled X-rays (classification / segmentation / boxes)",
        description=(
            "Adapt a backbone (EVA-X, any timm model, an xrayfm pretraining run) to a dataset's "
            "classification, segmentation and box tasks: full fine-tuning, linear probe or LoRA, with "
            "layer-wise lr decay. Saves OUT/model, then evaluates the val and test splits with "
            "bootstrap confidence intervals and writes an HTML report. Recipes: --config NAME (see xrayfm recipes)."
        ),
    )
    _finetune_args(p, "runs/finetune")
    p.add_argument("--arch", default="eva_x_tiny_patch16", help="backbone architecture")
    p.add_argument("--pretrained", help="backbone weights: file, export folder or pretraining run (default random)")
    p.add_argument("--mode", default="full", choices=["full", "linear", "lora"], help="what trains (default full)")
    p.add_argument("--train-fraction", type=float, default=1.0, help="share of training patients (default 1)")
    p.set_defaults(func=cmd_finetune)


def _finetune_args(p: argparse.ArgumentParser, out: str) -> None:
    """Arguments shared by finetune and sweep."""
    p.add_argument("dataset", help="dataset adapter, e.g. phantom, nih_cxr14, csv")
    p.add_argument("root", help="dataset root")
    add_run_args(p, out)
    p.add_argument("--task", action="append", default=[], help="task to train (repeatable; default all)")
    p.add_argument("--img-size", type=int, default=224, help="input side (default 224)")
    p.add_argument("--lora-rank", type=int, default=8, help="LoRA rank (default 8)")
    p.add_argument("--lora-alpha", type=float, default=16.0, help="LoRA alpha (default 16)")
    p.add_argument("--lora-dropout", type=float, default=0.1, help="LoRA dropout (default 0.1)")
    p.add_argument("--lora-targets", help="regex of backbone modules to adapt (default: attention projections)")
    p.add_argument("--layer-decay", type=float, default=0.55, help="layer-wise lr decay, 1 = off (default 0.55)")
    p.add_argument("--drop-path", type=float, default=0.1, help="stochastic depth (default 0.1)")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout before the classifier (default 0)")
    p.add_argument("--decoder", choices=["upernet", "unet"], help="segmentation decoder (default by backbone)")
    p.add_argument("--allow-empty-classes", action="store_true", help="train even if a class has no positives")
    p.add_argument("--pos-weight", choices=["auto"], help="BCE positive weight negatives/positives per class")
    p.add_argument("--focal-gamma", type=float, default=0.0, help="focal loss gamma, 0 = BCE/CE (default 0)")
    p.add_argument("--flip", type=float, default=0.5, help="horizontal flip probability (default 0.5)")
    p.add_argument("--epochs", type=float, default=10.0, help="epochs when --steps is 0 (default 10)")
    p.add_argument("--eval-split", action="append", default=None, help="split to evaluate (default val, test)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--threshold", type=float, default=0.5, help="decision threshold (default 0.5)")
    add_engine_args(p, steps=0, batch=32, lr=1e-3, warmup=50, clip=0.0)


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="label-efficiency sweep: backbones x modes x fractions x seeds, one table",
        description=(
            "Fine-tune every combination of backbones, modes, training fractions and seeds (each an "
            "ordinary finetune run in OUT/LABEL_MODE_fFRACTION_sSEED; a finished run is reused only when its "
            "recorded config equals the one it would run now, else it is run again) "
            "and write OUT/sweep.csv (headline metrics with 95% CIs) and OUT/sweep.md."
        ),
    )
    _finetune_args(p, "runs/sweep")
    p.add_argument(
        "--backbone", action="append", default=[], metavar="LABEL=ARCH[:WEIGHTS]",
        help="backbone to compare (repeatable; default eva_x_tiny=eva_x_tiny_patch16, random init)",
    )  # fmt: skip
    p.add_argument("--modes", default="full,linear,lora", help="comma-separated modes (default full,linear,lora)")
    p.add_argument("--fractions", default="0.01,0.1,1", help="comma-separated train fractions (default 0.01,0.1,1)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.set_defaults(func=cmd_sweep)


def add_finetune_commands(sub: argparse._SubParsersAction) -> None:
    """Register finetune, sweep and evaluate on the top-level subparsers.

    Args:
        sub: The ``xrayfm`` subparsers.
    """
    _add_finetune(sub)
    _add_sweep(sub)

    p = sub.add_parser(
        "evaluate",
        help="score a fine-tuned model on a dataset split",
        description=(
            "Evaluate a fine-tuned model (a finetune run folder or its model/ folder) on a dataset "
            "split: AUROC, accuracy, sensitivity/specificity, ECE, Dice/Jaccard with 95% bootstrap "
            "CIs; writes metrics.json, predictions and an HTML report."
        ),
    )
    add_model_arg(p)
    add_data_args(p, split="test")
    p.add_argument("--out", help="output folder (default MODEL/eval_DATASET_SPLIT)")
    p.add_argument("--img-size", type=int, help="input side (default: the model's)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--threshold", type=float, default=0.5, help="decision threshold (default 0.5)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.set_defaults(func=cmd_evaluate)
