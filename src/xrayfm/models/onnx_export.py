"""ONNX export of a fine-tuned model's classification and segmentation heads, checked with ONNX Runtime.

The graph is captured with ``torch.export`` (the dynamo ONNX exporter; the TorchScript one is
deprecated), with a dynamic batch dimension and the image size the model was trained at. It
includes the model's own preprocessing, so the ONNX model takes grey [0, 1] images exactly as
the PyTorch one does. A box detection head exports its dense part (FPN and RPN convolutions);
its proposal decoding, RoI heads and NMS stay in PyTorch (:mod:`xrayfm.models.onnx_detection`).
After export, ONNX Runtime runs seeded images at two batch sizes and every output must match
PyTorch within tolerance, or the export is deleted and an error raised.

``precision="int8"`` adds ``model.int8.onnx`` (:mod:`xrayfm.models.onnx_quantize`); ``bf16``
records the PyTorch backend's bf16 autocast path (refused where the CPU lacks it). Scoring either
against fp32 on held-out images is :func:`xrayfm.evaluate.precision_check.export_checked`'s job
(what ``xrayfm export onnx --precision`` runs), which adds the numbers to ``onnx.json``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xrayfm.errors import XrayfmError
from xrayfm.io.atomic import atomic_path, atomic_write_json
from xrayfm.models.onnx_detection import dense_parts, part_names
from xrayfm.models.onnx_model import (
    INT8_FILE,
    ONNX_FILE,
    ONNX_FORMAT,
    ONNX_SIDECAR,
    OnnxModel,
    file_digest,
    require_onnxruntime,
)
from xrayfm.models.precision import PRECISION_BACKEND, check_precision
from xrayfm.models.preprocess import Preprocess, resolve_preprocess
from xrayfm.models.recorded_images import training_images
from xrayfm.models.task_checkpoint import SIDECAR, WEIGHTS, find_task_model, load_task_model
from xrayfm.models.task_model import XrayModel
from xrayfm.tasks import CLASSIFICATION_KINDS, DENSE_KINDS

log = logging.getLogger(__name__)


class _ExportView(nn.Module):
    """XrayModel's forward as a flat tuple: logits per classification / segmentation task, the
    dense parts (:func:`~xrayfm.models.onnx_detection.part_names`) per detection task."""

    def __init__(self, model: XrayModel) -> None:
        super().__init__()
        self.model = model
        self.output_names = [
            n for t in model.tasks for n in (part_names(t.name) if t.kind == "detection" else [t.name])
        ]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m = self.model
        x = m.normalize(x)
        if any(t.kind in DENSE_KINDS for t in m.tasks):
            final, maps = m.pyramid(m.backbone, x)
        else:
            final, maps = m.backbone.forward_features(x), []
        outs: list[torch.Tensor] = []
        for t in m.tasks:
            if t.kind in CLASSIFICATION_KINDS:
                outs.append(m.heads[t.name](m.backbone.forward_head(final, pre_logits=True)))
            elif t.kind == "detection":
                outs.extend(dense_parts(m.heads[t.name], maps))
            else:
                outs.append(m.heads[t.name](x, maps))
        return tuple(outs)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's progress lines and optimiser chatter (our CLI reports the result)."""
    loggers = [logging.getLogger(n) for n in ("onnxscript", "onnx_ir", "torch.onnx", "torch.export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_onnx(
    model_path: str | Path,
    out_dir: str | Path | None = None,
    *,
    opset: int | None = None,
    check_batch: int = 3,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    precision: str = "fp32",
    calibration_images: int = 64,
) -> dict[str, Any]:
    """Export a fine-tuned model to ``model.onnx`` and check it against PyTorch with ONNX Runtime.

    With ``precision`` ``int8`` also write ``model.int8.onnx``; with ``bf16`` record the autocast
    path; ``onnx.json`` describes either under ``precisions`` (its accuracy check is added by
    :func:`xrayfm.evaluate.precision_check.export_checked`).

    Args:
        model_path: Finetune run folder or model folder.
        out_dir: Destination (default: the model folder itself). Another folder receives copies of
            ``model.safetensors`` and ``model.json`` too, so it can be served on its own.
        opset: ONNX opset (default: the exporter's).
        check_batch: Batch size of the second check run (the first uses 1), proving the dynamic batch.
        atol: Absolute tolerance of the ONNX-vs-PyTorch check.
        rtol: Relative tolerance of the check.
        precision: ``fp32``, ``int8`` or ``bf16``.
        calibration_images: Training images calibrating int8 activation ranges.

    Returns:
        The written ``onnx.json`` contents (outputs, opset, check results, weights digest, precisions).

    Raises:
        XrayfmError: onnx packages missing, export failure, or outputs that differ.
        PrecisionError: bf16 on a CPU without it.
    """
    require_onnxruntime()
    check_precision(precision, PRECISION_BACKEND.get(precision, "onnx"))  # bf16 refused before any work
    src = find_task_model(model_path)
    model, meta = load_task_model(src)
    preprocess = resolve_preprocess(model)
    size = preprocess.input_size
    out = Path(out_dir) if out_dir is not None else src
    out.mkdir(parents=True, exist_ok=True)
    if out.resolve() != src.resolve():
        for name in (WEIGHTS, SIDECAR):
            with atomic_path(out / name) as tmp:
                shutil.copy2(src / name, tmp)

    view = _ExportView(model).eval()
    example = torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(0))
    try:
        with _quiet_exporter(), torch.no_grad(), atomic_path(out / ONNX_FILE) as tmp:
            program = torch.onnx.export(
                view, (example,), input_names=["image"], output_names=view.output_names, opset_version=opset,
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},), dynamo=True, verbose=False,
            )  # fmt: skip
            program.save(os.fspath(tmp), external_data=False)
    except Exception as exc:  # the exporter raises many internal types; name the model and the cause
        raise XrayfmError(
            f"{src}: ONNX export of {meta['arch']} failed: {type(exc).__name__}: {str(exc)[:300]}"
        ) from None

    sidecar: dict[str, Any] = {
        "format": ONNX_FORMAT, "arch": meta["arch"], "input": "image", "input_size": size,
        "preprocess": preprocess.to_dict(),
        "input_layout": "(N, 1, S, S) float32 grey [0, 1]; normalisation is inside the graph",
        "outputs": [{"name": t.name, "kind": t.kind, "classes": list(t.classes),
                     "activation": "softmax" if t.kind == "multiclass" else "sigmoid",
                     "shape": ["N", len(t.classes)] + (["S", "S"] if t.kind == "segmentation" else [])}
                    if t.kind != "detection" else
                    {"name": t.name, "kind": t.kind, "classes": list(t.classes), "parts": part_names(t.name),
                     "post_processing": "torchvision RPN proposals, RoI heads and NMS in PyTorch"}
                    for t in model.tasks],
        "not_exported": [], "opset": opset or program.model.opset_imports.get("", None),
        "torch": torch.__version__, "weights_sha256": file_digest(out / WEIGHTS),
    }  # fmt: skip
    atomic_write_json(out / ONNX_SIDECAR, sidecar)  # OnnxModel reads it; rewritten with the check below
    try:
        sidecar["check"] = _check(view, OnnxModel(out), size, check_batch, atol, rtol)
        if precision != "fp32":
            sidecar["precisions"] = {precision: _make_reduced(meta, out, precision, preprocess, calibration_images)}
    except XrayfmError:
        for name in (ONNX_FILE, ONNX_SIDECAR, INT8_FILE):
            (out / name).unlink(missing_ok=True)
        raise
    if precision != "int8":  # an int8 file of other weights would be listed nowhere
        (out / INT8_FILE).unlink(missing_ok=True)
    atomic_write_json(out / ONNX_SIDECAR, sidecar)
    return sidecar


def _check(view: _ExportView, onnx_model: OnnxModel, size: int, batch: int, atol: float, rtol: float) -> dict[str, Any]:
    """Largest ONNX-vs-PyTorch differences of every graph output on seeded images at batch sizes 1 and ``batch``."""
    gen = torch.Generator().manual_seed(1)
    names = view.output_names
    worst = dict.fromkeys(names, 0.0)
    for n in (1, batch):
        x = torch.rand(n, 1, size, size, generator=gen)
        with torch.no_grad():
            ref = dict(zip(names, view(x)))
        got = onnx_model(x)
        for name in names:
            r, g = ref[name].float(), got[name]
            if g.shape != r.shape:
                raise XrayfmError(f"ONNX output {name!r} has shape {tuple(g.shape)}, PyTorch {tuple(r.shape)}")
            worst[name] = max(worst[name], float((g - r).abs().max()))
            if not torch.allclose(g, r, atol=atol, rtol=rtol):
                raise XrayfmError(
                    f"ONNX output {name!r} differs from PyTorch by up to {float((g - r).abs().max()):.3g} "
                    f"(atol {atol:g}, rtol {rtol:g}) at batch {n}; export deleted"
                )
    return {"batches": [1, batch], "max_abs_diff": worst, "atol": atol, "rtol": rtol, "runtime": "onnxruntime"}


def _make_reduced(
    meta: dict[str, Any], out: Path, precision: str, preprocess: Preprocess, calibration_images: int
) -> dict[str, Any]:
    """Write ``model.int8.onnx`` (static when the training images can be read, else dynamic), or
    describe the bf16 autocast path; the ``precisions[precision]`` record of ``onnx.json``."""
    if precision == "bf16":
        return {"file": None, "runtime": "torch autocast (bfloat16)", "backend": "torch"}
    from xrayfm.models.onnx_quantize import quantize_int8

    calibration, why = training_images(meta, preprocess, limit=calibration_images)
    return quantize_int8(out / ONNX_FILE, out, calibration, why_not_static=why)
