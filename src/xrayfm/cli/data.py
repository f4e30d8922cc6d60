"""Data commands of ``xrayfm``: phantom, datasets, inspect and stats; and the recipe listing."""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path
from typing import Any

from xrayfm.cli.args import add_data_args, add_option_arg, add_split_arg
from xrayfm.cli.recipes import find_recipe, list_recipes, parse_options
from xrayfm.errors import XrayfmError


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def format_summary(s: dict[str, Any]) -> str:
    """Human-readable text of an inspect summary.

    Args:
        s: What :func:`xrayfm.data.inspect.inspect_path` returned.

    Returns:
        The summary as lines of text.
    """
    if "stats" in s:
        lines = [f"{s['path']}: {s['width']}x{s['height']}  " + "  ".join(f"{k}={v}" for k, v in s["stats"].items())]
        lines += [f"  {k}: {v}" for k, v in s["meta"].items()]
        return "\n".join(lines)
    head = f"{s['root']}: {s['images']} images"
    if s.get("dataset"):
        head += f" (adapter {s['dataset']}, split {s['split']})"
    lines = [head]
    if s.get("splits"):
        lines.append("  splits: " + ", ".join(f"{k} {v}" for k, v in sorted(s["splits"].items())))
    if s.get("patients"):
        lines.append(f"  patients: {s['patients']}")
    if s.get("formats"):
        lines.append("  formats: " + ", ".join(f"{k or '(none)'} {v}" for k, v in s["formats"].items()))
    for t in s.get("tasks", []):
        lines.append(f"  task {t['name']} ({t['kind']}): {len(t['classes'])} classes")
    if s.get("labels"):
        lines.append(f"  {'label':<28}{'pos':>7}{'neg':>8}{'unknown':>9}{'prev':>8}")
        for c, v in s["labels"].items():
            prev = "-" if v["prevalence"] is None else f"{v['prevalence']:.3f}"
            lines.append(f"  {c:<28}{v['positive']:>7}{v['negative']:>8}{v['unknown']:>9}{prev:>8}")
    if s.get("boxes"):
        b = s["boxes"]
        per = ", ".join(f"{k} {n}" for k, n in b["per_class"].items()) or "none"
        lines.append(f"  boxes: {b['images_with_boxes']} images with boxes of {b['annotated_images']} annotated; {per}")
    if s.get("masks"):
        lines.append(f"  masks: {s['masks']['images_with_masks']} images")
    if s.get("checked"):
        sizes = ", ".join(f"{k} ({v})" for k, v in s.get("image_sizes", {}).items())
        lines.append(f"  checked {s['checked']} images; sizes: {sizes or '-'}")
    problems = s.get("problems", [])
    lines.append(f"  problems: {len(problems)}")
    lines += [f"    - {p}" for p in problems[:20]]
    if len(problems) > 20:
        lines.append(f"    ... and {len(problems) - 20} more (use --json for all)")
    return "\n".join(lines)


def cmd_phantom(args: argparse.Namespace) -> int:
    from xrayfm.data.phantom_io import write_phantom_dataset

    out = write_phantom_dataset(
        Path(args.out), n=args.n, seed=args.seed, layout=args.layout, size=args.size, bits=args.bits, dicom=args.dicom
    )
    print(f"wrote {args.n} synthetic radiographs ({args.layout} layout) to {out}")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from xrayfm.data.registry import SHARED_OPTIONS, get_dataset_info, list_datasets

    if args.name:
        info = get_dataset_info(args.name)
        print(f"{info.name}: {info.description}\n\nExpected layout:\n")
        print("\n".join("  " + line for line in info.layout.splitlines()))
        print("\nOptions (-o key=value):")
        for k, v in info.options().items():
            note = f"   (every adapter: {SHARED_OPTIONS[k].help})" if k in SHARED_OPTIONS else ""
            print(f"  {k} = {v!r}{note}")
        doc = inspect.getdoc(info.builder) or ""
        if doc:
            print("\n" + doc)
        return 0
    infos = list_datasets()
    width = max(len(i.name) for i in infos)
    for info in infos:
        print(f"{info.name:<{width}}  [{', '.join(info.tasks)}]  {info.description}")
    print("\nShow the expected folder layout and options of one: xrayfm datasets NAME")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    if args.name:
        print(find_recipe(args.name).read_text(), end="")
        return 0
    recipes = list_recipes()
    width = max(len(name) for name in recipes)
    for name, path in recipes.items():
        lines = path.read_text().splitlines()
        print(f"{name:<{width}}  {lines[0].lstrip('# ') if lines else ''}")
    print(
        "\nUse one with --config NAME (pretrain mim, pretrain anatomy, finetune, sweep), a foundation_x_* one as "
        "xrayfm pretrain multitask NAME, a pool_* one as a source of xrayfm shards build NAME OUT; print it: "
        "xrayfm recipes NAME"
    )
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from xrayfm.data.inspect import inspect_path

    if args.workers is not None and args.workers < 1:
        raise XrayfmError(f"--workers must be at least 1, got {args.workers}")
    summary = inspect_path(Path(args.path), dataset=args.dataset, split=args.split, check=args.check,
                           workers=args.workers, **parse_options(args.option))  # fmt: skip
    if args.json:
        _print_json(summary)
    else:
        print(format_summary(summary))
    if args.sheet:
        from xrayfm.data.registry import build_dataset
        from xrayfm.report import contact_sheet

        if not summary.get("dataset") or "stats" in summary:
            raise XrayfmError(f"{args.path}: --sheet needs a dataset root with a known layout")
        ds = build_dataset(summary["dataset"], Path(args.path), args.split, **parse_options(args.option))
        print(f"contact sheet: {contact_sheet(ds, args.sheet)}", file=sys.stderr if args.json else sys.stdout)
    return 1 if args.strict and summary.get("problems") else 0


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


def add_data_commands(sub: argparse._SubParsersAction) -> None:
    """Register phantom, datasets, recipes, inspect and stats on the top-level subparsers.

    Args:
        sub: The ``xrayfm`` subparsers.
    """
    p = sub.add_parser(
        "phantom",
        help="write a synthetic chest-radiograph data set",
        description=(
            "Write deterministic synthetic chest radiographs with findings, anatomy/lesion masks and "
            "lesion boxes, in xrayfm's native layout or the folder layout of a public dataset."
        ),
    )
    p.add_argument("out", help="output folder")
    p.add_argument("-n", type=int, default=200, help="number of images (default 200)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--layout",
        default="native",
        choices=["native", "nih_cxr14", "shenzhen", "montgomery", "coco"],
        help="folder layout to write (default native)",
    )
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    p.add_argument("--bits", type=int, default=8, choices=[8, 16], help="PNG bit depth (default 8)")
    p.add_argument("--dicom", action="store_true", help="write DICOM instead of PNG (native layout)")
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser(
        "datasets",
        help="list dataset adapters, or show one's layout and options",
        description="List the dataset adapters, or show the folder layout and options of one.",
    )
    p.add_argument("name", nargs="?", help="adapter to describe")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser(
        "recipes",
        help="list the shipped --config recipes, or print one",
        description=(
            "List the YAML recipes shipped with xrayfm (the papers' settings), or print one. "
            "--config takes a recipe name or a YAML file; options on the command line override it."
        ),
    )
    p.add_argument("name", nargs="?", help="recipe to print")
    p.set_defaults(func=cmd_recipes)

    p = sub.add_parser(
        "inspect",
        help="summarise an image file or a dataset folder",
        description=(
            "Summarise one image (format, size, intensities, safe metadata) or a dataset root "
            "(counts, label prevalence, boxes, masks, image sizes, problems found). The dataset "
            "layout is detected from its label files unless --dataset names it."
        ),
    )
    p.add_argument("path", help="image file or dataset root")
    p.add_argument("--dataset", help="adapter name (default: detect from the files)")
    add_split_arg(p, "all")
    add_option_arg(p)
    p.add_argument(
        "--check", type=int, default=200, help="images to load fully to find problems (default 200; -1 all; 0 none)"
    )
    p.add_argument(
        "--workers", type=int,
        help="images checked at once (default: the usable cores, at most 8); compressed DICOM decoded in as many "
             "child processes",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--strict", action="store_true", help="exit 1 when problems are found")
    p.add_argument("--sheet", metavar="PNG", help="also write a contact sheet of 16 samples (boxes, masks, labels)")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser(
        "stats",
        help="mean / std of a dataset's pixels (for normalisation)",
        description="Compute the mean and std of grey [0,1] pixels over a seeded sample of a dataset split.",
    )
    add_data_args(p, split="train")
    p.add_argument("--size", type=int, default=224, help="resize side before counting (default 224)")
    p.add_argument("--max-images", type=int, default=2000, help="images sampled, -1 = all (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_stats)
