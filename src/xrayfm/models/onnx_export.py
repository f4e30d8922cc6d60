"""ONNX export of a fine-tuned model's classification and segmentation heads, checked with ONNX Runtime.

The graph is captured with ``torch.export`` (the dynamo ONNX exporter; the TorchScript one is
deprecated), with a dynamic batch dimension and the image size the model was trained at. It
includes the model's own preprocessing, so the ONNX model takes grey [0, 1] images exactly as
the PyTorch one does. Box detection heads are left out (their NMS and RoI pooling do not map
cleanly to ONNX). After export, ONNX Runtime runs seeded images at two batch sizes and every
output must match PyTorch within tolerance, or the export is deleted and an error raised.
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
from xrayfm.models.onnx_model import (
    ONNX_FILE,
    ONNX_FORMAT,
    ONNX_SIDECAR,
    OnnxModel,
    file_digest,
    require_onnxruntime,
)
from xrayfm.models.preprocess import resolve_preprocess
from xrayfm.models.task_checkpoint import SIDECAR, WEIGHTS, find_task_model, load_task_model
from xrayfm.models.task_model import XrayModel
from xrayfm.tasks import CLASSIFICATION_KINDS

log = logging.getLogger(__name__)
EXPORTABLE_KINDS = (*CLASSIFICATION_KINDS, "segmentation")


class _ExportView(nn.Module):
    """XrayModel's forward restricted to the exportable tasks, returning a tuple of logits."""

    def __init__(self, model: XrayModel, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(x, tasks=self.names)
        return tuple(out[n] for n in self.names)


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
) -> dict[str, Any]:
    """Export a fine-tuned model to ``model.onnx`` and check it against PyTorch with ONNX Runtime.

    Args:
        model_path: Finetune run folder or model folder.
        out_dir: Destination (default: the model folder itself). Another folder receives copies of
            ``model.safetensors`` and ``model.json`` too, so it can be served on its own.
        opset: ONNX opset (default: the exporter's).
        check_batch: Batch size of the second check run (the first uses 1), proving the dynamic batch.
        atol: Absolute tolerance of the ONNX-vs-PyTorch check.
        rtol: Relative tolerance of the check.

    Returns:
        The written ``onnx.json`` contents (outputs, opset, check results, weights digest).

    Raises:
        XrayfmError: No exportable head, onnx packages missing, export failure, or outputs that differ.
    """
    require_onnxruntime()
    src = find_task_model(model_path)
    model, meta = load_task_model(src)
    tasks = [t for t in model.tasks if t.kind in EXPORTABLE_KINDS]
    skipped = [t.name for t in model.tasks if t.kind not in EXPORTABLE_KINDS]
    if not tasks:
        raise XrayfmError(f"{src}: no classification or segmentation head to export (box detection is not exported)")
    if skipped:
        log.warning("not exported to ONNX (detection heads): %s", ", ".join(skipped))
    preprocess = resolve_preprocess(model)
    size = preprocess.input_size
    out = Path(out_dir) if out_dir is not None else src
    out.mkdir(parents=True, exist_ok=True)
    if out.resolve() != src.resolve():
        for name in (WEIGHTS, SIDECAR):
            with atomic_path(out / name) as tmp:
                shutil.copy2(src / name, tmp)

    view = _ExportView(model, [t.name for t in tasks]).eval()
    example = torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(0))
    try:
        with _quiet_exporter(), torch.no_grad(), atomic_path(out / ONNX_FILE) as tmp:
            program = torch.onnx.export(
                view, (example,), input_names=["image"], output_names=view.names, opset_version=opset,
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
                    for t in tasks],
        "not_exported": skipped, "opset": opset or program.model.opset_imports.get("", None),
        "torch": torch.__version__, "weights_sha256": file_digest(out / WEIGHTS),
    }  # fmt: skip
    atomic_write_json(out / ONNX_SIDECAR, sidecar)  # OnnxModel reads it; rewritten with the check below
    try:
        sidecar["check"] = _check(model, view.names, OnnxModel(out), size, check_batch, atol, rtol)
    except XrayfmError:
        for name in (ONNX_FILE, ONNX_SIDECAR):
            (out / name).unlink(missing_ok=True)
        raise
    atomic_write_json(out / ONNX_SIDECAR, sidecar)
    return sidecar


def _check(
    model: XrayModel, names: list[str], onnx_model: OnnxModel, size: int, batch: int, atol: float, rtol: float
) -> dict[str, Any]:
    """Largest ONNX-vs-PyTorch differences on seeded images at batch sizes 1 and ``batch``."""
    gen = torch.Generator().manual_seed(1)
    worst = dict.fromkeys(names, 0.0)
    for n in (1, batch):
        x = torch.rand(n, 1, size, size, generator=gen)
        with torch.no_grad():
            ref = model(x, tasks=names)
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
