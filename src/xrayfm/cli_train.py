"""Training-side subcommands of ``xrayfm``: stats, pretrain, finetune, evaluate.

Each accepts ``--config RECIPE.yaml`` (see :mod:`xrayfm.config`) and writes the resolved
settings to ``OUT/config.yaml``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from xrayfm.config import parse_options, write_resolved_config
from xrayfm.errors import XrayfmError


def _engine_config(args: argparse.Namespace) -> Any:
    from xrayfm.pretrain.engine import TrainConfig

    devices = args.devices if args.devices == "auto" else int(args.devices)
    return TrainConfig(
        out_dir=args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup,
        weight_decay=args.weight_decay, accumulate=args.accumulate, precision=args.precision,
        accelerator=args.accelerator, devices=devices, num_nodes=args.num_nodes, strategy=args.strategy,
        seed=args.seed, num_workers=args.workers, checkpoint_every=args.checkpoint_every, log_every=args.log_every,
        clip_grad=args.clip_grad,
    )  # fmt: skip


def _add_engine_args(
    p: argparse.ArgumentParser, *, steps: int, batch: int, lr: float, warmup: int, clip: float
) -> None:
    g = p.add_argument_group("optimisation and hardware")
    g.add_argument("--steps", type=int, default=steps, help=f"optimiser steps (default {steps})")
    g.add_argument("--batch-size", type=int, default=batch, help=f"per-device batch size (default {batch})")
    g.add_argument("--lr", type=float, default=lr, help=f"peak learning rate (default {lr:g})")
    g.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (default 0.05)")
    g.add_argument("--warmup", type=int, default=warmup, help=f"linear warmup steps (default {warmup})")
    g.add_argument("--clip-grad", type=float, default=clip, help=f"max gradient norm, 0 = off (default {clip:g})")
    g.add_argument("--accumulate", type=int, default=1, help="gradient accumulation (default 1)")
    g.add_argument("--precision", default="auto", help="auto | 32-true | bf16-mixed | 16-mixed")
    g.add_argument("--accelerator", default="auto", help="auto | cpu | gpu")
    g.add_argument("--devices", default="1", help="devices per node (int or auto)")
    g.add_argument("--num-nodes", type=int, default=1, help="nodes (default 1)")
    g.add_argument("--strategy", default="auto", help="auto | ddp | fsdp")
    g.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    g.add_argument("--workers", type=int, default=0, help="DataLoader workers (default 0)")
    g.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints (default 100)")
    g.add_argument("--log-every", type=int, default=10, help="steps between metric rows (default 10)")
    g.add_argument("--grad-checkpointing", action="store_true", help="recompute activations: less memory")


def _common(p: argparse.ArgumentParser, out: str) -> None:
    p.add_argument("--config", metavar="YAML", help="recipe whose values replace the defaults (options override it)")
    p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE", help="adapter option")
    p.add_argument("--out", default=out, help=f"run folder (default {out})")
    p.set_defaults(parser=p)


def cmd_stats(args: argparse.Namespace) -> int:
    from xrayfm.data.registry import build_dataset
    from xrayfm.data.stats import intensity_stats
    from xrayfm.data.transforms import Resize

    ds = build_dataset(args.dataset, args.root, args.split, transform=Resize(args.size), **parse_options(args.option))
    stats = intensity_stats(ds, max_images=args.max_images, seed=args.seed)
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        print(f"{args.dataset} {args.split}: {stats['images']} images at {args.size} px")
        print(f"  mean {stats['mean']:.4f}  std {stats['std']:.4f}   (grey, [0, 1])")
        print(f"  use: xrayfm pretrain mim ... --mean {stats['mean']:.4f} --std {stats['std']:.4f}")
    return 0


def cmd_pretrain_mim(args: argparse.Namespace) -> int:
    from xrayfm.pretrain.mim_run import run_mim

    write_resolved_config(args, args.out)
    export = run_mim(
        args.dataset, args.root, arch=args.arch, teacher=args.teacher, teacher_arch=args.teacher_arch,
        img_size=args.img_size, mask_ratio=args.mask_ratio, dataset_options=parse_options(args.option),
        train_config=_engine_config(args), mean=args.mean, std=args.std, grad_checkpointing=args.grad_checkpointing,
    )  # fmt: skip
    print(f"pretraining finished: metrics {Path(args.out) / 'metrics.csv'}, checkpoint {Path(args.out) / 'last.ckpt'}")
    print(f"exported backbone: {export} (load with create_model({args.arch!r}, pretrained={str(args.out)!r}))")
    return 0


def finetune_config(args: argparse.Namespace) -> Any:
    """The :class:`~xrayfm.finetune.run.FinetuneConfig` of parsed ``finetune`` arguments."""
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
        threshold=args.threshold, grad_checkpointing=args.grad_checkpointing, train=_engine_config(args),
    )  # fmt: skip


def _print_evaluation(split: str, result: dict[str, Any]) -> None:
    for task, res in result.get("tasks", {}).items():
        for name, ci in res.get("headline", {}).items():
            if ci.get("value") is None:
                continue
            print(f"  {split:<5} {task:<14} {name:<14} {ci['value']:.4f}  [{ci['low']:.4f}, {ci['high']:.4f}]")


def cmd_finetune(args: argparse.Namespace) -> int:
    from xrayfm.finetune.run import run_finetune

    write_resolved_config(args, args.out)
    summary = run_finetune(finetune_config(args))
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

    write_resolved_config(args, args.out)
    backbones = [Backbone.parse(b) for b in args.backbone] or [Backbone("eva_x_tiny", "eva_x_tiny_patch16")]
    table = run_sweep(
        finetune_config(args), backbones=backbones, modes=_list(args.modes, str),
        fractions=_list(args.fractions, float), seeds=_list(args.seeds, int), out_dir=args.out,
    )  # fmt: skip
    print((table.parent / "sweep.md").read_text())
    print(f"table: {table}   summary: {table.parent / 'sweep.md'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from xrayfm.data.registry import build_dataset
    from xrayfm.data.transforms import Resize
    from xrayfm.evaluate.run import evaluate_dataset
    from xrayfm.models.task_checkpoint import load_task_model

    model, meta = load_task_model(args.model)
    size = args.img_size or meta.get("img_size") or 224
    ds = build_dataset(args.dataset, args.root, args.split, transform=Resize(size), **parse_options(args.option))
    out = Path(args.out or Path(args.model) / f"eval_{args.dataset}_{args.split}")
    result = evaluate_dataset(
        model, ds, out, n_boot=args.n_boot, seed=args.seed, threshold=args.threshold,
        model_name=f"{meta['arch']} in {args.model}",
    )  # fmt: skip
    print("  split task           metric         value   [95% CI]")
    _print_evaluation(args.split, result)
    print(f"metrics: {out / 'metrics.json'}   report: {result['report']}")
    return 0


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="self-supervised pretraining (EVA-X MIM)")
    methods = p.add_subparsers(dest="method", metavar="METHOD", required=True)
    m = methods.add_parser(
        "mim",
        help="EVA-X masked image modeling",
        description=(
            "Pretrain an EVA-X ViT by masked image modeling: 30%% of patch tokens masked; a frozen "
            "teacher's features (cosine loss) or, without --teacher, normalised pixels (MSE) are "
            "regressed on masked tokens only. Resumes from OUT/last.ckpt; exports "
            "OUT/export/backbone.safetensors. Paper recipe: --config configs/eva_x_mim_tiny.yaml."
        ),
    )
    m.add_argument("dataset", help="dataset adapter (see 'xrayfm datasets'), e.g. phantom")
    m.add_argument("root", help="dataset root")
    _common(m, "runs/mim")
    m.add_argument("--arch", default="eva_x_tiny_patch16", help="student architecture")
    m.add_argument("--teacher", help="teacher weights: file or xrayfm export folder (default: pixel target)")
    m.add_argument("--teacher-arch", help="teacher architecture (default: from its export, else --arch)")
    m.add_argument("--img-size", type=int, default=224, help="input side, multiple of 16 (default 224)")
    m.add_argument("--mask-ratio", type=float, default=0.3, help="masked share of patches (default 0.3)")
    m.add_argument("--mean", type=float, help="normalisation mean of [0,1] grey (default EVA-X 0.4919; see stats)")
    m.add_argument("--std", type=float, help="normalisation std (default EVA-X 0.2851)")
    _add_engine_args(m, steps=1000, batch=32, lr=3e-4, warmup=100, clip=3.0)
    m.set_defaults(func=cmd_pretrain_mim)


def _add_finetune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="adapt a backbone to labelled X-rays (classification / segmentation / boxes)",
        description=(
            "Adapt a backbone (EVA-X, any timm model, an xrayfm pretraining run) to a dataset's "
            "classification, segmentation and box tasks: full fine-tuning, linear probe or LoRA, with "
            "layer-wise lr decay. Saves OUT/model, then evaluates the val and test splits with "
            "bootstrap confidence intervals and writes an HTML report. Recipes: configs/."
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
    _common(p, out)
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
    _add_engine_args(p, steps=0, batch=32, lr=1e-3, warmup=50, clip=0.0)


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="label-efficiency sweep: backbones x modes x fractions x seeds, one table",
        description=(
            "Fine-tune every combination of backbones, modes, training fractions and seeds (each an "
            "ordinary finetune run in OUT/LABEL_MODE_fFRACTION_sSEED; finished runs are not repeated) "
            "and write OUT/sweep.csv (headline metrics with 95%% CIs) and OUT/sweep.md."
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


def add_training_commands(sub: argparse._SubParsersAction) -> None:
    """Register stats, pretrain, finetune and evaluate on the top-level subparsers."""
    p = sub.add_parser(
        "stats",
        help="mean / std of a dataset's pixels (for normalisation)",
        description="Compute the mean and std of grey [0,1] pixels over a seeded sample of a dataset split.",
    )
    p.add_argument("dataset", help="dataset adapter")
    p.add_argument("root", help="dataset root")
    p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE", help="adapter option")
    p.add_argument("--split", default="train", choices=["train", "val", "test", "all"], help="split (default train)")
    p.add_argument("--size", type=int, default=224, help="resize side before counting (default 224)")
    p.add_argument("--max-images", type=int, default=2000, help="images sampled, -1 = all (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_stats)
    _add_pretrain(sub)
    _add_finetune(sub)
    _add_sweep(sub)

    p = sub.add_parser(
        "evaluate",
        help="score a fine-tuned model on a dataset split",
        description=(
            "Evaluate a fine-tuned model (a finetune run folder or its model/ folder) on a dataset "
            "split: AUROC, accuracy, sensitivity/specificity, ECE, Dice/Jaccard with 95%% bootstrap "
            "CIs; writes metrics.json, predictions and an HTML report."
        ),
    )
    p.add_argument("model", help="finetune run folder or model folder")
    p.add_argument("dataset", help="dataset adapter")
    p.add_argument("root", help="dataset root")
    p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE", help="adapter option")
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"], help="split (default test)")
    p.add_argument("--out", help="output folder (default MODEL/eval_DATASET_SPLIT)")
    p.add_argument("--img-size", type=int, help="input side (default: the model's)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--threshold", type=float, default=0.5, help="decision threshold (default 0.5)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.set_defaults(func=cmd_evaluate)
