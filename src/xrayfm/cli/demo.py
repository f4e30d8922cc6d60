"""``xrayfm demo``: the whole workflow on built-in synthetic data.

``--pretrain`` picks the pretraining the demo shows before fine-tuning: ``mim`` (EVA-X Ti/16 by
masked image modeling, the default), ``anatomy`` (Adam: ResNet-18, stages n = 0 then 2 of
anatomy-aware MoCo-v2), ``multitask`` (Foundation X: ResNet-18 with findings, organ-mask and
lesion-box heads trained by the Cyclic & Lock-Release schedule of the shipped phantom recipe),
``both`` (mim and anatomy) or ``all``; each is fine-tuned and evaluated the same way in its own folder.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from xrayfm.cli.data import format_summary
from xrayfm.cli.finetune import format_estimate

#: ``--pretrain`` choices: the names of ``xrayfm pretrain METHOD``, ``both`` (mim, anatomy) or ``all``.
PRETRAIN_CHOICES = ("mim", "anatomy", "multitask", "both", "all")
#: The methods each choice runs.
PRETRAIN_METHODS = {"both": ("mim", "anatomy"), "all": ("mim", "anatomy", "multitask")}
#: The demo's Adam run: a small backbone and two stages, so it takes minutes on 2 CPU cores.
ANATOMY_ARCH, ANATOMY_STAGES, ANATOMY_BATCH, ANATOMY_QUEUE = "resnet18", (0, 2), 16, 256
#: The demo's Foundation X run: the shipped phantom recipe (two cycles of three units) on a small backbone.
MULTITASK_ARCH, MULTITASK_RECIPE, MULTITASK_BATCH = "resnet18", "foundation_x_phantom", 8


def _metric_rows(path: Path) -> list[tuple[int, float]]:
    """(step, loss) of each row of a run's ``metrics.csv``."""
    rows = [r.split(",") for r in path.read_text().splitlines()[1:]]
    return [(int(step), float(loss)) for step, loss, *_ in rows]


def _print_losses(rows: list[tuple[int, float]]) -> None:
    print("  step  loss")
    for step, loss in rows:
        print(f"  {step:>4}  {loss:.4f}")


def _pretrain_mim(args: argparse.Namespace, data: Path, out: Path) -> tuple[Path, Path]:
    """The EVA-X MIM run of the demo: (run folder, exported backbone)."""
    from xrayfm.pretrain.mim_run import run_mim
    from xrayfm.train import TrainConfig

    print(f"\nPretraining EVA-X Ti/16 ({args.img_size} px, pixel target) on the phantom, {args.steps} steps...")
    run_dir = out / "mim"
    tenth = max(1, args.steps // 10)
    cfg = TrainConfig(
        out_dir=str(run_dir), steps=args.steps, batch_size=16, lr=3e-4, warmup_steps=tenth, accelerator="cpu",
        precision="32-true", checkpoint_every=max(1, args.steps // 4), log_every=tenth,
    )  # fmt: skip
    export = run_mim("phantom", data, img_size=args.img_size, train_config=cfg)
    _print_losses(_metric_rows(run_dir / "metrics.csv"))
    return run_dir, export


def _pretrain_anatomy(args: argparse.Namespace, data: Path, out: Path) -> tuple[Path, Path]:
    """The Adam run of the demo (stages n = 0 then 2, each ``args.anatomy_steps``): (run folder, export)."""
    from xrayfm.pretrain.anatomy_run import run_anatomy
    from xrayfm.train import TrainConfig

    steps = args.anatomy_steps
    stages = ",".join(map(str, ANATOMY_STAGES))
    print(
        f"\nPretraining ResNet-18 with Adam ({args.img_size} px views, stages n = {stages}, {steps} steps each, "
        f"queue {ANATOMY_QUEUE}) on the phantom..."
    )
    run_dir = out / "anatomy"
    cfg = TrainConfig(
        out_dir=str(run_dir), steps=steps, batch_size=ANATOMY_BATCH, optimizer="sgd", lr=0.03, min_lr=0.0,
        momentum=0.9, weight_decay=1e-4, warmup_steps=0, clip_grad=0.0, accelerator="cpu", precision="32-true",
        checkpoint_every=max(1, steps // 2), log_every=max(1, steps // 5),
    )  # fmt: skip
    export = run_anatomy(
        "phantom", data, stages=ANATOMY_STAGES, arch=ANATOMY_ARCH, img_size=args.img_size, queue_size=ANATOMY_QUEUE,
        train_config=cfg,
    )  # fmt: skip
    summary = json.loads((run_dir / "summary.json").read_text())
    for stage in summary["stages"]:
        n = stage["granularity"]
        val = "" if stage["val_loss"] is None else f", validation loss {stage['val_loss']:.4f}"
        if stage.get("best_val_loss") is not None:
            val += f" (best {stage['best_val_loss']:.4f} at step {stage['best_step']}, exported)"
        what = f"one cell of a {n}x{n} grid, purposive pruner on" if n else "the whole image"
        print(f"  stage n={n} ({what}){val}")
        _print_losses(_metric_rows(run_dir / f"stage_n{n}" / "metrics.csv"))
    return run_dir, export


def _pretrain_multitask(args: argparse.Namespace, data: Path, out: Path) -> tuple[Path, Path]:
    """The Foundation X run of the demo (the shipped phantom recipe, ``args.multitask_steps`` at most)."""
    from xrayfm.cli.recipes import find_recipe
    from xrayfm.pretrain.multitask_run import run_multitask
    from xrayfm.train import TrainConfig

    print(
        f"\nPretraining ResNet-18 with Foundation X ({args.img_size} px; recipe {MULTITASK_RECIPE}: findings, "
        "organ masks and lesion boxes as three datasets, cyclic units, lock then release, EMA teacher)..."
    )
    run_dir = out / "multitask"
    cfg = TrainConfig(
        out_dir=str(run_dir), batch_size=MULTITASK_BATCH, lr=1e-4, weight_decay=1e-4, warmup_steps=0, clip_grad=0.1,
        accelerator="cpu", precision="32-true", checkpoint_every=25, log_every=10,
    )  # fmt: skip
    export = run_multitask(
        find_recipe(MULTITASK_RECIPE), run_dir, cfg, arch=MULTITASK_ARCH, img_size=args.img_size, data_root=data.parent,
        max_steps=args.multitask_steps,
    )  # fmt: skip
    phases = (run_dir / "phases.csv").read_text().splitlines()[1:]
    print("  phase  unit               locked  steps")
    for row in phases:
        phase, _cycle, unit, _kind, locked, first, last = row.split(",")
        print(f"  {phase:>5}  {unit:<18} {'yes' if locked == '1' else 'no':<7} {first}-{last}")
    return run_dir, export


def _finetune(
    args: argparse.Namespace, data: Path, ft_dir: Path, arch: str, pretrained: Path, what: str
) -> dict[str, Any]:
    """Fine-tune ``arch`` from ``pretrained`` for findings and masks, evaluate on test, print the headline."""
    from xrayfm.finetune.run import FinetuneConfig, run_finetune
    from xrayfm.train import TrainConfig

    steps = args.finetune_steps
    print(f"\nFine-tuning {what} for findings + lung/heart/lesion masks ({steps} steps), then evaluating...")
    tenth = max(1, steps // 10)
    vit = arch.startswith("eva_x")
    ft = FinetuneConfig(
        dataset="phantom", root=str(data), tasks=["labels", "masks"], arch=arch, pretrained=str(pretrained),
        img_size=args.img_size, mode="full", layer_decay=0.75 if vit else None, n_boot=200, eval_splits=("test",),
        train=TrainConfig(
            out_dir=str(ft_dir), steps=steps, batch_size=16, lr=1e-3, warmup_steps=tenth,
            clip_grad=0.0, accelerator="cpu", precision="32-true",
            checkpoint_every=max(1, steps // 2), log_every=tenth,
        ),
    )  # fmt: skip
    result = run_finetune(ft)["evaluations"]["test"]
    print("  task     metric        value   [95% CI]")
    for task, res in result["tasks"].items():
        for name, ci in res["headline"].items():
            if ci["value"] is not None:
                print(f"  {task:<8} {name:<12} {format_estimate(ci)}")
    return result


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
    print(format_summary(summary))
    made = [
        f"  {data}/            {summary['images']} synthetic chest radiographs with labels, masks and boxes",
        f"  {out / 'phantom_summary.json'}  the summary above as JSON",
        f"  {sheet}  16 images with their boxes, mask outlines and labels",
    ]
    finetuned: list[Path] = []
    methods = PRETRAIN_METHODS.get(args.pretrain, (args.pretrain,))
    if "mim" in methods:
        run_dir, export = _pretrain_mim(args, data, out)
        ft_dir = out / "finetune"
        result = _finetune(args, data, ft_dir, "eva_x_tiny_patch16", run_dir, "it")
        finetuned.append(ft_dir)
        made += [
            f"  {run_dir}/  an EVA-X MIM run (config.yaml, metrics.csv, last.ckpt); backbone exported to {export}",
            f"  {ft_dir / 'model'}/  the fine-tuned model (classification + segmentation heads)",
            f"  {ft_dir / 'config.yaml'}  its settings, as options: xrayfm finetune --config accepts it",
            f"  {result['report']}  the evaluation report (ROC curves, Dice, mask overlays): open it in a browser",
        ]
    if "anatomy" in methods:
        run_dir, export = _pretrain_anatomy(args, data, out)
        ft_dir = out / "finetune_anatomy"
        result = _finetune(args, data, ft_dir, ANATOMY_ARCH, run_dir, "the Adam ResNet-18")
        finetuned.append(ft_dir)
        made += [
            f"  {run_dir}/  an Adam run: stage_n0/, stage_n2/ (metrics.csv, val_metrics.csv, last.ckpt, "
            f"best.safetensors, export/), summary.json; backbone exported to {export}",
            f"  {ft_dir / 'model'}/  the fine-tuned Adam ResNet-18 (classification + segmentation heads)",
            f"  {result['report']}  its evaluation report: open it in a browser",
        ]
    if "multitask" in methods:
        run_dir, export = _pretrain_multitask(args, data, out)
        ft_dir = out / "finetune_multitask"
        result = _finetune(args, data, ft_dir, MULTITASK_ARCH, run_dir, "the Foundation X ResNet-18")
        finetuned.append(ft_dir)
        made += [
            f"  {run_dir}/  a Foundation X run (phases.csv, metrics.csv, last.ckpt; model/ holds every head, student "
            f"and teacher); backbone exported to {export}",
            f"  {ft_dir / 'model'}/  the fine-tuned Foundation X ResNet-18 (classification + segmentation heads)",
            f"  {result['report']}  its evaluation report: open it in a browser",
        ]
    ft_dir = finetuned[0]
    image = next(iter(sorted((data / "images").glob("*.png"))))
    nexts = [
        f"Explain a finding:  xrayfm explain {ft_dir} {image}",
        f"Serve the model:    xrayfm serve {ft_dir} --port 8000   then open http://127.0.0.1:8000/",
        f"Export to ONNX:     xrayfm export onnx {ft_dir}   then serve it with --backend onnx",
    ]
    if len(finetuned) >= 2:
        nexts.append(f"Compare two:        xrayfm compare {finetuned[0]} {finetuned[1]} phantom {data} --split test")
    nexts.append(f"Next: xrayfm evaluate {ft_dir} phantom {data} --split val   |   xrayfm finetune --help")
    print("\nDemo finished. It made:\n" + "\n".join(made + nexts))
    return 0


def add_demo_command(sub: argparse._SubParsersAction) -> None:
    """Register demo on the top-level subparsers.

    Args:
        sub: The ``xrayfm`` subparsers.
    """
    p = sub.add_parser(
        "demo",
        help="run the demo on built-in synthetic data",
        description=(
            "Make a synthetic phantom data set and inspect it, pretrain a small EVA-X on it by MIM (or a "
            "ResNet-18 with Adam, --pretrain anatomy, or with Foundation X, --pretrain multitask; both, all), "
            "fine-tune it for findings and masks, evaluate "
            "it with confidence intervals and write an HTML report."
        ),
    )
    p.add_argument("--out", default="demo_output", help="output folder (default demo_output)")
    p.add_argument("-n", type=int, default=300, help="number of phantom images (default 300)")
    p.add_argument("--size", type=int, default=256, help="image side (default 256)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--pretrain", choices=PRETRAIN_CHOICES, default="mim",
        help="mim: EVA-X Ti/16 by masked image modeling (default); anatomy: ResNet-18 by Adam, stages n = 0, 2; "
        "multitask: ResNet-18 by Foundation X (phantom recipe); both: mim and anatomy; all: the three, fine-tuned "
        "alike",
    )  # fmt: skip
    p.add_argument("--steps", type=int, default=150, help="MIM pretraining steps (default 150)")
    p.add_argument("--anatomy-steps", type=int, default=40, help="Adam pretraining steps per stage (default 40)")
    p.add_argument("--multitask-steps", type=int, default=None,
                   help="Foundation X steps (default: the recipe's whole schedule, two cycles)")  # fmt: skip
    p.add_argument("--img-size", type=int, default=96, help="input side of pretraining and fine-tuning (default 96)")
    p.add_argument("--finetune-steps", type=int, default=150, help="fine-tuning steps (default 150)")
    p.set_defaults(func=cmd_demo)
