"""Accuracy of a reduced-precision model against fp32 on held-out real images, checked at export.

A bf16 or int8 model is only worth serving if it scores as the fp32 one does. Both are run on
the same held-out images — the test split (else val) of the dataset the model was fine-tuned on,
as its ``model.json`` provenance records it, or images named with ``--check-data ADAPTER:ROOT`` —
read through the model's own evaluation preprocessing, and scored as evaluation scores them:
mean AUROC per classification task, mean Dice per segmentation task, box mAP@0.5 per detection
task (the int8 graph gives the detection head's dense outputs; proposals and NMS stay in PyTorch,
as when served). A change larger than the tolerance refuses the export. :func:`export_checked` is
``xrayfm export onnx --precision``: :func:`~xrayfm.models.onnx_export.export_onnx`, then this check,
written into ``onnx.json``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from xrayfm.errors import XrayfmError
from xrayfm.evaluate.box_metrics import detection_metrics
from xrayfm.evaluate.metrics import classification_metrics, segmentation_metrics
from xrayfm.evaluate.predict import predict
from xrayfm.io.atomic import atomic_write_json
from xrayfm.models.onnx_detection import onnx_task_outputs
from xrayfm.models.onnx_model import INT8_FILE, ONNX_FILE, ONNX_SIDECAR, OnnxModel
from xrayfm.models.precision import DEFAULT_TOLERANCE, PRECISION_BACKEND, PrecisionError, check_precision, no_grad_at
from xrayfm.models.preprocess import Preprocess, resolve_preprocess
from xrayfm.models.recorded_images import first_split, spread
from xrayfm.models.task_checkpoint import find_task_model, load_task_model
from xrayfm.models.task_model import XrayModel
from xrayfm.tasks import CLASSIFICATION_KINDS, TaskSpec

log = logging.getLogger(__name__)

Forward = Callable[[torch.Tensor], dict[str, Any]]
#: The metric each task kind is checked with.
METRIC = {"multilabel": "auroc", "multiclass": "auroc", "segmentation": "dice", "detection": "map_50"}


class _TaskForward(nn.Module):
    """A forward function with the ``tasks`` attribute :func:`~xrayfm.evaluate.predict.predict` reads."""

    def __init__(self, fn: Forward, tasks: Sequence[TaskSpec]) -> None:
        super().__init__()
        self.fn, self.tasks = fn, list(tasks)

    def forward(self, x: torch.Tensor) -> dict[str, Any]:
        """The outputs, boxes and scores as float32 (a bf16 pass gives bf16 ones, which numpy cannot hold)."""
        out = self.fn(x)
        for name, value in out.items():
            if isinstance(value, list):
                out[name] = [{k: v.float() if v.is_floating_point() else v for k, v in d.items()} for d in value]
        return out


def held_out_images(
    meta: dict[str, Any], preprocess: Preprocess, check_data: str | None = None, *, limit: int = 200
) -> tuple[Any, dict[str, Any]]:
    """Held-out images to compare precisions on, and where they came from.

    Args:
        meta: The model's ``model.json`` (its ``provenance`` names the fine-tuning dataset).
        preprocess: The model's preprocessing record (the evaluation view is used).
        check_data: ``ADAPTER:ROOT`` to use instead (its test, val, else all images).
        limit: Most images used, spread over the split.

    Returns:
        The dataset and ``{"dataset", "root", "split", "images"}``.

    Raises:
        PrecisionError: No held-out image is available.
    """
    if check_data is not None:
        name, sep, root = check_data.partition(":")
        if not sep or not name or not root:
            raise XrayfmError(f"--check-data takes ADAPTER:ROOT (e.g. jsrt:/data/jsrt), got {check_data!r}")
        options, splits = {}, ("test", "val", "all")
    else:
        prov = meta.get("provenance") or {}
        name, root, options, splits = prov.get("dataset"), prov.get("root"), prov.get("dataset_options") or {}, ()
        if name and root:
            splits = ("test", "val")
    ds, split = first_split(name, root, splits, preprocess, options) if splits else (None, "no dataset recorded")
    if ds is None:
        raise PrecisionError(
            f"no held-out images to check the reduced precision against fp32 ({split}); "
            "give some with --check-data ADAPTER:ROOT"
        )
    ds = spread(ds, limit)
    return ds, {"dataset": name, "root": str(root), "split": split, "images": len(ds)}


def _scores(model: _TaskForward, ds: Any) -> dict[str, float | None]:
    """Mean AUROC (classification), Dice (segmentation) or mAP@0.5 (detection) per task of ``model`` on ``ds``."""
    with torch.no_grad():
        pred = predict(model, ds, batch_size=8)
    out: dict[str, float | None] = {}
    for t in model.tasks:
        res = pred.get(t.name)
        if res is None:
            out[t.name] = None
        elif t.kind == "detection":
            try:
                out[t.name] = detection_metrics(res["pred"], res["target"], t.classes)["map_50"]
            except XrayfmError:  # no scorable image
                out[t.name] = None
        elif t.kind in CLASSIFICATION_KINDS:
            try:
                out[t.name] = classification_metrics(res["probs"], res["labels"], t.classes, kind=t.kind)["mean"].get(
                    "auroc"
                )
            except XrayfmError:  # no scorable row
                out[t.name] = None
        else:
            masks = res["probs"].astype(np.float32) > 0.5
            out[t.name] = segmentation_metrics(masks, res["mask"], t.classes)["mean"]["dice"]
    return out


def compare_to_fp32(
    reference: Forward,
    reduced: Forward,
    tasks: Sequence[TaskSpec],
    ds: Any,
    *,
    precision: str,
    tolerance: float = DEFAULT_TOLERANCE,
    force: bool = False,
) -> dict[str, Any]:
    """Score fp32 and reduced-precision outputs on ``ds`` and refuse a change above ``tolerance``.

    Args:
        reference: fp32 forward (images -> logits per task).
        reduced: The reduced-precision forward.
        tasks: Tasks to score (classification, segmentation, detection; others are ignored).
        ds: Held-out dataset (:func:`held_out_images`).
        precision: Name of the reduced precision, for messages.
        tolerance: Largest accepted absolute change of a task's AUROC, Dice or mAP@0.5.
        force: Only warn when the change is too large.

    Returns:
        Per task ``metric`` (``auroc``, ``dice`` or ``map_50``), ``fp32``, the reduced value and ``change``;
        ``not_scored`` (tasks of a kind without a metric here), ``tolerance``, ``passed``, ``forced``.

    Raises:
        PrecisionError: A change above ``tolerance`` (unless ``force``), or no task could be scored.
    """
    unscored = [t.name for t in tasks if t.kind not in METRIC]
    tasks = [t for t in tasks if t.kind in METRIC]
    if not tasks:
        raise PrecisionError(
            f"only classification (AUROC), segmentation (Dice) and detection (mAP@0.5) tasks are scored at reduced "
            f"precision; {unscored} cannot be checked, so {precision} is refused"
        )
    ref, red = _scores(_TaskForward(reference, tasks), ds), _scores(_TaskForward(reduced, tasks), ds)
    result: dict[str, Any] = {}
    worst: list[str] = []
    for t in tasks:
        metric = METRIC[t.kind]
        a, b = ref[t.name], red[t.name]
        change = None if a is None or b is None else b - a
        result[t.name] = {"metric": metric, "fp32": a, precision: b, "change": change}
        if change is not None and abs(change) > tolerance:
            worst.append(f"{t.name} {metric} {a:.4f} -> {b:.4f} ({change:+.4f})")
    if all(r["change"] is None for r in result.values()):
        raise PrecisionError(
            f"none of {[t.name for t in tasks]} could be scored on the held-out images (no labels or masks, or "
            "one class only); give other images with --check-data ADAPTER:ROOT"
        )
    passed = not worst
    if not passed:
        message = f"{precision} changes accuracy beyond {tolerance:g}: {'; '.join(worst)}"
        if not force:
            raise PrecisionError(message + "; export refused (--force writes it anyway)")
        log.warning("%s; written anyway (--force)", message)
    return {"tasks": result, "not_scored": unscored, "tolerance": tolerance, "passed": passed,
            "forced": force and not passed}  # fmt: skip


def export_checked(
    model_path: str | Path,
    out_dir: str | Path | None = None,
    *,
    precision: str = "fp32",
    check_data: str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    force: bool = False,
    check_images: int = 200,
    **export_options: Any,
) -> dict[str, Any]:
    """Export to ONNX at ``precision`` and, below fp32, score it against fp32 before keeping it.

    Args:
        model_path: Finetune run folder or model folder.
        out_dir: Destination (default: the model folder).
        precision: ``fp32``, ``int8`` (``model.int8.onnx``) or ``bf16`` (PyTorch autocast).
        check_data: ``ADAPTER:ROOT`` of held-out images instead of the model's own test / val split.
        tolerance: Largest accepted change of a task's AUROC, Dice or mAP@0.5.
        force: Keep a result beyond ``tolerance`` (with a warning).
        check_images: Most held-out images scored.
        **export_options: Passed to :func:`~xrayfm.models.onnx_export.export_onnx` (opset, atol, ...).

    Returns:
        The written ``onnx.json``; ``precisions[precision]["check"]`` holds the held-out data and,
        per task, the fp32 and reduced values and their change.

    Raises:
        PrecisionError: bf16 without the instructions, no held-out images, or a change beyond
            ``tolerance`` (the export's files are then deleted).
        XrayfmError: As :func:`~xrayfm.models.onnx_export.export_onnx`.
    """
    from xrayfm.models.onnx_export import export_onnx

    if precision == "fp32":
        return export_onnx(model_path, out_dir, **export_options)
    check_precision(precision, PRECISION_BACKEND.get(precision, "onnx"))  # refused before any work
    src = find_task_model(model_path)
    model, meta = load_task_model(src)
    held_out, source = held_out_images(meta, resolve_preprocess(model), check_data, limit=check_images)
    sidecar = export_onnx(src, out_dir, precision=precision, **export_options)
    out = Path(out_dir) if out_dir is not None else src
    try:
        check = _compare(model, out, precision, held_out, tolerance, force)
    except XrayfmError:
        for name in (ONNX_FILE, ONNX_SIDECAR, INT8_FILE):
            (out / name).unlink(missing_ok=True)
        raise
    sidecar["precisions"][precision]["check"] = {"data": source, **check}
    atomic_write_json(out / ONNX_SIDECAR, sidecar)
    return sidecar


def _compare(
    model: XrayModel, out: Path, precision: str, held_out: Any, tolerance: float, force: bool
) -> dict[str, Any]:
    """AUROC / Dice / mAP@0.5 of the reduced-precision model in ``out`` against fp32 PyTorch on ``held_out``."""
    scored = [t.name for t in model.tasks]

    def reference(x: torch.Tensor) -> dict[str, Any]:
        with torch.no_grad():
            return model(x, tasks=scored)

    def bf16(x: torch.Tensor) -> dict[str, Any]:
        with no_grad_at("bf16"):
            return model(x, tasks=scored)

    int8 = OnnxModel(out, precision="int8") if precision == "int8" else None

    def onnx_int8(x: torch.Tensor) -> dict[str, Any]:  # as the server answers: boxes finished in PyTorch
        assert int8 is not None
        return onnx_task_outputs(int8, model, x, scored)

    reduced = onnx_int8 if int8 is not None else bf16
    return compare_to_fp32(reference, reduced, model.tasks, held_out, precision=precision, tolerance=tolerance,
                           force=force)  # fmt: skip
