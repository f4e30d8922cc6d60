"""The ``xrayfm`` command line: a thin layer over the library functions.

Every subcommand calls one public function; errors the toolkit anticipates (XrayfmError) are
printed as one line and exit with status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xrayfm import __version__
from xrayfm.cli_deploy import add_export_command, add_serve_command
from xrayfm.cli_explain import add_explain_commands
from xrayfm.cli_train import add_training_commands
from xrayfm.config import parse_options, parse_with_recipe
from xrayfm.errors import XrayfmError

log = logging.getLogger("xrayfm")


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

    print(f"\nFine-tuning it for findings + lung/heart/lesion masks ({args.finetune_steps} steps), then evaluating...")
    from xrayfm.finetune.run import FinetuneConfig, run_finetune

    ft_dir = out / "finetune"
    ft = FinetuneConfig(
        dataset="phantom", root=str(data), tasks=["labels", "masks"], arch="eva_x_tiny_patch16",
        pretrained=str(run_dir), img_size=args.img_size, mode="full", layer_decay=0.75, n_boot=200,
        eval_splits=("test",),
        train=TrainConfig(
            out_dir=str(ft_dir), steps=args.finetune_steps, batch_size=16, lr=1e-3, warmup_steps=tenth,
            clip_grad=0.0, accelerator="cpu", precision="32-true",
            checkpoint_every=max(1, args.finetune_steps // 2), log_every=tenth,
        ),
    )  # fmt: skip
    result = run_finetune(ft)["evaluations"]["test"]
    print("  task     metric        value   [95% CI]")
    for task, res in result["tasks"].items():
        for name, ci in res["headline"].items():
            if ci["value"] is not None:
                print(f"  {task:<8} {name:<12} {ci['value']:.4f}  [{ci['low']:.4f}, {ci['high']:.4f}]")
    print(
        f"\nDemo finished. It made:\n"
        f"  {data}/            {summary['images']} synthetic chest radiographs with labels, masks and boxes\n"
        f"  {out / 'phantom_summary.json'}  the summary above as JSON\n"
        f"  {sheet}  16 images with their boxes, mask outlines and labels\n"
        f"  {run_dir}/  an EVA-X MIM run (metrics.csv, last.ckpt); backbone exported to {export}\n"
        f"  {ft_dir / 'model'}/  the fine-tuned model (classification + segmentation heads)\n"
        f"  {result['report']}  the evaluation report (ROC curves, Dice, mask overlays): open it in a browser\n"
        f"Explain a finding:  xrayfm explain {ft_dir} {next(iter(sorted((data / 'images').glob('*.png'))))}\n"
        f"Serve the model:    xrayfm serve {ft_dir} --port 8000   then open http://127.0.0.1:8000/\n"
        f"Export to ONNX:     xrayfm export onnx {ft_dir}   then serve it with --backend onnx\n"
        f"Next: xrayfm evaluate {ft_dir} phantom {data} --split val   |   xrayfm finetune --help"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``xrayfm`` command."""
    parser = argparse.ArgumentParser(
        prog="xrayfm",
        description="Toolkit for X-ray foundation models: read X-rays safely, use public datasets, "
        "generate synthetic phantoms, pretrain EVA-X, fine-tune, evaluate, explain, serve and export.",
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
            "Make a synthetic phantom data set and inspect it, pretrain a small EVA-X on it by MIM, "
            "fine-tune it for findings and masks, evaluate it with confidence intervals and write "
            "an HTML report."
        ),
    )
    p.add_argument("--out", default="demo_output", help="output folder (default demo_output)")
    p.add_argument("-n", type=int, default=300, help="number of phantom images (default 300)")
    p.add_argument("--size", type=int, default=256, help="image side (default 256)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--steps", type=int, default=150, help="MIM pretraining steps (default 150)")
    p.add_argument("--img-size", type=int, default=96, help="input side of pretraining and fine-tuning (default 96)")
    p.add_argument("--finetune-steps", type=int, default=150, help="fine-tuning steps (default 150)")
    p.set_defaults(func=cmd_demo)
    add_training_commands(sub)
    add_explain_commands(sub)
    add_serve_command(sub)
    add_export_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``xrayfm`` console script."""
    try:
        args = parse_with_recipe(build_parser(), argv)
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
        )
        return int(args.func(args))
    except XrayfmError as exc:
        print(f"xrayfm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("xrayfm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
