"""The ``xrayfm`` command line: a thin layer over the library functions.

Every subcommand calls one public function; errors the toolkit anticipates (XrayfmError) are
printed as one line and exit with status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xrayfm import __version__
from xrayfm.errors import XrayfmError

log = logging.getLogger("xrayfm")


def parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    """Parse ``key=value`` adapter options; values are Python literals or plain strings.

    ``a,b`` (no brackets) becomes a tuple of strings, so ``-o views=PA,AP`` works.
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise XrayfmError(f"option {pair!r} is not of the form key=value")
        try:
            value: Any = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = tuple(v for v in raw.split(",") if v) if "," in raw else raw
        if isinstance(value, list):
            value = tuple(value)
        out[key.strip()] = value
    return out


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _format_summary(s: dict[str, Any]) -> str:
    """Human-readable text for an inspect summary."""
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
    from xrayfm.data.registry import get_dataset_info, list_datasets

    if args.name:
        info = get_dataset_info(args.name)
        print(f"{info.name}: {info.description}\n\nExpected layout:\n")
        print("\n".join("  " + line for line in info.layout.splitlines()))
        print("\nOptions (-o key=value):")
        for k, v in info.options().items():
            print(f"  {k} = {v!r}")
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


def cmd_inspect(args: argparse.Namespace) -> int:
    from xrayfm.data.inspect import inspect_path

    summary = inspect_path(
        Path(args.path), dataset=args.dataset, split=args.split, check=args.check, **parse_options(args.option)
    )
    if args.json:
        _print_json(summary)
    else:
        print(_format_summary(summary))
    if args.sheet:
        from xrayfm.data.registry import build_dataset
        from xrayfm.report import contact_sheet

        if not summary.get("dataset") or "stats" in summary:
            raise XrayfmError(f"{args.path}: --sheet needs a dataset root with a known layout")
        ds = build_dataset(summary["dataset"], Path(args.path), args.split, **parse_options(args.option))
        print(f"contact sheet: {contact_sheet(ds, args.sheet)}", file=sys.stderr if args.json else sys.stdout)
    return 1 if args.strict and summary.get("problems") else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from xrayfm.data.inspect import inspect_path
    from xrayfm.data.phantom_io import write_phantom_dataset

    out = Path(args.out)
    data = write_phantom_dataset(out / "phantom", n=args.n, seed=args.seed, layout="native", size=args.size)
    from xrayfm.data.registry import build_dataset
    from xrayfm.report import contact_sheet

    summary = inspect_path(data, check=-1)
    (out / "phantom_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    sheet = contact_sheet(build_dataset("phantom", data, "all"), out / "phantom_contact_sheet.png")
    print(_format_summary(summary))
    print(f"\nPretraining EVA-X Ti/16 ({args.img_size} px, pixel target) on the phantom, {args.steps} steps...")
    from xrayfm.pretrain.engine import TrainConfig
    from xrayfm.pretrain.mim_run import run_mim

    run_dir = out / "mim"
    tenth = max(1, args.steps // 10)
    cfg = TrainConfig(
        out_dir=str(run_dir), steps=args.steps, batch_size=16, lr=3e-4, warmup_steps=tenth, accelerator="cpu",
        precision="32-true", checkpoint_every=max(1, args.steps // 4), log_every=tenth,
    )  # fmt: skip
    export = run_mim("phantom", data, img_size=args.img_size, train_config=cfg)
    rows = [r.split(",") for r in (run_dir / "metrics.csv").read_text().splitlines()[1:]]
    print("  step  loss")
    for step, loss, *_ in rows:
        print(f"  {int(step):>4}  {float(loss):.4f}")
    print(
        f"\nDemo finished. It made:\n"
        f"  {data}/            {summary['images']} synthetic chest radiographs with labels, masks and boxes\n"
        f"  {out / 'phantom_summary.json'}  the summary above as JSON\n"
        f"  {sheet}  16 images with their boxes, mask outlines and labels\n"
        f"  {run_dir}/  an EVA-X MIM run (metrics.csv, last.ckpt); backbone exported to {export}\n"
        f"Next: xrayfm inspect {data}   |   xrayfm datasets   |   xrayfm phantom --help"
    )
    return 0


def cmd_pretrain_mim(args: argparse.Namespace) -> int:
    from xrayfm.pretrain.engine import TrainConfig
    from xrayfm.pretrain.mim_run import run_mim

    devices = args.devices if args.devices == "auto" else int(args.devices)
    cfg = TrainConfig(
        out_dir=args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup,
        accumulate=args.accumulate, precision=args.precision, accelerator=args.accelerator, devices=devices,
        num_nodes=args.num_nodes, strategy=args.strategy, seed=args.seed, num_workers=args.workers,
        checkpoint_every=args.checkpoint_every, log_every=args.log_every,
    )  # fmt: skip
    export = run_mim(
        args.dataset, args.root, arch=args.arch, teacher=args.teacher, teacher_arch=args.teacher_arch,
        img_size=args.img_size, mask_ratio=args.mask_ratio, dataset_options=parse_options(args.option),
        train_config=cfg,
    )  # fmt: skip
    print(f"pretraining finished: metrics {Path(args.out) / 'metrics.csv'}, checkpoint {Path(args.out) / 'last.ckpt'}")
    print(f"exported backbone: {export} (load with create_model({args.arch!r}, pretrained={str(args.out)!r}))")
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
            "OUT/export/backbone.safetensors."
        ),
    )
    m.add_argument("dataset", help="dataset adapter (see 'xrayfm datasets'), e.g. phantom")
    m.add_argument("root", help="dataset root")
    m.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE", help="adapter option")
    m.add_argument("--out", default="runs/mim", help="run folder (default runs/mim)")
    m.add_argument("--arch", default="eva_x_tiny_patch16", help="student architecture")
    m.add_argument("--teacher", help="teacher weights: file or xrayfm export folder (default: pixel target)")
    m.add_argument("--teacher-arch", help="teacher architecture (default: from its export, else --arch)")
    m.add_argument("--img-size", type=int, default=224, help="input side, multiple of 16 (default 224)")
    m.add_argument("--mask-ratio", type=float, default=0.3, help="masked share of patches (default 0.3)")
    m.add_argument("--steps", type=int, default=1000, help="optimiser steps (default 1000)")
    m.add_argument("--batch-size", type=int, default=32, help="per-device batch size (default 32)")
    m.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (default 3e-4)")
    m.add_argument("--warmup", type=int, default=100, help="warmup steps (default 100)")
    m.add_argument("--accumulate", type=int, default=1, help="gradient accumulation (default 1)")
    m.add_argument("--precision", default="auto", help="auto | 32-true | bf16-mixed | 16-mixed")
    m.add_argument("--accelerator", default="auto", help="auto | cpu | gpu")
    m.add_argument("--devices", default="1", help="devices per node (int or auto)")
    m.add_argument("--num-nodes", type=int, default=1, help="nodes (default 1)")
    m.add_argument("--strategy", default="auto", help="auto | ddp | fsdp")
    m.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    m.add_argument("--workers", type=int, default=0, help="DataLoader workers (default 0)")
    m.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints")
    m.add_argument("--log-every", type=int, default=10, help="steps between metric rows")
    m.set_defaults(func=cmd_pretrain_mim)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``xrayfm`` command."""
    parser = argparse.ArgumentParser(
        prog="xrayfm",
        description="Toolkit for X-ray foundation models: read X-rays safely, use public datasets, "
        "generate synthetic phantoms.",
        epilog="Run 'xrayfm COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"xrayfm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

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
    p.add_argument("--split", default="all", choices=["train", "val", "test", "all"], help="split (default all)")
    p.add_argument(
        "-o",
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="adapter option, repeatable (see 'xrayfm datasets NAME')",
    )
    p.add_argument(
        "--check", type=int, default=200, help="images to load fully to find problems (default 200; -1 all; 0 none)"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--strict", action="store_true", help="exit 1 when problems are found")
    p.add_argument("--sheet", metavar="PNG", help="also write a contact sheet of 16 samples (boxes, masks, labels)")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser(
        "demo",
        help="run the demo on built-in synthetic data",
        description=(
            "Make a synthetic phantom data set and inspect it (later versions continue into "
            "pretraining, fine-tuning, evaluation and serving)."
        ),
    )
    p.add_argument("--out", default="demo_output", help="output folder (default demo_output)")
    p.add_argument("-n", type=int, default=300, help="number of phantom images (default 300)")
    p.add_argument("--size", type=int, default=256, help="image side (default 256)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--steps", type=int, default=150, help="MIM pretraining steps (default 150)")
    p.add_argument("--img-size", type=int, default=96, help="MIM input side (default 96)")
    p.set_defaults(func=cmd_demo)
    _add_pretrain(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``xrayfm`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args))
    except XrayfmError as exc:
        print(f"xrayfm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("xrayfm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
