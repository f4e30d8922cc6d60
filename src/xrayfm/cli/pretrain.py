"""``xrayfm pretrain``: self-supervised pretraining (EVA-X masked image modeling).

Accepts ``--config RECIPE.yaml`` (see :mod:`xrayfm.cli.recipes`) and writes the resolved
settings to ``OUT/config.yaml``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from xrayfm.cli.args import add_engine_args, add_run_args, train_config
from xrayfm.cli.recipes import parse_options

#: ``--teacher-layout`` choices (those of :mod:`xrayfm.pretrain.teachers`, which loads torch).
LAYOUTS = ("auto", "mgca", "eva_clip", "timm", "xrayfm")


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


def add_pretrain_commands(sub: argparse._SubParsersAction) -> None:
    """Register pretrain (with its method mim) on the top-level subparsers.

    Args:
        sub: The ``xrayfm`` subparsers.
    """
    p = sub.add_parser("pretrain", help="self-supervised pretraining (EVA-X MIM)")
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
    m.add_argument("dataset", help="dataset adapter (see 'xrayfm datasets'), e.g. phantom")
    m.add_argument("root", help="dataset root")
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
