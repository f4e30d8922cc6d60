"""``xrayfm pretrain``: EVA-X masked image modeling, Adam anatomy-aware MoCo-v2, Foundation X multi-task.

Accepts ``--config RECIPE.yaml`` (see :mod:`xrayfm.cli.recipes`) and writes the resolved
settings to ``OUT/config.yaml``.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from xrayfm.cli.args import add_engine_args, add_run_args, train_config
from xrayfm.cli.recipes import find_recipe, parse_options
from xrayfm.errors import XrayfmError

#: ``--teacher-layout`` choices (those of :mod:`xrayfm.pretrain.teachers`, which loads torch).
LAYOUTS = ("auto", "mgca", "eva_clip", "timm", "xrayfm")
#: ``--grid`` choices (those of :mod:`xrayfm.pretrain.anatomy`, which loads torch).
GRIDS = ("nxn", "pow2")
#: ``--decoder`` choices of ``pretrain multitask`` (shared segmentation decoders).
DECODERS = ("upernet", "unet")


def cmd_pretrain_mim(args: argparse.Namespace) -> int:
    from xrayfm.pretrain.mim_run import run_mim
    from xrayfm.train import is_global_zero

    train, options = train_config(args), parse_options(args.option)
    export = run_mim(  # writes OUT/config.yaml, the run's one resolved config
        args.dataset, args.root, arch=args.arch, teacher=args.teacher, teacher_arch=args.teacher_arch,
        teacher_layout=args.teacher_layout, teacher_img_size=args.teacher_img_size, img_size=args.img_size,
        mask_ratio=args.mask_ratio, dataset_options=options, train_config=train, mean=args.mean, std=args.std,
        grad_checkpointing=args.grad_checkpointing,
    )  # fmt: skip
    if not is_global_zero():  # with several processes, rank 0 speaks for the run
        return 0
    print(f"pretraining finished: metrics {Path(args.out) / 'metrics.csv'}, checkpoint {Path(args.out) / 'last.ckpt'}")
    print(f"exported backbone: {export} (load with create_model({args.arch!r}, pretrained={str(args.out)!r}))")
    return 0


def parse_stages(value: str | list[int] | tuple[int, ...]) -> tuple[int, ...]:
    """Granularities of ``--stages``: text ``0,2,4`` (command line) or a list (a recipe or a run's config.yaml).

    Raises:
        XrayfmError: Not a comma-separated list of whole numbers.
    """
    items = value.split(",") if isinstance(value, str) else value
    try:
        return tuple(int(str(v).strip()) for v in items)
    except (TypeError, ValueError):
        raise XrayfmError(f"--stages must be granularities such as 0,2,4, got {value!r}") from None


def cmd_pretrain_anatomy(args: argparse.Namespace) -> int:
    from xrayfm.pretrain.anatomy_run import run_anatomy
    from xrayfm.train import is_global_zero

    train, options = replace(train_config(args), validate_every=args.validate_every), parse_options(args.option)
    export = run_anatomy(  # writes OUT/config.yaml, the run's one resolved config
        args.dataset, args.root, stages=parse_stages(args.stages), arch=args.arch, img_size=args.img_size,
        grid=args.grid, moco_dim=args.moco_dim, queue_size=args.queue_size,
        momentum_key=args.momentum_key, temperature=args.temperature, prune_threshold=args.prune_threshold,
        carry_queue=args.carry_queue, split_bn=args.split_bn, brightness=args.brightness, contrast=args.contrast,
        jitter_p=args.jitter_p, mean=args.mean, std=args.std, val_fraction=args.val_fraction,
        grad_checkpointing=args.grad_checkpointing, dataset_options=options, train_config=train,
    )  # fmt: skip
    if not is_global_zero():
        return 0
    print(f"anatomy pretraining finished: stages under {args.out}/stage_n*, summary {Path(args.out) / 'summary.json'}")
    print(f"exported backbone: {export} (load with create_model({args.arch!r}, pretrained={str(args.out)!r}))")
    return 0


def add_anatomy_command(methods: argparse._SubParsersAction) -> None:
    """Register ``pretrain anatomy`` (Adam) on the pretrain methods' subparsers."""
    a = methods.add_parser(
        "anatomy",
        help="Adam: anatomy-aware MoCo-v2 (anatomy decomposer + purposive pruner), stages n = 0 -> 2 -> 4",
        description=(
            "Pretrain any backbone (ResNet-50 by default) with Adam: MoCo-v2 on two views of one random cell of "
            "an n x n grid, stage after stage (--stages 0,2,4), each stage starting from the one before; for n > 0 "
            "the purposive pruner drops queued negatives too similar to the query. Each stage keeps its own folder "
            "OUT/stage_nN (resumable); its weights at the lowest validation loss are exported and start the next "
            "stage; a rerun skips finished stages. Defaults are Adam's: SGD lr 0.03, "
            "momentum 0.9, weight decay 1e-4 on every parameter, no warmup, no clipping. Paper recipe: --config "
            "adam_resnet50 (see xrayfm recipes)."
        ),
    )
    a.add_argument(
        "dataset", help="dataset adapter (see 'xrayfm datasets'), e.g. phantom; or 'shards' to stream a shard folder"
    )
    a.add_argument("root", help="dataset root (for shards: the folder of 'xrayfm shards build', or an fsspec URL)")
    add_run_args(a, "runs/anatomy")
    a.add_argument("--stages", type=parse_stages, default=(0, 2, 4), help="granularities in order (default 0,2,4)")
    a.add_argument("--arch", default="resnet50", help="backbone, any registry name (default resnet50)")
    a.add_argument("--img-size", type=int, default=224, help="view side (default 224)")
    a.add_argument("--grid", choices=GRIDS, default="nxn", help="nxn (official code) or pow2 (paper figure, 2^n parts)")
    a.add_argument("--moco-dim", type=int, default=128, help="projection head output width (default 128)")
    a.add_argument("--queue-size", type=int, default=65536, help="queued negatives K (default 65536)")
    a.add_argument("--momentum-key", type=float, default=0.999, help="key encoder momentum m (default 0.999)")
    a.add_argument("--temperature", type=float, default=0.2, help="InfoNCE temperature (default 0.2)")
    a.add_argument(
        "--prune-threshold", type=float, default=0.8, help="purposive pruner: drop negatives with cos >= this (0.8)"
    )
    a.add_argument("--carry-queue", action="store_true", help="start each stage with the previous stage's queue")
    a.add_argument(
        "--split-bn", type=int, default=0,
        help="samples per BatchNorm group, key batch shuffled between groups (default 0: the per-device batch)",
    )  # fmt: skip
    a.add_argument("--brightness", type=float, default=0.0, help="brightness jitter 1 +- this (default 0: off)")
    a.add_argument("--contrast", type=float, default=0.0, help="contrast jitter 1 +- this (default 0: off)")
    a.add_argument("--jitter-p", type=float, default=0.8, help="probability of the jitter when on (default 0.8)")
    a.add_argument("--mean", type=float, help="normalisation mean of [0,1] grey (default: the backbone's)")
    a.add_argument("--std", type=float, help="normalisation std (default: the backbone's)")
    a.add_argument(
        "--val-fraction", type=float, default=0.1,
        help="patient share held out for the validation loss when the dataset has no val split (0: none); "
        "shards validate on their val split and without one need 0",
    )  # fmt: skip
    a.add_argument(
        "--validate-every", type=int, default=0,
        help="steps between validation losses, which select each stage's best weights (default 0: at each "
        "checkpoint, --checkpoint-every); the last step is always validated",
    )  # fmt: skip
    add_engine_args(a, steps=1000, batch=32, lr=0.03, warmup=0, clip=0.0, optimizer="sgd", weight_decay=1e-4)
    a.set_defaults(func=cmd_pretrain_anatomy)


def cmd_pretrain_multitask(args: argparse.Namespace) -> int:
    from xrayfm.pretrain.multitask_run import read_run_recipe, run_multitask
    from xrayfm.train import is_global_zero

    recipe = read_run_recipe(find_recipe(args.recipe))  # a recipe error stops before anything is launched
    export = run_multitask(  # writes OUT/config.yaml: the resolved recipe and these settings
        recipe, args.out, train_config(args), arch=args.arch, img_size=args.img_size, data_root=args.data_root,
        decoder=args.decoder, features=args.features, backbone_lr_scale=args.backbone_lr_scale,
        max_steps=args.steps or None, grad_checkpointing=args.grad_checkpointing, init=args.init,
        init_student=args.init_student, pretrained=args.pretrained,
    )  # fmt: skip
    if not is_global_zero():
        return 0
    out = Path(args.out)
    print(f"multi-task pretraining finished: phases {out / 'phases.csv'}, metrics {out / 'metrics.csv'}")
    print(f"exported backbone: {export} (load with create_model({args.arch!r}, pretrained={str(args.out)!r}))")
    print(f"whole model with every head: {out / 'model'} (xrayfm.pretrain.multitask_export.load_multitask_model)")
    return 0


def add_multitask_command(methods: argparse._SubParsersAction) -> None:
    """Register ``pretrain multitask`` (Foundation X) on the pretrain methods' subparsers."""
    t = methods.add_parser(
        "multitask",
        help="Foundation X: one backbone, a head per (dataset, task), Cyclic & Lock-Release, EMA teacher",
        description=(
            "Train one backbone with a head per (dataset, task) across datasets that each carry some kinds of "
            "labels, walking the recipe's cycle of units: a detection or segmentation unit runs locked first "
            "(only its head trains) on part of its data, then released; an EMA teacher follows the student at "
            "each phase end and a consistency loss ties them. RECIPE is a multi-task recipe file, a shipped one "
            "(foundation_x_phantom; foundation_x_shared, the real sets of ../shared/datasets), or a run's "
            "OUT/config.yaml. The recipe sets the length (--steps N > 0 trains "
            "only its first N steps). Resumes from OUT/last.ckpt; writes OUT/phases.csv, OUT/export (the "
            "backbone) and OUT/model (every head, student and teacher). Defaults are the paper's: AdamW, lr "
            "1e-4 with the backbone at 0.1 x, weight decay 1e-4, batch 24, no warmup or clipping."
        ),
    )
    t.add_argument("recipe", help="multi-task recipe: a YAML file, a shipped name, or a run's config.yaml")
    t.add_argument("--config", metavar="YAML", help="a run's config.yaml whose settings replace the defaults")
    t.add_argument("--out", default="runs/multitask", help="run folder (default runs/multitask)")
    t.add_argument("--data-root", help="folder the recipe's relative dataset roots are in (default: here)")
    t.add_argument("--arch", default="swin_base_patch4_window7_224", help="backbone (default Swin-B, the paper's)")
    t.add_argument("--img-size", type=int, default=224, help="input side (default 224)")
    t.add_argument("--decoder", choices=DECODERS, help="shared segmentation decoder (default: by backbone)")
    t.add_argument("--features", choices=("last", "pyramid"), default="last", help="ViT pyramid taps (default last)")
    t.add_argument(
        "--backbone-lr-scale", type=float, default=0.1, help="backbone lr as a share of --lr (default 0.1: 1e-5)"
    )
    t.add_argument(
        "--init", metavar="PATH",
        help="start from a Foundation X or Ark-6 checkpoint: its Swin, plus the classification heads and localizer "
        "encoder the model has counterparts for (what was loaded and left out is printed and kept in OUT/init.txt); "
        "teacher and student start from it. Only a fresh run reads it (a resumed one continues from OUT/last.ckpt). "
        "--arch must be a Swin, built with always_partition=True as the release",
    )  # fmt: skip
    t.add_argument("--init-student", action="store_true", help="with --init: its student, not its EMA teacher")
    t.add_argument(
        "--pretrained", metavar="PATH",
        help="start the backbone from these weights (a weight file, or a pretraining run's folder such as an Adam "
        "or MIM run); the heads start fresh. Not with --init",
    )  # fmt: skip
    t.set_defaults(parser=t)
    add_engine_args(t, steps=0, batch=24, lr=1e-4, warmup=0, clip=0.0, weight_decay=1e-4)
    t.set_defaults(func=cmd_pretrain_multitask)


def add_pretrain_commands(sub: argparse._SubParsersAction) -> None:
    """Register pretrain (with its methods mim, anatomy and multitask) on the top-level subparsers.

    Args:
        sub: The ``xrayfm`` subparsers.
    """
    p = sub.add_parser("pretrain", help="pretraining (EVA-X MIM, Adam, Foundation X multi-task)")
    methods = p.add_subparsers(dest="method", metavar="METHOD", required=True)
    m = methods.add_parser(
        "mim",
        help="EVA-X masked image modeling",
        description=(
            "Pretrain an EVA-X ViT by masked image modeling: 30% of patch tokens masked; a frozen "
            "teacher's features (cosine loss) are regressed on masked tokens only, the teacher seeing the "
            "same view in its own normalisation and input size. Without --teacher the target is normalised "
            "pixels (MSE): the Medical-MAE-style baseline, not EVA-X. Resumes from OUT/last.ckpt; exports "
            "OUT/export/backbone.safetensors, writes OUT/summary.json. Paper recipe: --config eva_x_mim_tiny "
            "(see xrayfm recipes)."
        ),
    )
    m.add_argument(
        "dataset", help="dataset adapter (see 'xrayfm datasets'), e.g. phantom; or 'shards' to stream a shard folder"
    )
    m.add_argument("root", help="dataset root (for shards: the folder of 'xrayfm shards build', or an fsspec URL)")
    add_run_args(m, "runs/mim")
    m.add_argument("--arch", default="eva_x_tiny_patch16", help="student architecture")
    m.add_argument(
        "--teacher",
        help="teacher: MGCA or EVA-CLIP checkpoint, timm / EVA-X file, or xrayfm run / export folder "
        "(default: none, the pixel-target baseline, not EVA-X)",
    )
    m.add_argument(
        "--teacher-arch",
        help="teacher architecture (default: from its export, inferred for MGCA / EVA-CLIP, else --arch)",
    )
    m.add_argument(
        "--teacher-layout", choices=LAYOUTS, default="auto", help="teacher file layout (default auto: detected)"
    )
    m.add_argument("--teacher-img-size", type=int, help="teacher input side (default: the size it was trained at)")
    m.add_argument("--img-size", type=int, default=224, help="input side, multiple of 16 (default 224)")
    m.add_argument("--mask-ratio", type=float, default=0.3, help="masked share of patches (default 0.3)")
    m.add_argument("--mean", type=float, help="normalisation mean of [0,1] grey (default EVA-X 0.4919; see stats)")
    m.add_argument("--std", type=float, help="normalisation std (default EVA-X 0.2851)")
    add_engine_args(m, steps=1000, batch=32, lr=3e-4, warmup=100, clip=3.0)
    m.set_defaults(func=cmd_pretrain_mim)
    add_anatomy_command(methods)
    add_multitask_command(methods)
