"""Supervised commands of ``xrayfm``: finetune, sweep and evaluate.

finetune and sweep accept ``--config RECIPE.yaml`` (see :mod:`xrayfm.cli.recipes`) and write the
resolved settings to ``OUT/config.yaml``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xrayfm.cli.args import (
    add_data_args,
    add_engine_args,
    add_model_arg,
    add_run_args,
    add_threshold_arg,
    train_config,
)
from xrayfm.cli.recipes import parse_options, write_resolved_config
from xrayfm.cli.scored_models import add_head_args
from xrayfm.errors import MissingSplitError, XrayfmError

if TYPE_CHECKING:
    from xrayfm.finetune.run import FinetuneConfig


def finetune_config(args: argparse.Namespace) -> FinetuneConfig:
    """The fine-tuning configuration of parsed ``finetune`` or ``sweep`` arguments.

    Args:
        args: Parsed arguments of ``finetune`` or ``sweep``.

    Returns:
        The :class:`~xrayfm.finetune.run.FinetuneConfig` of the run.

    Raises:
        XrayfmError: An adapter option, ``--crop-scale`` or ``--devices`` is malformed.
    """
    from xrayfm.finetune.modes import LoraSettings
    from xrayfm.finetune.run import FinetuneConfig

    return FinetuneConfig(
        dataset=args.dataset, root=args.root, dataset_options=parse_options(args.option),
        tasks=args.task or None, arch=getattr(args, "arch", "eva_x_tiny_patch16"),
        pretrained=getattr(args, "pretrained", None), img_size=args.img_size, mode=getattr(args, "mode", "full"),
        lora=LoraSettings(args.lora_rank, args.lora_alpha, args.lora_dropout, args.lora_targets),
        layer_decay=None if args.layer_decay in (None, 1.0) else args.layer_decay, drop_path=args.drop_path,
        dropout=args.dropout, head_init_scale=args.head_init_scale, decoder=args.decoder,
        decoder_dropout=args.decoder_dropout, features=args.features, seg_loss=args.seg_loss,
        train_fraction=getattr(args, "train_fraction", 1.0), allow_empty_classes=args.allow_empty_classes,
        pos_weight=args.pos_weight, focal_gamma=args.focal_gamma, flip=args.flip, augment=args.augment,
        rand_augment=args.rand_augment, crop_scale=_crop_scale(args.crop_scale), interpolation=args.interpolation,
        crop_pct=args.crop_pct, eval_splits=tuple(args.eval_split or ('val', 'test')), n_boot=args.n_boot,
        threshold=args.threshold, grad_checkpointing=args.grad_checkpointing, train=train_config(args),
    )  # fmt: skip


def _crop_scale(value: object) -> tuple[float, float] | None:
    """The pair of ``--crop-scale``: text ``LO,HI`` (command line) or a two-item list (a recipe)."""
    if value is None:
        return None
    items = str(value).split(",") if isinstance(value, str) else value
    try:
        low, high = (float(v) for v in items)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise XrayfmError(f"--crop-scale must be two numbers LO,HI such as 0.08,1, got {value!r}") from None
    if not 0 < low <= high <= 1:
        raise XrayfmError(f"--crop-scale must satisfy 0 < LO <= HI <= 1, got {value!r}")
    return low, high


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
        baseline=args.baseline,
    )  # fmt: skip
    if not is_global_zero():
        return 0
    print((table.parent / "sweep.md").read_text())
    print(f"table: {table}   summary: {table.parent / 'sweep.md'}   report: {table.parent / 'sweep.html'}")
    return 0


def _evaluation_thresholds(args: argparse.Namespace, model: Any, transform: Any, options: dict[str, Any]) -> tuple:
    """The thresholds ``evaluate`` uses and, when they were chosen on the evaluated split itself, its predictions.

    ``--threshold`` unset means Youden's J on the val split when it has images, else 0.5.
    """
    import torch

    from xrayfm.evaluate.predict import predict
    from xrayfm.evaluate.thresholds import ThresholdChoice, ThresholdRule, choose_task_thresholds
    from xrayfm.train.streaming import open_dataset

    rule = ThresholdRule.parse(args.threshold or "youden")
    if not rule.needs_data:
        return ThresholdChoice.fixed(float(rule.value)), None
    try:
        val = open_dataset(args.dataset, args.root, "val", transform=transform, options=options, stream=False)
    except MissingSplitError as exc:  # any other problem with val (missing images...) is the user's to fix
        val, why = None, str(exc)
    else:
        why = "it has no images"
    if val is None or not len(val):
        if args.threshold:
            raise XrayfmError(f"--threshold {rule} is chosen on the val split, and {args.dataset} has none ({why}); "
                              "pass a number")  # fmt: skip
        return ThresholdChoice.fixed(0.5, f"no val split ({why}): fixed threshold 0.5"), None
    predictions = predict(model, val, device="cuda" if torch.cuda.is_available() else "cpu")
    choice = choose_task_thresholds(model.tasks, predictions, rule, split="val")
    if args.split == "val":
        choice.notes.append("chosen on the evaluated split itself: its sensitivity / specificity are optimistic")
    return choice, predictions if args.split == "val" else None


def cmd_evaluate(args: argparse.Namespace) -> int:
    from xrayfm.cli.scored_models import check_head_args, load_scored_model
    from xrayfm.evaluate.run import evaluate_dataset
    from xrayfm.models.preprocess import resolve_preprocess
    from xrayfm.train.streaming import open_dataset

    check_head_args([args.model], args.head, args.weights)
    options = parse_options(args.option)
    model, meta = load_scored_model(args.model, dataset=args.dataset, root=args.root, split=args.split,
                                    options=options, head=args.head, weights=args.weights)  # fmt: skip
    transform = resolve_preprocess(model, img_size=args.img_size).eval_transform()
    ds = open_dataset(args.dataset, args.root, args.split, transform=transform, options=options, stream=False)
    choice, predictions = _evaluation_thresholds(args, model, transform, options)
    head = f"_{args.head.replace('/', '_')}" if args.head else ""
    out = Path(args.out or Path(args.model) / f"eval_{args.dataset}_{args.split}{head}")
    name = f"{meta['arch']} in {args.model}" + (f", head {args.head} ({meta['served_weights']})" if head else "")
    result = evaluate_dataset(
        model, ds, out, n_boot=args.n_boot, seed=args.seed, threshold=choice, predictions=predictions,
        model_name=name,
    )  # fmt: skip
    print("  split task           metric         value   [95% CI]")
    _print_evaluation(args.split, result)
    where = f" chosen on {choice.split}" if choice.split else ""
    print(f"thresholds: {choice.rule}{where}" + "".join(f"; {n}" for n in choice.notes))
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
    p.add_argument("dataset", help="dataset adapter, e.g. phantom, nih_cxr14, csv; or shards (ROOT: a shard folder)")
    p.add_argument("root", help="dataset root, or the shard folder")
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
    p.add_argument(
        "--head-init-scale",
        type=float,
        default=1.0,
        help="factor on the new classifier's initial weights (EVA-X 0.001)",
    )
    p.add_argument("--decoder", choices=["upernet", "unet"], help="segmentation decoder (default by backbone)")
    p.add_argument("--decoder-dropout", type=float, default=0.0, help="dropout before the mask classifier (EVA-X 0.1)")
    p.add_argument(
        "--features", choices=["last", "pyramid"], default="last",
        help="ViT layers for dense heads: last block, as EVA-X (default), or blocks 3,5,7,11 (xrayfm's pyramid)",
    )  # fmt: skip
    p.add_argument("--seg-loss", choices=["bce_dice", "bce"], default="bce_dice", help="mask loss (EVA-X: bce)")
    p.add_argument("--allow-empty-classes", action="store_true", help="train even if a class has no positives")
    p.add_argument("--pos-weight", choices=["auto"], help="BCE positive weight negatives/positives per class")
    p.add_argument("--focal-gamma", type=float, default=0.0, help="focal loss gamma, 0 = BCE/CE (default 0)")
    p.add_argument("--flip", type=float, default=0.5, help="horizontal flip probability (default 0.5)")
    p.add_argument(
        "--augment", choices=["basic", "randaugment", "photometric", "none"], default="basic",
        help="training view: basic (crop, flip, rotation, gamma, noise), randaugment (EVA-X classification), "
        "photometric (EVA-X segmentation), none (the test view); default basic",
    )  # fmt: skip
    p.add_argument(
        "--rand-augment", default="rand-m6-mstd0.5-inc1", help="timm RandAugment of --augment randaugment (EVA-X's)"
    )
    p.add_argument("--crop-scale", metavar="LO,HI", help="random resized crop area range (default: the view's)")
    p.add_argument("--interpolation", choices=["bilinear", "bicubic"], help="resize filter (default: the backbone's)")
    p.add_argument(
        "--crop-pct",
        type=float,
        help="test view: centre-crop share, 0.875 = Resize 256 + CenterCrop 224 (default: backbone's)",
    )
    p.add_argument("--eval-split", action="append", default=None, help="split to evaluate (default val, test)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    add_threshold_arg(p)
    add_engine_args(p, steps=0, batch=32, lr=1e-3, warmup=50, clip=0.0, epochs=10.0)


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="label-efficiency sweep: backbones x modes x fractions x seeds, one table",
        description=(
            "Fine-tune every combination of backbones, modes, training fractions and seeds (each an "
            "ordinary finetune run in OUT/LABEL_MODE_fFRACTION_sSEED; a finished run is reused only when its "
            "recorded config equals the one it would run now, else it is run again) "
            "and write OUT/sweep.csv (headline metrics with 95% CIs), OUT/sweep.md and OUT/sweep.html: each row's "
            "mean and sd over the seeds and, with --baseline, its paired difference from the baseline row (per seed "
            "on the same test images; the mean over seeds with a CI resampling images and seeds)."
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
    p.add_argument(
        "--baseline", metavar="LABEL[/MODE[/FRACTION]]",
        help="row every other row is compared with, paired by seed; a part left out is the compared row's own "
        "(e.g. 'random': the random backbone at each row's mode and fraction)",
    )  # fmt: skip
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
            "CIs; writes metrics.json, predictions and an HTML report. For the anatomy measures of a backbone's "
            "embeddings (Eve): xrayfm evaluate anatomy --help. A Foundation X multi-task model (xrayfm pretrain "
            "multitask OUT) is scored through one head: --head DATASET/TASK."
        ),
    )
    add_model_arg(p)
    add_data_args(p, split="test", dataset_help="dataset adapter, or shards (ROOT: a shard folder)")
    p.add_argument("--out", help="output folder (default MODEL/eval_DATASET_SPLIT)")
    p.add_argument("--img-size", type=int, help="input side (default: the model's)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    add_threshold_arg(p, default=None, fallback=" (0.5 with a note when there is none)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    add_head_args(p)
    p.set_defaults(func=cmd_evaluate)
