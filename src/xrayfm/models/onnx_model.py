"""Running an exported ``model.onnx`` with ONNX Runtime, as a drop-in for :class:`XrayModel`'s forward.

The ONNX file takes what :class:`~xrayfm.models.task_model.XrayModel` takes — grey [0, 1]
images (N, 1, S, S) — and returns one logits tensor per classification / segmentation task,
named after the task (a detection task's dense parts are finished in PyTorch by
:mod:`xrayfm.models.onnx_detection`); an int8 variant, when exported, sits next to it.
``onnx.json`` next to it records the outputs, the check against PyTorch,
and a digest of the weights it was exported from, so a stale export is refused rather than
served.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xrayfm.errors import XrayfmError
from xrayfm.models.export import read_json_sidecar

ONNX_FILE, ONNX_SIDECAR = "model.onnx", "onnx.json"
#: The int8 model ``xrayfm export onnx --precision int8`` writes next to the fp32 one.
INT8_FILE = "model.int8.onnx"
ONNX_FORMAT = "xrayfm-onnx-1"


def require_onnxruntime() -> Any:
    """The ``onnxruntime`` module, or a clear error naming the extra that installs it."""
    try:
        import onnxruntime
    except ModuleNotFoundError:
        raise XrayfmError("ONNX support needs onnxruntime: pip install 'xrayfm[onnx]'") from None
    return onnxruntime


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file (hex), read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def read_onnx_sidecar(folder: str | Path) -> dict[str, Any]:
    """``onnx.json`` of an export folder.

    Raises:
        XrayfmError: No export there, or a sidecar that is not xrayfm's.
    """
    folder = Path(folder)
    if not (folder / ONNX_FILE).is_file() or not (folder / ONNX_SIDECAR).is_file():
        raise XrayfmError(f"{folder}: no ONNX export ({ONNX_FILE} + {ONNX_SIDECAR}); run: xrayfm export onnx {folder}")
    return read_json_sidecar(folder / ONNX_SIDECAR, ONNX_FORMAT, "an xrayfm ONNX export")


def precision_record(folder: str | Path, precision: str) -> dict[str, Any] | None:
    """The ``precisions[precision]`` record (how it was made, its accuracy check) of the export in
    ``folder``, or None where there is no export or it was not made at that precision."""
    try:
        meta = read_onnx_sidecar(folder)
    except XrayfmError:
        return None
    return (meta.get("precisions") or {}).get(precision)


class OnnxModel:
    """An ONNX Runtime session over ``folder/model.onnx`` returning ``{task: logits}`` like XrayModel.

    Args:
        folder: Export folder (``model.onnx`` + ``onnx.json``).
        weights: When given, the ``model.safetensors`` the export must have been made from.
        threads: Intra-op threads (default: ONNX Runtime's choice, one per core).
        precision: ``fp32`` (``model.onnx``) or ``int8`` (``model.int8.onnx`` of ``--precision int8``).

    Raises:
        XrayfmError: Missing onnxruntime or files, a stale export, or a file ONNX Runtime cannot load.
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        weights: str | Path | None = None,
        threads: int | None = None,
        precision: str = "fp32",
    ) -> None:
        ort = require_onnxruntime()
        self.folder = Path(folder)
        self.meta = read_onnx_sidecar(self.folder)
        self.precision = precision
        path = self.folder / ONNX_FILE
        if precision != "fp32":
            record = (self.meta.get("precisions") or {}).get(precision) or {}
            if not record.get("file") or not (self.folder / record["file"]).is_file():
                raise XrayfmError(
                    f"{self.folder}: no {precision} ONNX model; run: xrayfm export onnx {self.folder} "
                    f"--precision {precision}"
                )
            path = self.folder / record["file"]
            if record.get("sha256") and file_digest(path) != record["sha256"]:
                raise XrayfmError(f"{path} is not the file {ONNX_SIDECAR} describes; export again: "
                                  f"xrayfm export onnx {self.folder} --precision {precision}")  # fmt: skip
        if weights is not None and file_digest(weights) != self.meta.get("weights_sha256"):
            raise XrayfmError(
                f"{self.folder / ONNX_FILE} was exported from other weights than {weights}; "
                f"export again: xrayfm export onnx {self.folder}"
            )
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(
                os.fspath(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types for corrupt graphs
            raise XrayfmError(f"{path}: ONNX Runtime cannot load it ({str(exc)[:200]})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.size = int(self.meta["input_size"])
        self.tasks = [o["name"] for o in self.meta["outputs"]]

    def __call__(self, x: torch.Tensor | np.ndarray, outputs: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Every graph output for grey [0, 1] images: logits per classification / segmentation task
        (a detection task's dense parts: :func:`~xrayfm.models.onnx_detection.onnx_task_outputs`).

        Args:
            x: Images (N, 1, S, S), a tensor or a numpy array (converted to float32).
            outputs: The graph outputs wanted (default: all).

        Returns:
            Output name to its tensor.

        Raises:
            XrayfmError: ``x`` is neither a tensor nor an array, or not of shape (N, 1, S, S).
        """
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        elif not isinstance(x, np.ndarray):
            raise XrayfmError(f"the ONNX model takes a tensor or numpy array of images, got {type(x).__name__}")
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, self.size, self.size):
            raise XrayfmError(f"the ONNX model takes images (N, 1, {self.size}, {self.size}), got {tuple(x.shape)}")
        arr = np.ascontiguousarray(x, dtype=np.float32)
        names = list(self.output_names if outputs is None else outputs)
        outs = self.session.run(names, {self.input_name: arr})
        return {name: torch.from_numpy(o) for name, o in zip(names, outs)}
