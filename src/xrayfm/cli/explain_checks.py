"""The checks of ``xrayfm explain --check`` and the energy-in-lungs figure of ``xrayfm localize``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from xrayfm.errors import XrayfmError


def add_lung_args(p: argparse.ArgumentParser, *, with_mask_file: bool) -> None:
    """The lung mask source options (``--mask`` only where one image is explained)."""
    if with_mask_file:
        group = p.add_mutually_exclusive_group()
        group.add_argument("--mask", help="lung mask PNG of the image (non-zero = lung; implies --check)")
        group.add_argument("--lungs", help="fine-tuned lung segmentation model folder (implies --check)")
    else:
        p.add_argument("--lungs", help="lung segmentation model folder, for datasets without lung masks")
    p.add_argument("--lung-class", help="the lung mask class (default every class whose name contains 'lung')")


def add_check_args(p: argparse.ArgumentParser) -> None:
    """``explain``'s ``--check`` options."""
    p.add_argument(
        "--check",
        action="store_true",
        help="check the heatmap: its energy inside the lungs and the model-randomisation sanity test "
        "(written to OVERLAY_check.json)",
    )
    add_lung_args(p, with_mask_file=True)
    p.add_argument("--random-blocks", type=int, default=2, help="backbone blocks re-initialised, top down (default 2)")


def _print_warning(text: str | None) -> None:
    if text:
        print(f"WARNING: {text}")


def run_explain_checks(
    args: argparse.Namespace, model: Any, x: Any, pixels: Any, task: str | None, index: int | None, heat: Any,
    out: Path,
) -> Path | None:  # fmt: skip
    """Run the checks ``args`` ask for on one explained image; returns the JSON written (None without --check).

    Args:
        args: ``explain``'s arguments.
        model: The classifier.
        x: The image as the model took it (1, 1, S, S).
        pixels: The image itself (H, W), grey [0, 1].
        task: The explained task.
        index: The explained class (None: the top one).
        heat: The heatmap (S, S) at the model's input.
        out: The overlay's path; the JSON goes next to it.
    """
    if not (args.check or args.mask or args.lungs):
        return None
    import numpy as np
    import torch

    from xrayfm.explain.checks import energy_in_mask, lung_energy_summary, mask_fraction, randomisation_test
    from xrayfm.explain.lungs import LungSegmenter, read_lung_mask

    h, w = pixels.shape
    full = model.preprocess.plane_to_original(torch.from_numpy(heat), h, w).numpy()
    lungs: dict[str, Any]
    if args.mask or args.lungs:
        if args.mask:
            inside, valid = read_lung_mask(args.mask)
            source = f"mask file {args.mask}"
        else:
            segmenter = LungSegmenter(args.lungs, args.lung_class)
            inside = segmenter(torch.from_numpy(np.ascontiguousarray(pixels))[None, None])[0]
            valid, source = np.ones(inside.shape, dtype=bool), segmenter.source
        share, area = energy_in_mask(full, inside, valid=valid), mask_fraction(inside, valid=valid)
        lungs = {**lung_energy_summary([share], [area]), "mask_source": source}
        print(f"energy in lungs: {lungs['message']} ({source})")
        _print_warning(lungs["warning"])
    else:
        lungs = {"skipped": "no lung mask given (--mask MASK_PNG or --lungs SEG_MODEL)"}
        print("energy in lungs: not measured, no lung mask given (--mask MASK_PNG or --lungs SEG_MODEL)")
    random = randomisation_test(model, x, index, blocks=args.random_blocks, method=args.method, task=task)
    stages = ", ".join(
        f"{s['randomised'][-1]} {'flat map' if s['mean_spearman'] is None else format(s['mean_spearman'], '.2f')}"
        for s in random["stages"]
    )
    print(f"randomisation test (Spearman rank correlation with the trained model's map, cascading): {stages}")
    _print_warning(random["warning"])
    path = out.with_name(out.stem + "_check.json")
    report = {"image": str(args.image), "method": args.method, "task": task, "class_index": random["classes"],
              "energy_in_lungs": lungs, "randomisation": random}  # fmt: skip
    path.write_text(json.dumps(report, indent=2))
    print(f"checks: {path}")
    return path


def localize_lungs(args: argparse.Namespace, model: Any, dataset: Any, task: str) -> dict[str, Any] | None:
    """``localize``'s energy-in-lungs figure: over the dataset's lung masks, or ``--lungs`` masks; None
    when the dataset has no lung mask and no segmentation model is given."""
    from xrayfm.explain.lungs import LungSegmenter, dataset_lung_energy, lung_channels

    segmenter = LungSegmenter(args.lungs, args.lung_class) if args.lungs else None
    if segmenter is None:
        mask_task = dataset.task_for("mask")
        if mask_task is None:
            return None
        if args.lung_class is None and not any("lung" in c.lower() for c in mask_task.classes):
            return None
        lung_channels(mask_task.classes, args.lung_class)  # a named class must exist
    return dataset_lung_energy(model, dataset, method=args.method, task=task, segmenter=segmenter,
                               lung_class=None if segmenter else args.lung_class)  # fmt: skip


def print_lung_energy(result: dict[str, Any]) -> None:
    """The energy-in-lungs lines of ``localize``."""
    if not result["images"]:
        print(f"energy in lungs ({result['method']}, {result['mask_source']}): {result['message']}")
        return
    skipped = f"; {result['skipped']} images left out (flat map or no lungs found)" if result["skipped"] else ""
    print(f"energy in lungs ({result['method']}, {result['mask_source']}): {result['message']}; "
          f"{result['below_half']:.0%} of the images have most of it outside the lungs{skipped}")  # fmt: skip
    _print_warning(result["warning"])


def no_localization_target(dataset: str, root: str) -> XrayfmError:
    """The error of ``localize`` on a dataset with neither boxes nor lung masks."""
    return XrayfmError(
        f"{dataset} at {root} has no boxes to localize and no lung masks; give --lungs SEG_MODEL "
        "to measure the heatmaps' energy in the lungs"
    )
