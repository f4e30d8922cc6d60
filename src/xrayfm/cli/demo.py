"""``xrayfm demo``: the whole workflow on built-in synthetic data."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from xrayfm.cli.data import format_summary
from xrayfm.cli.finetune import format_estimate


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
    print(f"\nPretraining EVA-X Ti/16 ({args.img_size} px, pixel target) on the phantom, {args.steps} steps...")
    from xrayfm.pretrain.mim_run import run_mim
    from xrayfm.train import TrainConfig

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
                print(f"  {task:<8} {name:<12} {format_estimate(ci)}")
    print(
        f"\nDemo finished. It made:\n"
        f"  {data}/            {summary['images']} synthetic chest radiographs with labels, masks and boxes\n"
        f"  {out / 'phantom_summary.json'}  the summary above as JSON\n"
        f"  {sheet}  16 images with their boxes, mask outlines and labels\n"
        f"  {run_dir}/  an EVA-X MIM run (config.yaml, metrics.csv, last.ckpt); backbone exported to {export}\n"
        f"  {ft_dir / 'model'}/  the fine-tuned model (classification + segmentation heads)\n"
        f"  {ft_dir / 'config.yaml'}  its settings, as options: xrayfm finetune --config accepts it\n"
        f"  {result['report']}  the evaluation report (ROC curves, Dice, mask overlays): open it in a browser\n"
        f"Explain a finding:  xrayfm explain {ft_dir} {next(iter(sorted((data / 'images').glob('*.png'))))}\n"
        f"Serve the model:    xrayfm serve {ft_dir} --port 8000   then open http://127.0.0.1:8000/\n"
        f"Export to ONNX:     xrayfm export onnx {ft_dir}   then serve it with --backend onnx\n"
        f"Next: xrayfm evaluate {ft_dir} phantom {data} --split val   |   xrayfm finetune --help"
    )
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
