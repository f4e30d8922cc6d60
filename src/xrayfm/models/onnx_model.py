"""Running an exported ``model.onnx`` with ONNX Runtime, as a drop-in for :class:`XrayModel`'s forward.

The ONNX file takes what :class:`~xrayfm.models.task_model.XrayModel` takes — grey [0, 1]
images (N, 1, S, S) — and returns one logits tensor per classification / segmentation task,
named after the task. ``onnx.json`` next to it records the outputs, the check against PyTorch,
and a digest of the weights it was exported from, so a stale export is refused rather than
served.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xrayfm.errors import XrayfmError
from xrayfm.models.export import read_json_sidecar

ONNX_FILE, ONNX_SIDECAR = "model.onnx", "onnx.json"
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


class OnnxModel:
    """An ONNX Runtime session over ``folder/model.onnx`` returning ``{task: logits}`` like XrayModel.

    Args:
        folder: Export folder (``model.onnx`` + ``onnx.json``).
        weights: When given, the ``model.safetensors`` the export must have been made from.
        threads: Intra-op threads (default: ONNX Runtime's choice, one per core).

    Raises:
        XrayfmError: Missing onnxruntime or files, a stale export, or a file ONNX Runtime cannot load.
    """

    def __init__(self, folder: str | Path, *, weights: str | Path | None = None, threads: int | None = None) -> None:
        ort = require_onnxruntime()
        self.folder = Path(folder)
        self.meta = read_onnx_sidecar(self.folder)
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
                os.fspath(self.folder / ONNX_FILE), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types for corrupt graphs
            raise XrayfmError(f"{self.folder / ONNX_FILE}: ONNX Runtime cannot load it ({str(exc)[:200]})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.size = int(self.meta["input_size"])

    def __call__(self, x: torch.Tensor | np.ndarray) -> dict[str, torch.Tensor]:
        """Logits per task for grey [0, 1] images.

        Args:
            x: Images (N, 1, S, S), a tensor or a numpy array (converted to float32).

        Returns:
            Task name to its logits.

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
        outs = self.session.run(self.output_names, {self.input_name: arr})
        return {name: torch.from_numpy(o) for name, o in zip(self.output_names, outs)}
