"""``xrayfm evaluate anatomy MODEL DATASET ROOT``: Eve's locality and compositionality of a backbone.

``evaluate`` itself takes ``MODEL DATASET ROOT`` (a fine-tuned model), so this form is its own
subcommand, registered under the two words ``evaluate anatomy``; :func:`merge_command_words`
joins them on the command line before parsing. A fine-tuned model folder named ``anatomy`` is
still reachable as ``./anatomy``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from xrayfm.cli.args import add_data_args
from xrayfm.cli.recipes import parse_options

#: The subcommand's name: the two command-line words, joined by :func:`merge_command_words`.
ANATOMY_COMMAND = "evaluate anatomy"
#: Choices of ``--projection`` (those of :data:`xrayfm.evaluate.anatomy.PROJECTIONS`, which loads torch).
PROJECTIONS = ("tsne", "pca")


def merge_command_words(argv: Sequence[str]) -> list[str]:
    """``[..., "evaluate", "anatomy", ...]`` -> ``[..., "evaluate anatomy", ...]`` when these are
    the command's first words (only flags such as ``-v`` may come before them).

    Args:
        argv: Command-line arguments.

    Returns:
        The arguments, the two words joined into the subcommand's name.
    """
    args = list(argv)
    first = next((i for i, a in enumerate(args) if not a.startswith("-")), None)
    if first is not None and args[first : first + 2] == ["evaluate", "anatomy"]:
        args[first : first + 2] = [ANATOMY_COMMAND]
    return args


def cmd_anatomy(args: argparse.Namespace) -> int:
    import torch

    from xrayfm.data.registry import build_dataset
    from xrayfm.evaluate.anatomy import AnatomySettings, anatomy_embedder, evaluate_anatomy

    settings = AnatomySettings(
        patch_fraction=args.patch_fraction, random_patches=args.random_patches, max_images=args.max_images,
        projection=args.projection, seed=args.seed,
    )  # fmt: skip
    dataset = build_dataset(args.dataset, args.root, args.split, **parse_options(args.option))
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    torch.manual_seed(args.seed)  # a random initialisation is the same on every run
    embed, name = anatomy_embedder(
        args.model, args.pretrained, img_size=args.img_size, device=device, batch_size=args.batch_size
    )
    out = Path(args.out)
    result = evaluate_anatomy(embed, dataset, out, settings=settings, model_name=name)
    loc = result["locality"]
    print(f"{name} on {args.dataset} {args.split}: {result['images']} images "
          f"({result['images_without_landmarks']} without landmarks), {loc['queries']} landmark patches")  # fmt: skip
    print(f"  locality: nearest-neighbour landmark retrieval across patients {loc['accuracy']:.3f} "
          f"(chance {loc['chance']:.3f})")  # fmt: skip
    for landmark, r in loc["per_landmark"].items():
        print(f"    {landmark:<22} {r['accuracy']:.3f}  (n={r['n']})")
    for split, r in result["compositionality"].items():
        if r["median"] is not None:
            print(f"  compositionality {split:<15} median cosine {r['median']:.3f}  "
                  f"(another patch's parts: {r['control_median']:.3f}; n={r['n']})")  # fmt: skip
    print(f"results: {out / 'anatomy.json'}   plots: {out / 'locality.png'}, {out / 'compositionality.png'}")
    return 0


def add_evaluate_anatomy_command(sub: argparse._SubParsersAction) -> None:
    """Register ``evaluate anatomy`` on the top-level subparsers.

    Args:
        sub: The ``xrayfm`` subparsers.
    """
    p = sub.add_parser(
        ANATOMY_COMMAND,
        help="Eve: locality and compositionality of a backbone's patch embeddings on real images",
        description=(
            "Measure how anatomical a backbone's embeddings are (Adam / Eve, Hosseinzadeh Taher et al. 2023) on "
            "images with lung masks (e.g. jsrt, or csv with -o mask_columns=mask; the phantom adds heart "
            "landmarks). Locality: patches centred on landmarks derived from the masks (each lung's apex, "
            "costophrenic and cardiophrenic angles, hilar point) are embedded, and a patch's nearest neighbour "
            "among other patients' patches should be the same landmark: accuracy per landmark and overall, with "
            "its chance level, and a t-SNE map. Compositionality: cosine similarity of E(patch) and the mean "
            "of E(parts) for 2 side-by-side, 3 stacked and 2x2 parts: median and KDE plot, next to a control "
            "(another image's patch's parts). Writes "
            "OUT/anatomy.json, OUT/locality.png and OUT/compositionality.png."
        ),
    )
    p.add_argument(
        "model", help="registry name (with --pretrained), backbone export folder / pretraining run, or finetune run"
    )
    add_data_args(p, split="test", dataset_help="dataset adapter with lung masks, e.g. jsrt, csv, phantom")
    p.add_argument(
        "--pretrained", metavar="FILE|DIR|none",
        help="weights of a registry-name MODEL: a file (Adam / MoCo checkpoints as published, timm, "
        "safetensors), an export folder, or 'none' for random initialisation",
    )  # fmt: skip
    p.add_argument("--out", default="runs/eve", help="output folder (default runs/eve)")
    p.add_argument("--img-size", type=int, help="model input side (default: the model's)")
    p.add_argument("--patch-fraction", type=float, default=0.25, help="patch side / shorter image side (default 0.25)")
    p.add_argument(
        "--random-patches", type=int, default=2, help="random patches per image for compositionality (default 2)"
    )
    p.add_argument("--max-images", type=int, help="use at most this many images, a seeded random subset")
    p.add_argument("--projection", choices=PROJECTIONS, default="tsne", help="2-D map of the locality plot")
    p.add_argument("--batch-size", type=int, default=32, help="patches per forward pass (default 32)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    p.add_argument("--seed", type=int, default=0, help="seed of sampling, random init and t-SNE (default 0)")
    p.set_defaults(func=cmd_anatomy)
