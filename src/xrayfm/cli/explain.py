"""Explanation commands of ``xrayfm``: explain one image, score weak localization."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from xrayfm.cli.args import add_data_args, add_model_arg
from xrayfm.cli.explain_checks import (
    add_check_args,
    add_lung_args,
    localize_lungs,
    no_localization_target,
    print_lung_energy,
    run_explain_checks,
)
from xrayfm.cli.recipes import parse_options
from xrayfm.errors import XrayfmError
from xrayfm.tasks import CLASSIFICATION_KINDS

ATTENTION_METHODS = ("rollout", "attention")
#: The keys of :data:`xrayfm.explain.gradcam.CAM_METHODS` (not imported here: grad-cam loads
#: OpenCV and scikit-learn, which would slow every command's start).
CAM_NAMES = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigencam")
#: :data:`xrayfm.explain.overlays.MAX_SIDE`, the overlay's default longest side (not imported, as above).
MAX_SIDE = 1024
#: What the heatmap overlay can be saved as.
OUT_SUFFIXES = (".png", ".jpg", ".jpeg")


def _class_index(meta: dict[str, Any], task: str | None, name: str | None) -> tuple[str | None, int | None]:
    specs = [t for t in meta["tasks"] if t["kind"] in CLASSIFICATION_KINDS]
    spec = next((t for t in specs if t["name"] == task), specs[0] if specs and task is None else None)
    if name is None:
        return (spec["name"] if spec else task), None
    if spec is None or name not in spec["classes"]:
        known = spec["classes"] if spec else []
        raise XrayfmError(f"unknown class {name!r}; the model's classes: {known}")
    return spec["name"], spec["classes"].index(name)


def _overlay_path(out: str | None, image: str, method: str) -> Path:
    """Where explain writes its overlay: ``--out``, or ``IMAGE_METHOD.png`` here or in the folder ``--out``."""
    name = Path(image).with_suffix("").name + f"_{method}.png"
    if out is None:
        return Path(name)
    path = Path(out)
    if path.is_dir():
        return path / name
    if path.suffix.lower() not in OUT_SUFFIXES:
        raise XrayfmError(
            f"--out {out}: the overlay is an image, so its name must end in {', '.join(OUT_SUFFIXES)} "
            "(or name an existing folder to write IMAGE_METHOD.png into)"
        )
    return path


def _point(text: str | None) -> tuple[float, float]:
    """The ``--point x,y`` query point (default the centre)."""
    if not text:
        return (0.5, 0.5)
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise XrayfmError(f"--point must be x,y in [0, 1], got {text!r}") from None
    return (x, y)


def cmd_explain(args: argparse.Namespace) -> int:
    out = _overlay_path(args.out, args.image, args.method)  # mistakes first, before the slow imports
    point = _point(args.point)
    if args.max_side < 1:
        raise XrayfmError(f"--max-side must be a positive number of pixels, got {args.max_side}")

    import numpy as np
    import torch

    from xrayfm.explain import explain_batch, explanation_image
    from xrayfm.io.sandbox import DecodeSandbox
    from xrayfm.models.task_checkpoint import load_task_model
    from xrayfm.tasks import probabilities

    model, meta = load_task_model(args.model)
    with DecodeSandbox(1) as sandbox:  # compressed DICOM in a child: a decoder crash is one error line
        image = sandbox.read_file(args.image)
    x = model.preprocess.prepare(torch.from_numpy(np.ascontiguousarray(image.pixels)))
    task, index = _class_index(meta, args.task, args.class_name)
    explained = explain_batch(model, x, method=args.method, task=task, class_index=index, point=point)
    heat = explained.maps[0]
    what = args.method if args.method in ATTENTION_METHODS else f"{args.method} of {task}"
    if explained.classes is not None:
        what += " / " + next(t for t in model.tasks if t.name == task).classes[explained.classes[0]]
    h, w = image.pixels.shape

    def on_image(plane: np.ndarray) -> np.ndarray:  # the check's geometry: the model's resize and crop undone
        return model.preprocess.plane_to_original(torch.from_numpy(plane), h, w).numpy()

    caption = f"{what}, colours scaled to this image's map"
    coverage = on_image(np.ones_like(heat))  # 0 where a centre crop cut the image away
    picture = explanation_image(
        image.pixels, on_image(heat), coverage=coverage, alpha=args.alpha, max_side=args.max_side, caption=caption
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(out)
    run_explain_checks(args, model, x, image.pixels, task, index, heat, out)
    with torch.no_grad():
        outputs = model(x)
    for t in model.tasks:
        if t.kind in CLASSIFICATION_KINDS:
            probs = probabilities(t.kind, outputs[t.name])[0].tolist()
            ranked = sorted(zip(t.classes, probs), key=lambda cp: -cp[1])
            print(f"{t.name}: " + ", ".join(f"{c} {p:.3f}" for c, p in ranked))
    print(f"heatmap ({what}) over the image: {out}")
    return 0


def cmd_localize(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from xrayfm.data.registry import build_dataset
    from xrayfm.explain import compute_heatmap
    from xrayfm.explain.localization import weak_localization
    from xrayfm.models.task_checkpoint import load_task_model

    model, meta = load_task_model(args.model)
    transform = model.preprocess.eval_transform()
    ds = build_dataset(args.dataset, args.root, args.split, transform=transform, **parse_options(args.option))
    box_task = ds.task_for("boxes")
    task, _ = _class_index(meta, args.task, None)
    if task is None:
        raise XrayfmError("the model has no classification task to explain")
    classes = next(t["classes"] for t in meta["tasks"] if t["name"] == task)

    def explain(image: torch.Tensor, k: int) -> np.ndarray:
        return compute_heatmap(model, image, method=args.method, task=task, class_index=k)[0]

    lungs = localize_lungs(args, model, ds, task)
    if box_task is None and lungs is None:
        raise no_localization_target(args.dataset, args.root)
    result = weak_localization(explain, ds, classes, box_task.classes) if box_task is not None else {}
    result.update(method=args.method, task=task, dataset=args.dataset, split=args.split)
    if lungs is not None:
        result["energy_in_lungs"] = lungs
    out = Path(args.out or Path(args.model) / f"localization_{args.dataset}_{args.split}_{args.method}.json")
    out.write_text(json.dumps(result, indent=2))
    if box_task is not None:
        best = result["best"]
        print(f"{result['cases']} (image, class) cases with reference boxes; classes {result['classes']}")
        print(f"best threshold {result['best_threshold']:g} of the map's maximum: "
              + ", ".join(f"accuracy@{k.replace('iou_', 'IoU')} {v:.3f}" for k, v in best["accuracy"].items())
              + f", AP@0.5 {best['ap_50'] if best['ap_50'] is None else round(best['ap_50'], 3)}")  # fmt: skip
    if lungs is not None:
        print_lung_energy(lungs)
    print(f"all figures: {out}")
    return 0


def add_explain_commands(sub: argparse._SubParsersAction) -> None:
    """Register explain and localize on the top-level subparsers.

    Args:
        sub: The ``xrayfm`` subparsers.
    """
    methods = [*CAM_NAMES, *ATTENTION_METHODS]
    p = sub.add_parser(
        "explain",
        help="heatmap of why a model decided, over an image",
        description=(
            "Print a fine-tuned model's findings for one image (PNG/JPEG/DICOM) and write a heatmap "
            "overlay: a Grad-CAM family map of a class, attention rollout, or the raw attention of "
            "one patch (--method attention --point x,y). The overlay shows the image at its own resolution "
            "(longer side capped by --max-side) with the map laid back onto it through the model's resize "
            "and crop, and a colour bar naming the method and class. --check adds the share of the map's energy "
            "in the lungs (--mask or --lungs) and the model-randomisation sanity test."
        ),
    )
    add_model_arg(p)
    p.add_argument("image", help="image file")
    p.add_argument("--method", default="gradcam", choices=methods, help="heatmap method (default gradcam)")
    p.add_argument("--task", help="classification task (default the first)")
    p.add_argument("--class", dest="class_name", help="class to explain (default the top-scoring one)")
    p.add_argument("--point", help="query point x,y in [0, 1] for --method attention (default centre)")
    p.add_argument("--alpha", type=float, default=0.45, help="heatmap opacity (default 0.45)")
    p.add_argument(
        "--max-side",
        type=int,
        default=MAX_SIDE,
        help=f"longest side of the overlay's image in pixels; larger images are shrunk (default {MAX_SIDE})",
    )
    p.add_argument("--out", help="output PNG or JPEG, or a folder (default IMAGE_METHOD.png here)")
    add_check_args(p)
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser(
        "localize",
        help="weak localization: heatmap boxes against reference boxes",
        description=(
            "Score how well a classifier's heatmaps find a dataset's reference boxes (EVA-X "
            "protocol): threshold search, localization accuracy at IoU 0.1/0.25/0.5 and AP@0.5; and, where "
            "the dataset has lung masks or --lungs gives a segmentation model, the share of each "
            "heatmap's energy inside the lungs against the lungs' share of the image."
        ),
    )
    add_model_arg(p)
    add_data_args(p, split="test", dataset_help="dataset adapter with boxes (nih_cxr14, phantom, csv...)")
    p.add_argument("--method", default="gradcam", choices=methods, help="heatmap method (default gradcam)")
    p.add_argument("--task", help="classification task (default the first)")
    p.add_argument("--out", help="result JSON (default in the model folder)")
    add_lung_args(p, with_mask_file=False)
    p.set_defaults(func=cmd_localize)
